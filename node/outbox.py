"""Transfers whose two accounts live on different nodes: the durable outbox (DESIGN section 5).

This module is the protocol and its decisions, as pure functions over the committer's
overlay: every transition below is one event applied by node/engine.py's committer, so
each is part of one durable group-commit batch. node/relay.py carries the legs between
nodes; node/service.py answers callers.

Terms
  cross-node   An event is cross-node when its debit slot and the slot of its credit
               account (for a post or void: the pending transfer's) may not be written in
               one batch when the committer applies it (node/slots.py `same_batch`): the
               credit slot is not written here now, or the two slots differ and either has
               followers (then this node may be its own credit node: node/relay.py hands
               such a leg to its own ApplyCreditLegs in-process). Everything else is
               applied in one batch by node/state_machine.py.
  debit node   Owns the debit account's slot: it takes the transfer, keeps its record and
               owns the outbox entry. It alone decides the transfer's state.
  credit node  Owns the credit account's slot, by the debit node's slot table.
  leg          The credit half of an event, a node.v1.CreditLeg of one kind:
                 CREDIT   a plain transfer T      credits_posted += amount
                 RESERVE  a pending transfer P    credits_pending += amount
                 POST     a post R of P           credits_pending -= reserved,
                                                  credits_posted += amount (<= reserved)
                 RELEASE  a void V of P, or       credits_pending -= reserved
                          P's expiry
               Its idempotency key is (debit_account_id, transfer_id, kind); transfer_id
               is T, P, R, V, or P again for an expiry.
  outbox entry `<debit slot> B <debit> 00 <subject> 00 <kind>` holding a leg not yet
               answered; the subject is T for CREDIT and P for the others. A key holds at
               most one entry at a time (P has one RESERVE, then at most one POST at a
               time, and one RELEASE).
  applied leg  `<credit slot> L <debit> 00 <transfer_id> 00 <kind>`: the credit node's
               journal of a leg's result (node.v1.AppliedLeg).
  claim        P's POST entry, while it exists: a post of P is in flight.

States of a cross-node transfer on the debit node, and what moves them
  T  IN_FLIGHT --CREDIT OK--> POSTED
               --CREDIT refused(code)--> REJECTED(code)
  P  IN_FLIGHT --RESERVE OK--> PENDING --R accepted--> PENDING, claimed --POST OK--> POSTED
                                                                       --POST refused--> PENDING
                                       --V--> VOIDED            (at once; RELEASE sent)
                                       --timeout--> EXPIRED     (at once; RELEASE sent)
               --RESERVE refused(code)--> REJECTED(code)
  R  IN_FLIGHT --POST OK--> POSTED;  --POST refused(code)--> REJECTED(code)
  V  POSTED at once: the credit side cannot refuse a release.

Transitions ("debit" is the debit account, "credit" the credit account)
  A1 accept T or P (debit node, CreateTransfers). After the stateless checks and the
     replay check (a stored IN_FLIGHT transfer answers IN_FLIGHT), STORED_DATA_INCONSISTENT,
     not journaled, if an outbox entry of any kind is at T's id already (one the relay left
     alone: only data a move or a restore brought; a new leg would be a second one). Then,
     checked in order and
     journaled REJECTED like any stateful failure: DEBIT_ACCOUNT_NOT_FOUND,
     ACCOUNTS_MUST_HAVE_SAME_LEDGER (the transfer's ledger is not the debit's),
     DEBIT_ACCOUNT_CLOSED, DEBIT_ACCOUNT_FROZEN, OVERFLOW, EXCEEDS_CREDITS (counting the
     amount). Then: debit.debits_pending += amount; the record, state IN_FLIGHT; outbox
     entry CREDIT or RESERVE. Answer IN_FLIGHT.
  A2 post R of P (debit node). Step 7 of node/state_machine.py, where a claimed P answers
     PENDING_TRANSFER_ALREADY_POSTED; then DEBIT_ACCOUNT_CLOSED, DEBIT_ACCOUNT_FROZEN.
     Then: R stored IN_FLIGHT as the caller sent it; outbox entry POST (the claim), whose
     event is R resolved (the pending's accounts, ledger, code, the amount posted). No
     balance moves yet. Answer IN_FLIGHT. A replay of R is compared with R resolved, as
     for a post on one node.
  A3 void V of P (debit node). Step 7 as for A2, where a PENDING P is refused
     STORED_DATA_INCONSISTENT if its debit does not hold it or a RELEASE of it is in the
     outbox already (`inconsistent`). Then: debit.debits_pending -= P.amount;
     P VOIDED; V POSTED; debit history; outbox entry RELEASE. Answer OK.
  A4 expiry of P (the expiry sweep, or a post/void finding P overdue), unless claimed or
     `inconsistent` (the sweep leaves it, logged and counted):
     debit.debits_pending -= P.amount; P EXPIRED; debit history (the expiry event);
     outbox entry RELEASE (transfer_id P).
  C  apply a leg (credit node, ApplyCreditLegs). A leg that is not well formed
     (`malformed_leg`: its kind, ids, amounts and event do not agree) fails its whole call
     with INVALID_ARGUMENT. Fenced: only the owner of the credit slot at the fenced epoch
     applies it, else WRONG_SLOT. Sent by its debit slot's primary: with identities (mutual
     TLS), the sender's certificate must be the one the credit node's table records for
     the debit slot's primary, else DEBIT_ACCOUNT_NOT_FOUND with field `sender` (a node
     cannot speak for another's accounts; the two tables may also differ for a moment
     around a move or a failover, so the debit node retries it like any refusal). A leg
     whose applied-leg record exists gets the stored result and changes nothing
     (EXISTS_WITH_DIFFERENT_FIELDS naming the field if the key names another leg there).
     Otherwise, in order, first what this node can check of the debit side, by its slot
     table when the leg is applied:
       * the debit slot is this node's own (it sent the leg to itself: a crossing pending,
         or a credit slot with other followers than the debit slot's): the debit account
         exists (DEBIT_ACCOUNT_NOT_FOUND) and this node's outbox holds exactly this leg
         (TRANSFER_NOT_FOUND);
       * otherwise another node leads the debit slot by the table (DEBIT_ACCOUNT_NOT_FOUND
         if none does); that node's records are its own to check.
     Then, by kind:
       CREDIT, RESERVE: CREDIT_ACCOUNT_NOT_FOUND, ACCOUNTS_MUST_HAVE_SAME_LEDGER,
         CREDIT_ACCOUNT_CLOSED, CREDIT_ACCOUNT_FROZEN, OVERFLOW, EXCEEDS_DEBITS (counting
         the amount), else OK and the balance moves.
       POST, RELEASE: the reservation resolved is the RESERVE record of (debit, pending_id)
         in the credit slot: applied OK (PENDING_TRANSFER_NOT_FOUND); for this credit
         account, this reserved amount and the event's ledger
         (PENDING_TRANSFER_HAS_DIFFERENT_FIELDS naming which); not resolved yet
         (PENDING_TRANSFER_ALREADY_POSTED or PENDING_TRANSFER_ALREADY_VOIDED, by what
         resolved it); still held by the account's credits_pending
         (PENDING_TRANSFER_NOT_FOUND). Then
       POST: CREDIT_ACCOUNT_CLOSED, CREDIT_ACCOUNT_FROZEN, else OK and it moves. (The
         reservation already passed the limits; a reserved account cannot be closed.)
       RELEASE: OK.
     The result and, on OK, the credit account's history entry are journaled in the
     batch, and a POST or RELEASE applied OK marks its reservation resolved (by its
     transfer_id and kind); the answer is sent after it is durable. Every refusal before
     the kind's outcomes is a peer's bad input (PROTOCOL_REFUSALS): that leg alone is
     answered so, with the field, and changes nothing and journals nothing; a debit node
     that gets one logs it as a bug and retries. The debit side of a leg whose debit slot
     another node leads is that node's word: whether its debit exists is not checked here
     (node/books.py's cluster sums show a credit no debit node sent).
  R  a leg's result arrives (debit node; OK or a refusal, never WRONG_SLOT, which the
     relay retries). The outbox entry is deleted, and:
       CREDIT OK:        debits_pending -= amount, debits_posted += amount, T POSTED
       CREDIT refused:   debits_pending -= amount, T REJECTED(code)
       RESERVE OK:       P PENDING, its expiry armed (from P's own timestamp)
       RESERVE refused:  debits_pending -= amount, P REJECTED(code)
       POST OK:          debits_pending -= P.amount, debits_posted += amount,
                         P POSTED (amount_posted), R POSTED and resolved, P's expiry
                         cleared
       POST refused:     R REJECTED(code), as sent (so replays compare as on one node);
                         P PENDING again, its expiry re-armed
       RELEASE OK:       nothing more (A3/A4 released the debit side and wrote its
                         history)
     An OK of CREDIT, RESERVE or POST appends the debit account's history entry.

What callers see (decided here, answered by node/service.py)
  * IN_FLIGHT (state TRANSFER_IN_FLIGHT) means durably accepted and not yet resolved; the
    node answers the final outcome instead when it arrives within the caller's deadline.
    A replay of the id answers IN_FLIGHT until the transfer resolves, then the stored
    outcome as for any replay (EXISTS, or the refusal code).
  * While a post of P is in flight, LookupTransfers shows P PENDING and R IN_FLIGHT, and
    every other post or void of P fails (journaled) with PENDING_TRANSFER_ALREADY_POSTED:
    the first post claims P, so P can never be resolved twice. Only a post can be refused
    by the credit node (its account frozen since the reservation); then P is PENDING again
    and a post or void with a new id may resolve it. A claimed P does not expire; once
    unclaimed it expires at the next sweep if overdue.
  * A post or void of P while P's own reservation is still IN_FLIGHT fails (journaled)
    with PENDING_TRANSFER_NOT_FOUND: P is not a reservation until it is confirmed.
  * The order of precedence is node/state_machine.py's, split between the nodes: the
    debit node's checks come first. With a frozen debit account and a missing credit
    account, a cross-node transfer fails DEBIT_ACCOUNT_FROZEN where a single-node one
    fails CREDIT_ACCOUNT_NOT_FOUND.
  * History: the credit account's entry is keyed by the credit node's time of applying
    the leg, the debit account's entry of a resolution by the time of the resolution; the
    event inside keeps the transfer's own timestamp (assigned at A1/A2).

Bounds and what is not done yet
  * The engine refuses a whole CreateTransfers (RESOURCE_EXHAUSTED) that could take the
    outbox past its bound (--outbox-max). RELEASE entries of expiries are not refused (an
    expiry cannot wait for room), so they alone may pass it.
  * A pending transfer between two slots of one node is journaled as an applied RESERVE in
    its credit slot (journal_local_reserve) and marked resolved when that node posts,
    voids or expires it (journal_local_resolution): a leg that comes after either slot
    moved finds exactly the reservation that is left.
  * Slot moves (node/slotmove.py) carry a slot's B and L ranges along, so routing by
    ownership at apply time keeps working: a leg whose credit slot moved is redirected
    (WRONG_SLOT) to the new owner, which has the slot's applied-leg records. A pending whose
    reservation or post is still in flight (`crossing`) is resolved and expired only through
    this module, even when its credit slot has moved onto the debit node; its legs then go
    to this node itself.

Invariants (asserted where records are written and read back)
  * An outbox entry exists exactly while its transfer is IN_FLIGHT (RELEASE: while the
    credit side still holds the reservation); a result resolves the entry that was sent.
  * debits_pending of a debit account covers the amount of each of its IN_FLIGHT plain and
    pending transfers and of each PENDING cross-node pending.
  * A POST or RELEASE leg is applied only after its RESERVE was applied OK, for the same
    credit account and reserved amount, and at most one of them OK per reservation (refused
    otherwise); credits_pending never goes negative, whatever a peer sends.
  * Each transition reports what it moved on this node's side (`moved_across`): node/books.py
    checks every commit against it, and the cluster's books against each other.
  * At quiescence (empty outboxes): sum of debits_posted = sum of credits_posted over all
    nodes, and no pending amount remains from a cross-node transfer that is not PENDING.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from node import state_machine as sm
from proto import ledger_pb2 as pb, node_pb2

LEG_KINDS = frozenset((node_pb2.LEG_CREDIT, node_pb2.LEG_RESERVE, node_pb2.LEG_POST, node_pb2.LEG_RELEASE))
# A credit node's refusals of a leg that breaks this protocol (a peer's bad input): not
# journaled, not final; a debit node that gets one logs it as a bug and retries.
PROTOCOL_REFUSALS = frozenset(
    (
        pb.EXISTS_WITH_DIFFERENT_FIELDS,
        pb.DEBIT_ACCOUNT_NOT_FOUND,
        pb.TRANSFER_NOT_FOUND,
        pb.PENDING_TRANSFER_NOT_FOUND,
        pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS,
        pb.PENDING_TRANSFER_ALREADY_POSTED,
        pb.PENDING_TRANSFER_ALREADY_VOIDED,
    )
)
# The `field` of a leg refused because its sender is not its debit slot's primary (C).
SENDER_FIELD = "sender"
# The results a credit node may give a leg, WRONG_SLOT aside: each one is final.
LEG_OUTCOMES = frozenset(
    (
        pb.OK,
        pb.CREDIT_ACCOUNT_NOT_FOUND,
        pb.ACCOUNTS_MUST_HAVE_SAME_LEDGER,
        pb.CREDIT_ACCOUNT_CLOSED,
        pb.CREDIT_ACCOUNT_FROZEN,
        pb.OVERFLOW,
        pb.EXCEEDS_DEBITS,
    )
)
# Which of them a leg of each kind can have (a credit node answering another is refused by
# the relay, as a peer's bad input, before the result reaches the committer).
LEG_OUTCOMES_OF: dict[int, frozenset[int]] = {
    node_pb2.LEG_CREDIT: LEG_OUTCOMES,
    node_pb2.LEG_RESERVE: LEG_OUTCOMES,
    node_pb2.LEG_POST: frozenset((pb.OK, pb.CREDIT_ACCOUNT_CLOSED, pb.CREDIT_ACCOUNT_FROZEN, pb.OVERFLOW)),
    node_pb2.LEG_RELEASE: frozenset((pb.OK,)),
}


class OutboxStore(sm.Store, Protocol):
    """What the outbox reads and writes on top of the state machine's `Store`."""

    def get_outbox(self, debit_account_id: str, subject_id: str, kind: int) -> node_pb2.CreditLeg | None: ...
    def put_outbox(self, leg: node_pb2.CreditLeg) -> None: ...
    def delete_outbox(self, leg: node_pb2.CreditLeg) -> None: ...
    def get_applied_leg(
        self, credit_account_id: str, debit_account_id: str, transfer_id: str, kind: int
    ) -> node_pb2.AppliedLeg | None: ...
    def put_applied_leg(self, applied: node_pb2.AppliedLeg) -> None: ...
    def append_history_at(self, account: pb.Account, event: pb.Transfer, at: int) -> None: ...
    def transfer_settled(self, transfer: pb.Transfer) -> None: ...
    def moved_across(self, amount: int) -> None: ...


