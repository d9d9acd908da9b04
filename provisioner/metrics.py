"""Prometheus metrics of this process, served at GET /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MAILS = Counter("provisioner_mails_total", "Mail delivery attempts by result", ["result"])
APPLY_SECONDS = Histogram(
    "provisioner_apply_seconds",
    "Duration of one apply round on a node (render, write, reload, verify)",
    ["result"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RELOADS = Counter(
    "provisioner_reloads_total",
    "Asterisk module reloads by module and result",
    ["module", "result"],
)
QUEUE_DEPTH = Gauge("provisioner_apply_queue_depth", "PBXs waiting for an apply")
BROKEN = Counter(
    "provisioner_apply_pbx_failures_total",
    "PBXs whose config could not be rendered or written in an apply round",
)
