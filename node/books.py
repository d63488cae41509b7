"""A node's trial balance: what must balance on one node, checked at every group commit.

A node holds the accounts of the slots it leads (SERVING, FROZEN, SEALED: node/slots.py). An
event between two of them moves its debit and its credit side in one batch; a cross-node
transfer (node/outbox.py) moves one side here and the other on another node, at another
time. So one node's debits and credits differ by exactly what its cross-node legs moved, and
that is its equation.

Terms (sums over the accounts of the slots this node leads, in fen; a copy it follows or
stages is its primary's to count)
  debits     sum of debits_posted + debits_pending
  credits    sum of credits_posted + credits_pending
  position   this node's net position against the other nodes: the sum of what the
             cross-node transitions of node/outbox.py moved on this node, each reported by
             the transition itself (`OutboxStore.moved_across`):
               A1  accept T or P (debit node)        + amount      (debits_pending)
               A2  accept a post R of P              0             (nothing moves until its leg is answered)
               A3  void V of P                       - P.amount
               A4  expiry of P                       - P.amount
               R   CREDIT or RESERVE refused         - amount      (released)
                   POST OK                           + amount - P.amount
                   any other result                  0             (CREDIT OK: pending to posted)
               C   (credit node) CREDIT, RESERVE OK  - amount
                   POST OK                           - (amount - reserved)
                   RELEASE OK                        + reserved
                   a refusal, journaled or not       0
  imbalance  debits - credits - position

The node's equation
      debits - credits = position        (imbalance = 0 after every commit)
  Every event of node/state_machine.py moves its debit and credit side by the same amount,
  and every cross-node transition moves one side by exactly what it reports. A commit that
  changes debits - credits by anything else moved money no event accounts for: the node logs
  it as an error, and the imbalance shows in the gauge yunkai_node_books_fen{part="imbalance"}
  and in GetSlots (`books`) until the next recount. It is our bug, never a peer's: what a
  peer sends is checked and refused before it moves anything (node/outbox.py, C).

The cluster's equation
  A leg is one amount moved twice: the debit node's transitions and the credit node's C move
  the two nodes' positions by opposite amounts, and the debit node's outbox entry exists
  from its half until the answer to the credit node's half is applied (node/outbox.py). Summed
  over the nodes, sum of positions = sum of debits - sum of credits is therefore what the
  legs still in flight have moved on one side and not yet on the other, and once no node's
  outbox holds an entry
      sum of debits = sum of credits      (pending included)
  The router's `cluster status` adds up the nodes' books (router/control.py) and says whether
  they balance. A credit this node cannot check against its debit node (a forged leg naming a
  debit slot another node leads: node/outbox.py says what is checked) keeps this node's
  equation and breaks the cluster's, where status shows it.

Counting
  The sums are kept per slot, in memory, and each commit moves them by its account changes
  (each account as the batch writes it minus as it was committed): no scan. A slot is counted
  in full, reading its accounts once, at startup (every slot led) and when it is gained (a
  move committed here, a promotion, an assignment); a slot lost takes its sums away. A node
  keeps no history of its legs on disk, so counting a slot also moves the position by that
  slot's debits - credits (and losing one, back): the equation holds from then on, each
  commit after it is checked against its events, and the positions are checked against each
  other by the cluster's sums.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from node import metrics
from node.storage import Storage
from proto import node_pb2

log = logging.getLogger("yunkai.node.books")


class Books:
    """The trial balance of the slots this node leads: the committer's to move, GetSlots' to read."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._debits = [0] * storage.slots_total  # per slot led; 0 for the others
        self._credits = [0] * storage.slots_total
        self.debits = 0
        self.credits = 0
        self.position = 0
        self._gauges = [metrics.books_fen.labels(part) for part in ("debits", "credits", "position", "imbalance")]

    @property
    def imbalance(self) -> int:
        return self.debits - self.credits - self.position

    def count(self, slots: Iterable[int]) -> None:
        """Count slots now led (startup, gained) from their committed accounts."""
        for slot in slots:
            self._forget(slot)
            debits = credits = 0
            for account in self._storage.slot_accounts(slot):
                debits += account.debits_posted + account.debits_pending
                credits += account.credits_posted + account.credits_pending
            self._debits[slot], self._credits[slot] = debits, credits
            self.debits += debits
            self.credits += credits
            self.position += debits - credits
        self._publish()

    def drop(self, slots: Iterable[int]) -> None:
        """Slots no longer led: their sums leave the books."""
        for slot in slots:
            self._forget(slot)
        self._publish()

    def _forget(self, slot: int) -> None:
        debits, credits = self._debits[slot], self._credits[slot]
        self._debits[slot] = self._credits[slot] = 0
        self.debits -= debits
        self.credits -= credits
        self.position -= debits - credits

    def committed(self, moved: Iterable[tuple[int, int, int]], across: int) -> int:
        """A batch is durable: move the sums by how it moved each account ((slot, debits,
        credits): node/overlay.py) and the position by what its cross-node transitions reported.
        Returns what no event accounts for (0)."""
        sums_debits, sums_credits = self._debits, self._credits
        debits_total = credits_total = 0
        for slot, debits, credits in moved:
            sums_debits[slot] += debits
            sums_credits[slot] += credits
            debits_total += debits
            credits_total += credits
        self.debits += debits_total
        self.credits += credits_total
        self.position += across
        unexplained = debits_total - credits_total - across
        if unexplained:
            log.error(
                "a commit moved money no event accounts for",
                extra={"fen": unexplained, "cross_node_fen": across, "imbalance": self.imbalance},
            )
        self._publish()
        return unexplained

    def _publish(self) -> None:
        debits, credits, position, imbalance = self._gauges
        debits.set(self.debits)
        credits.set(self.credits)
        position.set(self.position)
        imbalance.set(self.imbalance)

    def to_proto(self, legs_in_flight: int) -> node_pb2.Books:
        return node_pb2.Books(
            debits=str(self.debits),
            credits=str(self.credits),
            position=str(self.position),
            imbalance=str(self.imbalance),
            legs_in_flight=legs_in_flight,
        )