class Accepted(sm.Result):
    """IN_FLIGHT for a transfer accepted by this very event (not a replay): when it settles
    while the caller waits, the caller gets OK rather than EXISTS."""

    __slots__ = ()


class LegResult(NamedTuple):
    """A leg's final result, as the credit node answered it."""

    leg: node_pb2.CreditLeg
    code: sm.Code


_LEG_KINDS = (node_pb2.LEG_CREDIT, node_pb2.LEG_RESERVE, node_pb2.LEG_POST, node_pb2.LEG_RELEASE)


def subject_of(leg: node_pb2.CreditLeg) -> str:
    """The transfer whose outbox entry the leg is: T for CREDIT, the pending for the rest."""
    return leg.pending_id or leg.transfer_id


def _copy(transfer: pb.Transfer) -> pb.Transfer:
    duplicate = pb.Transfer()
    duplicate.CopyFrom(transfer)
    return duplicate


def _debit_status(debit: pb.Account) -> sm.Code:
    if debit.status == pb.CLOSED:
        return pb.DEBIT_ACCOUNT_CLOSED
    if debit.status == pb.FROZEN:
        return pb.DEBIT_ACCOUNT_FROZEN
    return pb.RESULT_CODE_UNSPECIFIED


# --- the debit node ------------------------------------------------------------------------


