"""Who this node is: its id, the cluster it joined, and the newest controller term it has seen.

  node id     Made (random, 16 hex digits) and written durably the first time a data
              directory is opened. A process with an empty or replaced directory is a new
              node whatever its address: the controller sees another id and gives it nothing
              that the old node held (router/controller.py marks the old one lost).
  cluster id  Written with the first slot table accepted that names one. A table of
              another cluster is refused.
  term        The newest controller term seen (DESIGN section 6a's fencing token), written
              durably before anything it allows is acted on. A slot table or a move step
              from an older term comes from a deposed controller and is refused; from the
              same or a newer term it is taken (a newer one is recorded first).

A request names the node it is meant for (AssignSlotsRequest.node_id): one meant for
another id is refused, so a table can never be applied to the wrong data directory. An
empty id or cluster id in a request is not checked (an operator's tool, a test); the
controller always sends both.
"""

from __future__ import annotations

import secrets

from node import keys
from node.storage import Storage


class Identity:
    """The node's id, cluster id and newest term, as durably recorded."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        node_id = storage.get(keys.NODE_ID)
        if node_id is None:
            node_id = secrets.token_hex(8).encode()
            storage.put_now(keys.NODE_ID, node_id)
        self.node_id = node_id.decode()
        cluster_id = storage.get(keys.CLUSTER_ID)
        self.cluster_id = "" if cluster_id is None else cluster_id.decode()
        term = storage.get(keys.TERM)
        self.term = 0 if term is None else int.from_bytes(term, "big")

    def refusal(self, term: int, cluster_id: str = "", node_id: str = "") -> str | None:
        """Why a controller's request must be refused (a message naming what differs), or None."""
        if node_id and node_id != self.node_id:
            return (
                f"this is node {self.node_id}, not {node_id}: its data directory is not that node's (an empty or"
                " replaced directory makes a new node; the controller must treat it as one)"
            )
        if cluster_id and self.cluster_id and cluster_id != self.cluster_id:
            return f"this node belongs to cluster {self.cluster_id}, not {cluster_id}"
        if term < self.term:
            return f"controller term {term} is older than term {self.term} this node has seen: a deposed controller"
        return None

    def accept(self, term: int, cluster_id: str = "") -> None:
        """Record a newer term, and the cluster id if this node has none yet, durably, before
        the request they came with is acted on. The caller checked `refusal` first."""
        assert self.refusal(term, cluster_id) is None, (term, cluster_id)
        if cluster_id and not self.cluster_id:
            self._storage.put_now(keys.CLUSTER_ID, cluster_id.encode())
            self.cluster_id = cluster_id
        if term > self.term:
            self._storage.put_now(keys.TERM, term.to_bytes(8, "big"))
            self.term = term
