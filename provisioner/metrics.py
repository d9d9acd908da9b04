"""Prometheus metrics of this process, served at GET /metrics."""

from __future__ import annotations

from prometheus_client import Counter

MAILS = Counter("provisioner_mails_total", "Mail delivery attempts by result", ["result"])