def accept_transfer(store: OutboxStore, t: pb.Transfer, timestamp: int) -> sm.Result:
    """A1: a plain or pending transfer whose credit account lives on another node."""
    assert not t.flags & (sm.POST_PENDING | sm.VOID_PENDING), t
    stored = store.get_transfer(t.debit_account_id, t.id)
    if stored is not None:
        return sm.replay_transfer(store, stored, t)
    if any(store.get_outbox(t.debit_account_id, t.id, kind) is not None for kind in _LEG_KINDS):
        # An entry without its transfer: left alone by the relay (data a move or a restore
        # brought). A new leg of T would be a second one of its id.
        return sm.Result(pb.STORED_DATA_INCONSISTENT, "id")
    kind = node_pb2.LEG_RESERVE if t.flags & sm.PENDING else node_pb2.LEG_CREDIT
    debit = store.get_account(t.debit_account_id)
    if debit is None:
        return sm.reject(store, t, pb.DEBIT_ACCOUNT_NOT_FOUND, timestamp)
    if t.ledger != debit.ledger:
        return sm.reject(store, t, pb.ACCOUNTS_MUST_HAVE_SAME_LEDGER, timestamp, "ledger")
    status = _debit_status(debit)
    if status:
        return sm.reject(store, t, status, timestamp)
    # The amount waits in debits_pending until the credit node answers, so the limits
    # count it from now on.
    total = debit.debits_pending + debit.debits_posted + t.amount
    if total > sm.INT64_MAX:
        return sm.reject(store, t, pb.OVERFLOW, timestamp)
    if sm.debits_past_limit(debit, total):
        return sm.reject(store, t, pb.EXCEEDS_CREDITS, timestamp)

    pending = bool(t.flags & sm.PENDING)
    debit.debits_pending += t.amount
    record = _copy(t)
    record.timestamp = timestamp
    record.state = pb.TRANSFER_IN_FLIGHT
    event = _copy(record)
    event.state = pb.TRANSFER_PENDING if pending else pb.TRANSFER_POSTED
    leg = node_pb2.CreditLeg(
        kind=kind,
        debit_account_id=t.debit_account_id,
        transfer_id=t.id,
        credit_account_id=t.credit_account_id,
        ledger=t.ledger,
        amount=t.amount,
        event=event,
    )
    store.put_account(debit)
    store.put_transfer(record)
    store.put_outbox(leg)
    store.moved_across(t.amount)
    return Accepted(pb.IN_FLIGHT, "", timestamp, pb.TRANSFER_IN_FLIGHT)


