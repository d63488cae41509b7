"""Prometheus metrics of a ledger node (DESIGN section 9), served on --metrics-port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
_SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 8192, 16384)

requests_total = Counter("yunkai_node_requests_total", "RPCs handled", ["method", "status"])
events_total = Counter("yunkai_node_events_total", "Events answered, by result code", ["method", "code"])
request_latency_s = Histogram(
    "yunkai_node_request_latency_seconds", "RPC latency", ["method"], buckets=_LATENCY_BUCKETS_S
)
request_events = Histogram("yunkai_node_request_events", "Events per request", ["method"], buckets=_SIZE_BUCKETS)
commit_events = Histogram("yunkai_node_commit_events", "Events per group commit", buckets=_SIZE_BUCKETS)
fsync_latency_s = Histogram(
    "yunkai_node_fsync_latency_seconds", "Duration of a synced WriteBatch write", buckets=_LATENCY_BUCKETS_S
)
queue_events = Gauge("yunkai_node_queue_events", "Events waiting for the next group commit")
slots_owned = Gauge("yunkai_node_slots_owned", "Slots this node owns")
pending_expiries = Gauge("yunkai_node_pending_expiries", "Pending transfers with a timeout, not yet resolved")
outbox_entries = Gauge("yunkai_node_outbox_entries", "Credit legs in this node's outbox, not yet answered")
# Data a move, a restore or a disk brought that cannot be settled as it stands: left alone (its
# transfer stays in flight, its pending unexpired) for an operator (docs/operations.md).
outbox_entries_not_loaded = Counter(
    "yunkai_node_outbox_entries_not_loaded_total",
    "Outbox entries left alone: they do not pair with their transfers (at load), or their result could not settle",
)
events_on_inconsistent_data = Counter(
    "yunkai_node_events_on_inconsistent_data_total",
    "Transfers refused STORED_DATA_INCONSISTENT: the stored data they need does not add up",
)
pendings_not_expired = Counter(
    "yunkai_node_pendings_not_expired_total",
    "Pending transfers due to expire whose stored data does not add up (their accounts do not hold them, or a release"
    " of them is in the outbox already)",
)
books_fen = Gauge(
    "yunkai_node_books_fen",
    "This node's trial balance over the slots it leads, pending included (node/books.py): debits, credits,"
    " position against the other nodes, and imbalance (debits - credits - position; 0 unless a commit moved"
    " money no event accounts for)",
    ["part"],
)
legs_sent = Counter("yunkai_node_legs_sent_total", "Credit legs delivered to another node (answered)")
legs_failed = Counter(
    "yunkai_node_legs_failed_total", "Credit leg deliveries without a final result, to be retried", ["reason"]
)
leg_round_trip_s = Histogram(
    "yunkai_node_leg_round_trip_seconds", "ApplyCreditLegs round trip, per call", buckets=_LATENCY_BUCKETS_S
)
slots_frozen = Gauge("yunkai_node_slots_frozen", "Slots whose writes are held for a move")
move_snapshot_s = Histogram(
    "yunkai_node_move_snapshot_seconds", "A move's snapshot and catch-up, per slot (source)", buckets=_LATENCY_BUCKETS_S
)
move_tail_s = Histogram(
    "yunkai_node_move_tail_seconds", "From freezing a slot to the target's check, per slot", buckets=_LATENCY_BUCKETS_S
)
held_writes_s = Histogram(
    "yunkai_node_held_writes_seconds", "How long writes to a frozen slot waited", buckets=_LATENCY_BUCKETS_S
)
replication_wait_s = Histogram(
    "yunkai_node_replication_wait_seconds",
    "From a cycle's local write until every follower has it (primary)",
    buckets=_LATENCY_BUCKETS_S,
)
replication_round_trip_s = Histogram(
    "yunkai_node_replication_round_trip_seconds", "One Replicate call, per follower node", buckets=_LATENCY_BUCKETS_S
)
replication_retries = Counter("yunkai_node_replication_retries_total", "Replication rounds retried (primary)")
replication_refused = Counter("yunkai_node_replication_refused_total", "Replication calls refused (follower)")
