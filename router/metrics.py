"""Prometheus metrics of the router and the routing core (DESIGN section 9)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 8192)

requests_total = Counter("yunkai_router_requests_total", "Ledger RPCs answered", ["method", "status"])
request_latency_s = Histogram(
    "yunkai_router_request_latency_seconds", "Ledger RPC latency at the router", ["method"], buckets=_LATENCY_BUCKETS_S
)
node_batch_events = Histogram(
    "yunkai_routing_node_batch_events", "Events per coalesced request to a node", ["method"], buckets=_SIZE_BUCKETS
)
retries_total = Counter("yunkai_routing_retries_total", "Events routed again", ["reason"])
map_version = Gauge("yunkai_router_map_version", "The shard map version this process routes with")
slots_moved_total = Counter("yunkai_router_slots_moved_total", "Slot moves committed by operator jobs")
moves_aborted_total = Counter("yunkai_router_moves_aborted_total", "Slot moves aborted (and retried)")
moves_in_flight = Gauge("yunkai_router_moves_in_flight", "Slot moves recorded in the shard map, not yet committed")
freeze_pause_s = Histogram(
    "yunkai_router_freeze_pause_seconds",
    "Per slot moved: from freezing its writes on the source to the commit reaching the nodes",
    buckets=_LATENCY_BUCKETS_S,
)
map_swap_s = Histogram(
    "yunkai_router_map_swap_seconds",
    "A shard map compare-and-swap on the metastore (durable)",
    buckets=_LATENCY_BUCKETS_S,
)
controller_term = Gauge("yunkai_router_controller_term", "The controller term while this router leads (0: following)")
leading = Gauge("yunkai_router_leading", "1 while this router process is the cluster's controller")
# From the shard map this router routes with (every router exports them: alert on max()).
nodes = Gauge("yunkai_router_nodes", "Nodes in the shard map, by state (ACTIVE, DOWN, LOST, ...)", ["state"])
slots_set_aside = Gauge(
    "yunkai_router_slots_set_aside",
    "Slots a job gave up copying after repeated failures (its error names them); repair waits before trying again",
)
slots_under_replicated = Gauge(
    "yunkai_router_slots_under_replicated", "Slots with fewer than R live copies (repair restores them)"
)
slots_without_copy = Gauge(
    "yunkai_router_slots_without_copy", "Slots with no live copy: their members are all down or lost (unserved)"
)