def resolve_pending(store: OutboxStore, t: pb.Transfer, timestamp: int) -> sm.Result:
    """A2 and A3: a post or void of a pending transfer whose credit account lives on
    another node."""
    assert t.flags & (sm.POST_PENDING | sm.VOID_PENDING), t
    stored = store.get_transfer(t.debit_account_id, t.id)
    if stored is not None:
        if stored.state == pb.TRANSFER_IN_FLIGHT and stored.flags & sm.POST_PENDING:
            # A post in flight is stored as sent; a replay compares with it resolved. (A plain
            # or pending transfer in flight at the id is compared as it is: another transfer.)
            entry = store.get_outbox(stored.debit_account_id, stored.pending_id, node_pb2.LEG_POST)
            if entry is None or entry.transfer_id != stored.id:
                # Our own writes keep the two together; a moved-in or restored slot may not.
                return sm.Result(pb.STORED_DATA_INCONSISTENT, "id")
            stored = _copy(entry.event)
            stored.state = pb.TRANSFER_IN_FLIGHT
        return sm.replay_transfer(store, stored, t)
    pending = store.get_transfer(t.debit_account_id, t.pending_id)
    claimed = pending is not None and store.get_outbox(t.debit_account_id, t.pending_id, node_pb2.LEG_POST) is not None
    refused = sm.resolution_refused(store, t, pending, timestamp, expire_pending, claimed, inconsistent)
    if refused is not None:
        return refused
    assert pending is not None and pending.state == pb.TRANSFER_PENDING, pending
    debit = store.get_account(pending.debit_account_id)
    assert debit is not None and debit.debits_pending >= pending.amount, (debit, pending)
    amount = t.amount or pending.amount
    record = sm.resolved_record(t, pending, amount, timestamp)

    if t.flags & sm.VOID_PENDING:
        debit.debits_pending -= pending.amount
        pending.state = pb.TRANSFER_VOIDED
        pending.amount_posted = 0
        store.put_account(debit)
        store.put_transfer(pending)
        store.put_transfer(record)
        store.append_history(debit, record)
        deadline = sm.expires_at(pending)
        if deadline:
            store.pending_expiry_clear(pending, deadline)
        store.put_outbox(_release(pending, record))
        store.moved_across(-pending.amount)
        return sm.Result(pb.OK, "", timestamp, record.state)

    status = _debit_status(debit)
    if status:
        return sm.reject(store, t, status, timestamp)
    held = _copy(t)
    held.timestamp = timestamp
    held.state = pb.TRANSFER_IN_FLIGHT
    store.put_transfer(held)
    store.put_outbox(
        node_pb2.CreditLeg(
            kind=node_pb2.LEG_POST,
            debit_account_id=pending.debit_account_id,
            transfer_id=t.id,
            credit_account_id=pending.credit_account_id,
            amount=amount,
            reserved=pending.amount,
            pending_id=pending.id,
            event=record,  # resolved and POSTED: R once the credit node applies it
        )
    )
    return Accepted(pb.IN_FLIGHT, "", timestamp, pb.TRANSFER_IN_FLIGHT)


