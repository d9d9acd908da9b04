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
OPERATIONS = Counter(
    "provisioner_dialplan_operations_total",
    "Incremental dialplan changes sent to Asterisk over AMI, by kind",
    ["kind"],
)
ROUNDS = Counter(
    "provisioner_apply_rounds_total",
    "Apply rounds by how they went live: incremental, full (asked for or a retry after a"
    " failure at Asterisk), or fallback (an incremental round that had to reload fully)",
    ["mode"],
)
PJSIP_WAIT = Histogram(
    "provisioner_pjsip_pending_seconds",
    "From a revision's dialplan going live to its PJSIP objects going live (coalesced reload)",
    buckets=(0.5, 1, 2, 3, 4, 5, 7.5, 10, 20, 60),
)
ROUTER_SWITCHES = Counter(
    "provisioner_router_switches_total",
    "Blocks switched on the SIP router (set, deleted and read back)",
)
ROUTER_SECONDS = Histogram(
    "provisioner_router_switch_seconds",
    "Time to switch one block on the SIP router (its numbers set and read back)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
ROUTER_BEHIND = Gauge(
    "provisioner_router_behind",
    "1 while a SIP router (of several) missed a change it could not be reached for; 0 "
    "once it reloaded its table",
    ["router"],
)
NODE_UP = Gauge(
    "provisioner_node_up",
    "1 while the SIP router's OPTIONS probes reach the node, 0 while it marks it down",
    ["node"],
)