def journal_local_reserve(store: OutboxStore, t: pb.Transfer, timestamp: int) -> None:
    """A pending transfer between two slots of this node was just reserved in one batch:
    journal it in the credit slot as an applied RESERVE, as if a leg had carried it. If the
    credit slot moves to another node before the pending is resolved, its POST or RELEASE
    leg then finds the reservation it resolves (C's pairing) on the slot's new owner."""
    assert t.flags & sm.PENDING, t
    leg = node_pb2.CreditLeg(
        kind=node_pb2.LEG_RESERVE,
        debit_account_id=t.debit_account_id,
        transfer_id=t.id,
        credit_account_id=t.credit_account_id,
        ledger=t.ledger,
        amount=t.amount,
    )
    store.put_applied_leg(node_pb2.AppliedLeg(leg=leg, code=pb.OK, timestamp=timestamp))


def journal_local_resolution(store: OutboxStore, pending: pb.Transfer, resolver_id: str) -> None:
    """A pending transfer between two slots of this node, PENDING before this event, as the
    state machine left it: if the event resolved it (posted or voided by `resolver_id`, or
    expired), mark the reservation journal_local_reserve journaled resolved, so that no leg
    resolves it again after either slot has moved."""
    if pending.state == pb.TRANSFER_PENDING:
        return
    reserve = store.get_applied_leg(
        pending.credit_account_id, pending.debit_account_id, pending.id, node_pb2.LEG_RESERVE
    )
    if reserve is None:  # reserved before reservations were journaled
        return
    if pending.state == pb.TRANSFER_POSTED:
        _mark_resolved(store, reserve, resolver_id, node_pb2.LEG_POST)
    elif pending.state == pb.TRANSFER_EXPIRED:
        _mark_resolved(store, reserve, pending.id, node_pb2.LEG_RELEASE)  # as an expiry's RELEASE names it
    else:
        assert pending.state == pb.TRANSFER_VOIDED, pending
        _mark_resolved(store, reserve, resolver_id, node_pb2.LEG_RELEASE)


def crossing(store: OutboxStore, pending: pb.Transfer) -> bool:
    """Whether only this module may resolve a pending transfer, even once its credit slot
    has moved onto this node: a leg of it is on its way (its reservation not yet confirmed,
    or a post of it in flight), or its credit side's reservation is resolved already (by a
    leg that came while the slots were on two nodes; the credit side answers its legs with
    what resolved it, where the state machine would find the reservation gone)."""
    if pending.state == pb.TRANSFER_IN_FLIGHT:
        return True
    if store.get_outbox(pending.debit_account_id, pending.id, node_pb2.LEG_POST) is not None:
        return True
    if pending.state != pb.TRANSFER_PENDING:
        return False
    reserve = store.get_applied_leg(
        pending.credit_account_id, pending.debit_account_id, pending.id, node_pb2.LEG_RESERVE
    )
    return reserve is not None and bool(reserve.resolved_by)


def inconsistent(store: OutboxStore, pending: pb.Transfer) -> str:
    """Why a PENDING pending whose credit account is on another node cannot be posted, voided
    or expired as its stored data stands ("" if it can): its debit account does not hold it
    (`sm.unheld`), or an entry that releases it is in the outbox already (only data a move or a
    restore brought: the relay leaves an entry that does not pair alone, and one written over it
    would be a second release)."""
    unheld = sm.unheld(store, pending, local=False)
    if unheld:
        return unheld
    if store.get_outbox(pending.debit_account_id, pending.id, node_pb2.LEG_RELEASE) is not None:
        return "an outbox entry releasing it is there already"
    return ""


def expire_pending(store: OutboxStore, pending: pb.Transfer, timestamp: int) -> bool:
    """A4: release an overdue cross-node pending transfer. False if it was already
    resolved, or is claimed by a post in flight (which decides its fate)."""
    if pending.state != pb.TRANSFER_PENDING:
        return False
    if store.get_outbox(pending.debit_account_id, pending.id, node_pb2.LEG_POST) is not None:
        return False
    deadline = sm.expires_at(pending)
    assert deadline and timestamp >= deadline, (pending, timestamp)
    debit = store.get_account(pending.debit_account_id)
    assert debit is not None and debit.debits_pending >= pending.amount, (debit, pending)
    debit.debits_pending -= pending.amount
    pending.state = pb.TRANSFER_EXPIRED
    store.put_account(debit)
    store.put_transfer(pending)
    event = _copy(pending)
    event.timestamp = timestamp  # the history entry is the expiry event, at its own time
    store.append_history(debit, event)
    store.pending_expiry_clear(pending, deadline)
    store.put_outbox(_release(pending, event))
    store.moved_across(-pending.amount)
    return True


def _release(pending: pb.Transfer, event: pb.Transfer) -> node_pb2.CreditLeg:
    return node_pb2.CreditLeg(
        kind=node_pb2.LEG_RELEASE,
        debit_account_id=pending.debit_account_id,
        transfer_id=event.id,
        credit_account_id=pending.credit_account_id,
        reserved=pending.amount,
        pending_id=pending.id,
        event=event,
    )


def unsettleable(store: OutboxStore, leg: node_pb2.CreditLeg) -> str:
    """Why a leg's final result cannot settle as the stored data stands now ("" if it can): its
    debit account no longer holds what the leg holds. The relay loads an entry only if the legs'
    holds fit the account (node/relay.py `_loaded_problem`), but a peer's account may hold one
    claim's worth for two, a pending's and a leg's, each checked alone: the other was resolved
    first. Never our own data (an account's debits_pending is every claim on it, summed). One leg
    at a time: once another claim has added to the account, a bad leg passes and settles from
    that claim's hold; a moved-in or restored slot is checked whole against that
    (node/peerdata.py `HeldTally`, `held_problem`), so this is for what a damaged disk leaves."""
    if leg.kind == node_pb2.LEG_RELEASE:
        return ""
    debit = store.get_account(leg.debit_account_id)
    holds = leg.reserved if leg.kind == node_pb2.LEG_POST else leg.amount
    if debit is None or debit.debits_pending < holds:
        return f"the debit account no longer holds the {holds} the leg holds"
    return ""


def apply_leg_result(store: OutboxStore, result: LegResult, timestamp: int) -> sm.Result:
    """R: settle the transfer a leg belongs to, and delete its outbox entry."""
    leg, code = result
    assert code in LEG_OUTCOMES_OF[leg.kind], (leg, code)  # the relay refuses any other answer
    entry = store.get_outbox(leg.debit_account_id, subject_of(leg), leg.kind)
    # Paired with put_outbox: a result settles the very entry that was sent, once.
    assert entry is not None and entry.transfer_id == leg.transfer_id, (entry, leg)
    store.delete_outbox(entry)
    if leg.kind == node_pb2.LEG_RELEASE:
        assert code == pb.OK, (leg, code)  # the debit side already released its half
        return sm.Result(pb.OK, "", timestamp)

    debit = store.get_account(leg.debit_account_id)
    transfer = store.get_transfer(leg.debit_account_id, leg.transfer_id)
    assert debit is not None and transfer is not None and transfer.state == pb.TRANSFER_IN_FLIGHT, (debit, transfer)
    ok = code == pb.OK
    if leg.kind == node_pb2.LEG_POST:
        pending = store.get_transfer(leg.debit_account_id, leg.pending_id)
        assert pending is not None and pending.state == pb.TRANSFER_PENDING, pending
        assert pending.amount == leg.reserved and debit.debits_pending >= pending.amount, (debit, pending, leg)
        deadline = sm.expires_at(pending)
        if ok:
            resolved = leg.event
            assert (resolved.id, resolved.timestamp, resolved.amount) == (transfer.id, transfer.timestamp, leg.amount)
            transfer.CopyFrom(resolved)
            debit.debits_pending -= pending.amount
            debit.debits_posted += leg.amount
            store.moved_across(leg.amount - pending.amount)
            pending.state = pb.TRANSFER_POSTED
            pending.amount_posted = leg.amount
            store.put_transfer(pending)
            if deadline:
                store.pending_expiry_clear(pending, deadline)
        elif deadline:
            # The sweep passed P over while it was claimed; P may expire again.
            store.pending_expiry_set(pending, deadline)
    else:
        assert debit.debits_pending >= leg.amount == transfer.amount, (debit, leg, transfer)
        if leg.kind == node_pb2.LEG_CREDIT or not ok:
            debit.debits_pending -= leg.amount
        if not ok:
            store.moved_across(-leg.amount)
        if ok and leg.kind == node_pb2.LEG_CREDIT:
            debit.debits_posted += leg.amount
        if ok and leg.kind == node_pb2.LEG_RESERVE and transfer.timeout_s:
            store.pending_expiry_set(transfer, sm.expires_at(transfer))
    assert debit.debits_posted <= sm.INT64_MAX, debit

    if ok:
        transfer.state = pb.TRANSFER_PENDING if leg.kind == node_pb2.LEG_RESERVE else pb.TRANSFER_POSTED
    else:
        transfer.state = pb.TRANSFER_REJECTED
        transfer.result = code
    store.put_account(debit)
    store.put_transfer(transfer)
    if ok:
        store.append_history_at(debit, transfer, timestamp)
    store.transfer_settled(_copy(transfer))
    return sm.Result(pb.OK, "", timestamp)


def settled_result(record: pb.Transfer, fresh: bool) -> sm.Result:
    """What a caller who got IN_FLIGHT is answered once the transfer settled: the outcome
    for the request that created it (`fresh`), else what a replay answers."""
    assert record.state != pb.TRANSFER_IN_FLIGHT, record
    if record.state == pb.TRANSFER_REJECTED:
        field = "ledger" if record.result == pb.ACCOUNTS_MUST_HAVE_SAME_LEDGER else ""  # as replays name it
        return sm.Result(record.result, field, record.timestamp, record.state)
    return sm.Result(pb.OK if fresh else pb.EXISTS, "", record.timestamp, record.state)


# --- the credit node -----------------------------------------------------------------------


def malformed_leg(leg: node_pb2.CreditLeg) -> str | None:
    """Why a received leg is not well formed (a message naming the field), or None: its kind,
    ids and amounts, and its event (the credit account's history entry) as the debit node
    builds it for that kind."""
    if leg.kind not in LEG_KINDS:
        return f"kind: {leg.kind} is not a leg kind"
    for name in ("debit_account_id", "transfer_id", "credit_account_id"):
        if not sm.id_valid(getattr(leg, name)):
            return f"{name}: not a valid id"
    if leg.debit_account_id == leg.credit_account_id:
        return "credit_account_id: equal to debit_account_id"
    event = leg.event
    if (event.id, event.debit_account_id, event.credit_account_id) != (
        leg.transfer_id,
        leg.debit_account_id,
        leg.credit_account_id,
    ):
        return "event: not the leg's transfer"
    if event.ledger == 0 or event.code == 0:
        return "event: a transfer without a ledger or a code"
    if leg.kind in (node_pb2.LEG_CREDIT, node_pb2.LEG_RESERVE):
        if leg.amount <= 0 or leg.ledger == 0 or leg.reserved or leg.pending_id:
            return "amount: CREDIT and RESERVE move a positive amount on a ledger, and resolve no pending"
        if (event.amount, event.ledger) != (leg.amount, leg.ledger):
            return "event: its amount or ledger is not the leg's"
        reserves = leg.kind == node_pb2.LEG_RESERVE
        if event.flags & (sm.POST_PENDING | sm.VOID_PENDING) or bool(event.flags & sm.PENDING) != reserves:
            return "event.flags: a CREDIT's event is a plain transfer, a RESERVE's a pending one"
        return None
    if not sm.id_valid(leg.pending_id):
        return "pending_id: not a valid id"
    if leg.reserved <= 0:
        return "reserved: POST and RELEASE release a positive reservation"
    if leg.kind == node_pb2.LEG_POST:
        if not 0 < leg.amount <= leg.reserved:
            return "amount: a POST posts a positive amount, at most the reservation"
        if not event.flags & sm.POST_PENDING or (event.pending_id, event.amount) != (leg.pending_id, leg.amount):
            return "event: not a post of the leg's pending, of the leg's amount"
        return None
    if leg.amount:
        return "amount: a RELEASE moves nothing"
    if leg.transfer_id == leg.pending_id:  # an expiry: the event is the pending itself
        resolves = bool(event.flags & sm.PENDING) and not event.pending_id
    else:
        resolves = bool(event.flags & sm.VOID_PENDING) and event.pending_id == leg.pending_id
    if not resolves or event.amount != leg.reserved:
        return "event: not a void or an expiry of the leg's pending, of its reservation"
    return None


def _credit_refusal(credit: pb.Account | None, leg: node_pb2.CreditLeg) -> sm.Code:
    """The checks of a CREDIT or RESERVE leg, in order; OK when it may move."""
    if credit is None:
        return pb.CREDIT_ACCOUNT_NOT_FOUND
    if credit.ledger != leg.ledger:
        return pb.ACCOUNTS_MUST_HAVE_SAME_LEDGER
    if credit.status == pb.CLOSED:
        return pb.CREDIT_ACCOUNT_CLOSED
    if credit.status == pb.FROZEN:
        return pb.CREDIT_ACCOUNT_FROZEN
    total = credit.credits_pending + credit.credits_posted + leg.amount
    if total > sm.INT64_MAX:
        return pb.OVERFLOW
    if sm.credits_past_limit(credit, total):
        return pb.EXCEEDS_DEBITS
    return pb.OK


_LEG_FIELDS = ("credit_account_id", "amount", "reserved", "pending_id", "ledger")


def _leg_difference(stored: node_pb2.CreditLeg, leg: node_pb2.CreditLeg) -> str:
    """The first field in which a leg differs from the one journaled under its key ("": none)."""
    for name in _LEG_FIELDS:
        if getattr(stored, name) != getattr(leg, name):
            return name
    return ""


def _unsent(store: OutboxStore, leg: node_pb2.CreditLeg) -> sm.Result | None:
    """C's check of a leg whose debit slot is this node's own: the refusal, or None if this
    node's outbox holds exactly this leg (it sent it to itself)."""
    if store.get_account(leg.debit_account_id) is None:
        return sm.Result(pb.DEBIT_ACCOUNT_NOT_FOUND, "debit_account_id")
    entry = store.get_outbox(leg.debit_account_id, subject_of(leg), leg.kind)
    if entry is None or entry != leg:
        return sm.Result(pb.TRANSFER_NOT_FOUND, "transfer_id")
    return None


def _reservation_refusal(
    reserve: node_pb2.AppliedLeg | None, credit: pb.Account | None, leg: node_pb2.CreditLeg
) -> sm.Result | None:
    """C's checks of the reservation a POST or RELEASE resolves: the refusal, or None."""
    if reserve is None or reserve.code != pb.OK:
        return sm.Result(pb.PENDING_TRANSFER_NOT_FOUND, "pending_id")
    for name, reserved, named in (
        ("credit_account_id", reserve.leg.credit_account_id, leg.credit_account_id),
        ("reserved", reserve.leg.amount, leg.reserved),
        ("ledger", reserve.leg.ledger, leg.event.ledger),
    ):
        if reserved != named:
            return sm.Result(pb.PENDING_TRANSFER_HAS_DIFFERENT_FIELDS, name)
    if reserve.resolved_by:
        posted = reserve.resolved_kind == node_pb2.LEG_POST
        return sm.Result(
            pb.PENDING_TRANSFER_ALREADY_POSTED if posted else pb.PENDING_TRANSFER_ALREADY_VOIDED, "pending_id"
        )
    # Each reservation adds its amount once and is resolved once, so this holds whatever a
    # peer sends; checked rather than asserted all the same, as it guards what a peer moves.
    if credit is None or credit.credits_pending < leg.reserved:
        return sm.Result(pb.PENDING_TRANSFER_NOT_FOUND, "reserved")
    return None


def apply_credit_leg(
    store: OutboxStore, leg: node_pb2.CreditLeg, timestamp: int, debit_here: bool = False
) -> sm.Result:
    """C: apply a leg that passed `malformed_leg` and the fence, once. `debit_here`: this
    node leads the leg's debit slot (the caller checked that another node does otherwise).

    A leg that no debit node following this protocol sends (see C) is a peer's bad input: it
    is refused with PROTOCOL_REFUSALS' codes and the field, changes nothing and is not
    journaled."""
    applied = store.get_applied_leg(leg.credit_account_id, leg.debit_account_id, leg.transfer_id, leg.kind)
    if applied is not None:
        # A key always names the same leg, because a debit node never changes an outbox entry.
        differing = _leg_difference(applied.leg, leg)
        if differing:
            return sm.Result(pb.EXISTS_WITH_DIFFERENT_FIELDS, differing)
        return sm.Result(applied.code, "", applied.timestamp)
    if debit_here:
        unsent = _unsent(store, leg)
        if unsent is not None:
            return unsent

    credit = store.get_account(leg.credit_account_id)
    reserve: node_pb2.AppliedLeg | None = None
    if leg.kind in (node_pb2.LEG_CREDIT, node_pb2.LEG_RESERVE):
        code = _credit_refusal(credit, leg)
        if code == pb.OK:
            assert credit is not None
            if leg.kind == node_pb2.LEG_CREDIT:
                credit.credits_posted += leg.amount
            else:
                credit.credits_pending += leg.amount
            store.moved_across(-leg.amount)
    else:
        reserve = store.get_applied_leg(
            leg.credit_account_id, leg.debit_account_id, leg.pending_id, node_pb2.LEG_RESERVE
        )
        refused = _reservation_refusal(reserve, credit, leg)
        if refused is not None:
            return refused
        assert credit is not None and reserve is not None  # _reservation_refusal found both
        code = pb.OK
        if leg.kind == node_pb2.LEG_POST:
            if credit.status == pb.CLOSED:
                code = pb.CREDIT_ACCOUNT_CLOSED
            elif credit.status == pb.FROZEN:
                code = pb.CREDIT_ACCOUNT_FROZEN
        if code == pb.OK:
            if credit.credits_posted + leg.amount > sm.INT64_MAX:
                return sm.Result(pb.OVERFLOW)  # cannot happen after a valid reservation of the amount
            credit.credits_pending -= leg.reserved
            credit.credits_posted += leg.amount  # 0 for a RELEASE
            store.moved_across(leg.reserved - leg.amount)
            _mark_resolved(store, reserve, leg.transfer_id, leg.kind)

    if code == pb.OK:
        assert credit is not None
        store.put_account(credit)
        store.append_history_at(credit, leg.event, timestamp)
    journaled = node_pb2.CreditLeg()
    journaled.CopyFrom(leg)
    journaled.ClearField("event")  # the history entry keeps it; the journal needs the key and amounts
    store.put_applied_leg(node_pb2.AppliedLeg(leg=journaled, code=code, timestamp=timestamp))
    return sm.Result(code, "", timestamp)


def _mark_resolved(store: OutboxStore, reserve: node_pb2.AppliedLeg, resolver_id: str, kind: int) -> None:
    assert not reserve.resolved_by, reserve  # checked by the callers: a reservation resolves once
    resolved = node_pb2.AppliedLeg()
    resolved.CopyFrom(reserve)
    resolved.resolved_by = resolver_id
    resolved.resolved_kind = kind  # type: ignore[assignment]  # the generated enum type is an int
    store.put_applied_leg(resolved)
