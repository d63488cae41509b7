"""Replicated slots, the node's half (DESIGN section 4a): primaries ship their group commits to followers.

Anchors: PacificA (primary/backup, a configuration manager, leases), Kafka's in-sync replicas
(a write is acknowledged once every member of the current configuration has it), and
TigerBeetle's rule that no acknowledged write is ever lost.

Terms
  configuration  Slot s at epoch e: a primary and its followers, on different nodes (the shard
                 map's; a node learns it through AssignSlots). The controller alone changes
                 it, epoch + 1 each time.
  seq            Each slot's own sequence of replicated batches, kept with its epoch in the
                 slot's range (node/keys.py `<slot> S`), written in the same batch as the
                 writes it counts: every copy of a slot says how far it is, and a copy made by
                 a move carries it along.
  entry          (slot, epoch, seq, ops): what one group commit wrote to one slot.
  link           The primary node's stream to one follower node (Node.Replicate: one stream
                 per node pair, kept open): one request at a time, each answered before the
                 next is sent, carrying the entries of every slot the two share, written by
                 the follower all or nothing. A request not answered within CALL_TIMEOUT_S,
                 or a broken stream, ends the stream (the next request opens another): the
                 follower may have written what it did not answer, so the next request
                 carries it again and is taken as a resend. Each entry is encoded once per
                 cycle and the same bytes go to every follower (and into keys.REPLICATING).

The primary (node/engine.py's committer and Replicator below)
  1. Each cycle's batch gets, for every touched slot that has followers, the next seq and
     its `<slot> S` key. The batch is written locally (fsync) and the entries shipped to each
     follower node at once; the cycle's callers are answered once every follower of each
     slot's *current* configuration has them durably (a follower the controller removed
     meanwhile is no longer waited for). Until then the next cycle does not start, and reads
     of the cycle's slots wait: nobody reads a write that may not survive.
  2. A slot whose configuration no longer makes this node its primary while the cycle waits
     (the controller failed it over) fails: its events are answered WRONG_SLOT (their outcome
     is the new primary's to tell: a retry there answers EXISTS if the batch reached it).
  3. No event spans two slots with followers in one batch: every transfer between two
     replicated slots goes through the outbox (node/outbox.py), which is correct across any
     two configurations. Sharing followers is not enough: the controller changes each slot's
     configuration on its own (one failed over, the other kept), and 2 would then keep one
     half of the event and lose the other (a retry credited twice, or the credit was lost).
     `SlotTable.same_batch` decides.
  4. Lease: the primary serves a slot with followers only while every one of them has
     acknowledged a call (a batch or an empty heartbeat, sent every lease/3 when idle) sent
     within the last lease (timed from the send). Past that it answers WRONG_SLOT.
  4b. A follower that does not acknowledge (cut off from this node, its disk stuck) while the
     controller still reaches both: the controller asks each primary often which follower
     nodes have been silent longer than its bound (Node.SilentFollowers) and removes them from
     the slots that primary leads (epoch + 1; PacificA's primary-requested removal). Silent:
     no call answered with every entry written, or entries refused, or one slot's lease
     refused without a break, for the bound; a lease refused for a moment (a configuration
     reaching the two nodes at different times, as all along a repair) is not silence. The
     waiting cycle then completes with the remaining members, and repair re-copies the slot.
     A primary cut off from every follower but not from the controller thus keeps its slots
     alone (fewer copies, shown under-replicated) rather than lose them.
  5. Every call carries the primary's clock, so that a follower promoted later never stamps a
     ledger timestamp behind one the old primary gave.
  1b. The cycle's entries are also kept in its own batch (keys.REPLICATING). A primary that
     stopped or crashed before its followers had them finds them at startup and ships them
     again before it commits anything else; until then reads of those slots wait. Otherwise
     a client's retry would be answered from a batch only this node holds.
  4c. Leases are per slot: a heartbeat names every slot the primary leads with that follower,
     at its epoch, and the follower grants only those it follows from that primary at exactly
     that epoch (so a follower that was promoted, or moved to a new configuration, stops
     renewing the old primary's lease at once). A node that starts serves the slots with a
     replicated history only after a lease x (1 + DRIFT), as a promoted follower does.

The follower (Replica below, behind Node.Replicate)
  * A call from a node its table marks down is refused whole: that node's leases lapse.
  * A call whose caller's certificate is not the identity the table records for the node it
    names as `primary` is refused whole (the shard map records each node's identity: only
    a slot's primary may write its copies).
  * Each entry must come from the slot's primary by the follower's table, at an epoch no
    newer than the table's (a newer one waits for AssignSlots: the primary retries), for a
    slot this node follows; its seq must be the slot's next, or be exactly the (epoch, seq)
    this copy wrote last (a resend: skipped); anything else is refused (above: a gap; below or
    another epoch: the histories diverged, as when a copy took an old primary's last batch
    after a new primary took over; the new one's calls stay refused, so it reports this node
    silent and the controller drops the copy). One refused entry refuses the whole call;
    otherwise all entries are written in one WriteBatch, durably (its fsync shared with
    the node's other writes of the moment: node/storage.py `write_soon`), then acknowledged.
  * A call is refused whole when it comes from a node the table marks down, asks for a lease
    outside LEASE_MS_MIN..MAX, carries a clock more than node/clock.py CLOCK_AHEAD_MAX_NS past
    this host's, or names one slot in two entries. An entry whose ops hold a record no write of
    ours could have left (node/peerdata.py: one that does not parse, sits under another's key,
    an account with a negative balance, ...) is refused: promoted, the copy would stop at it.
    A refused call ends the stream with FAILED_PRECONDITION.
  * Promoted (AssignSlots names it primary of a slot it followed): it serves the slot only
    after lease x (1 + DRIFT) has passed since it last acknowledged the old primary, by when
    the old primary's lease has lapsed; it loads the slot's outbox and pending expiries.

A member that leaves a configuration (failed over, removed, replaced by a move) never catches
up in place: its range is dropped, and copies are made again from the primary with the
slot-move machinery (repair). So no copy ever holds a batch past its primary's history that
it could serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from rocksdict import WriteBatch

import serving
from node import keys, metrics
from node.changelog import Op
from node.clock import Clock, too_far_ahead
from node.peerdata import ops_problem
from node.slots import SlotTable
from node.storage import Storage
from proto import node_pb2

log = logging.getLogger("yunkai.node.replication")

LEASE_MS_DEFAULT = 1000
LEASE_MS_MIN, LEASE_MS_MAX = 100, 60_000  # a peer asking for more is refused (promotions would wait it out)
DRIFT = 0.1  # clocks of two hosts may run this much apart in rate over a lease
CALL_TIMEOUT_S = 2.0
# A follower that refused a lease within the last REFUSED_FRESH_S (its table a step behind
# ours, as right after a failover: AssignSlots reaches the nodes one by one) is asked again
# every REFUSED_RETRY_S rather than every lease/3: a promoted primary serves ~0.3 s sooner.
REFUSED_RETRY_S = 0.02
REFUSED_FRESH_S = 1.0
REPLICATE_METHOD = "/yunkai.node.v1.Node/Replicate"
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
    ("grpc.max_send_message_length", serving.MESSAGE_BYTES_MAX),
    ("grpc.max_receive_message_length", serving.MESSAGE_BYTES_MAX),
]


def seq_value(epoch: int, seq: int) -> bytes:
    return epoch.to_bytes(8, "big") + seq.to_bytes(8, "big")


def parse_seq(value: bytes) -> tuple[int, int]:
    return int.from_bytes(value[:8], "big"), int.from_bytes(value[8:16], "big")


def load_seqs(storage: Storage, slots: SlotTable) -> None:
    """Every slot's (epoch, seq) as its range records it (startup)."""
    for slot in range(slots.slots_total):
        value = storage.get(keys.seq_key(slot))
        if value is not None:
            slots[slot].seq_epoch, slots[slot].seq = parse_seq(value)


# --- the primary ------------------------------------------------------------------------------


@dataclass
class _Link:
    """Calls to one follower node."""

    channel: grpc.aio.Channel
    leases: dict[int, float] = field(default_factory=dict)  # slot -> monotonic time its lease holds until
    last_ok: float = 0.0  # when the last call whose entries it all wrote was sent
    refused: dict[int, float] = field(default_factory=dict)  # slot -> since when its lease is refused
    last_heartbeat: float = 0.0  # when the last heartbeat (every lease asked again) was sent
    refusing_since: float = 0.0  # when it began refusing our entries (0: it takes them)
    since: float = field(default_factory=time.monotonic)  # when it last became a follower node of ours
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    stream: grpc.aio.StreamStreamCall | None = None  # the open Replicate stream, if any


class Replicator:
    """The primary side: links to follower nodes, shipping, acknowledgements, leases."""

    def __init__(
        self,
        self_address: Callable[[], str],
        slots: SlotTable,
        clock: Clock,
        lease_ms: int = LEASE_MS_DEFAULT,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        assert LEASE_MS_MIN <= lease_ms <= LEASE_MS_MAX, lease_ms
        self._self_address = self_address
        self._slots = slots
        self._clock = clock
        self.lease_ms = lease_ms
        self.lease_s = lease_ms / 1000
        self._credentials = credentials
        self._links: dict[str, _Link] = {}
        self._followers: frozenset[str] = frozenset()
        # follower -> (slots, epochs) its heartbeats name: only a new table changes them (configured())
        self._lease_lists: dict[str, tuple[list[int], list[int]]] = {}
        self._warned: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def _link(self, address: str) -> _Link:
        link = self._links.get(address)
        if link is None:
            channel = serving.channel(address, self._credentials, _CHANNEL_OPTIONS)
            link = self._links[address] = _Link(channel)
        return link

    def lease_ok(self, slot: int, followers: Sequence[str]) -> bool:
        """Whether every follower's grant of the slot's lease still covers now."""
        now = time.monotonic()
        links = self._links
        for follower in followers:
            link = links.get(follower)
            if link is None or link.leases.get(slot, 0.0) <= now:
                return False
        return True

    def silent(self, after_s: float) -> list[str]:
        """Follower nodes that have answered no call (every entry written) for more than
        `after_s` since they became our followers, have refused our entries that long
        (heartbeats they take do not hide it), or have refused one slot's lease that long
        without a break: the controller drops them from this node's slots (4b). A lease refused
        for a moment (a new configuration reaching the two nodes at different times, as it
        does all along a repair) is not silence."""
        now = time.monotonic()
        quiet: list[str] = []
        for follower in self._slots.follower_nodes():
            link = self._link(follower)
            refusing = link.refusing_since and now - link.refusing_since > after_s
            lease_refused = link.refused and now - min(link.refused.values()) > after_s
            if refusing or lease_refused or now - max(link.last_ok, link.since) > after_s:
                quiet.append(follower)
        return quiet

    async def replicate(self, encoded: Mapping[int, bytes]) -> set[int]:
        """Ship one cycle's entries (slot -> its entry, `encode`d); return once every follower
        of each slot's current configuration has them, with the slots that failed (this node
        is no longer their primary)."""
        pending = dict(encoded)
        failed: set[int] = set()
        acked: dict[int, set[str]] = {slot: set() for slot in pending}
        attempt = 0
        while True:
            needs: dict[str, list[int]] = {}
            for slot in list(pending):
                entry = self._slots[slot]
                if not entry.owned:
                    failed.add(slot)  # failed over: its outcome is the new primary's to tell
                    del pending[slot]
                    continue
                missing = [f for f in entry.followers if f not in acked[slot]]
                if not missing:
                    del pending[slot]
                    continue
                for follower in missing:
                    needs.setdefault(follower, []).append(slot)
            if not pending:
                return failed
            if self._stopping.is_set() and attempt:
                # The node stops and a follower did not answer: nobody is answered OK for what
                # its followers may not have (the cycle is shipped again at the next start).
                return failed | set(pending)
            results = await asyncio.gather(
                *(self._call(follower, slots, b"".join(pending[s] for s in slots)) for follower, slots in needs.items())
            )
            for (follower, slots), ok in zip(needs.items(), results, strict=True):
                if ok:
                    for slot in slots:
                        acked[slot].add(follower)
            if not all(results):
                metrics.replication_retries.inc()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(serving.backoff_s(min(attempt, 6), 0.01, 0.25)):
                        await self._stopping.wait()
                attempt += 1

    @staticmethod
    def encode(by_slot: Mapping[int, tuple[int, int, list[Op]]]) -> dict[int, bytes]:
        """Each slot's entry (slot -> (epoch, seq, ops)) as the bytes of a ReplicateRequest that
        holds just it: requests are these joined (a message's encodings concatenated are the
        message with their repeated fields joined), so each entry is encoded once a cycle."""
        encoded: dict[int, bytes] = {}
        for slot, (epoch, seq, ops) in by_slot.items():
            request = node_pb2.ReplicateRequest()
            entry = request.entries.add(slot=slot, epoch=epoch, seq=seq)
            for key, value in ops:
                if value is None:
                    entry.ops.add(key=key, deleted=True)
                else:
                    entry.ops.add(key=key, value=value)
            encoded[slot] = request.SerializeToString()
        return encoded

    @staticmethod
    def record(encoded: Mapping[int, bytes]) -> bytes:
        """The cycle's entries as kept in its own batch (keys.REPLICATING): a primary that stops
        or crashes before its followers have them ships them again when it starts (1b)."""
        return b"".join(encoded.values())

    def unfinished(self, record: bytes | None) -> dict[int, bytes]:
        """The recorded cycle's entries still to ship at startup (`encode`d): those of slots this
        node still leads with followers, where the entry is still the slot's latest batch (a
        later one means this one was acknowledged)."""
        if not record:
            return {}
        request = node_pb2.ReplicateRequest.FromString(record)
        entries: dict[int, bytes] = {}
        for entry in request.entries:
            slot = self._slots[entry.slot]
            if slot.owned and slot.followers and (slot.seq_epoch, slot.seq) == (entry.epoch, entry.seq):
                entries[entry.slot] = node_pb2.ReplicateRequest(entries=[entry]).SerializeToString()
        return entries

    async def _call(
        self, follower: str, slots: Sequence[int], entries: bytes = b"", lease: tuple[list[int], list[int]] = ([], [])
    ) -> bool:
        """One request on the follower's link: the `entries` of `slots` (`encode`d, joined) and
        the leases asked for; whether it wrote every entry. The slots whose entries it wrote and
        whose leases it granted are leased to us for a lease from the send."""
        link = self._link(follower)
        lease_slots, lease_epochs = lease
        async with link.busy:  # one request at a time on a link: the follower sees them in order
            sent = time.monotonic()
            head = node_pb2.ReplicateRequest(
                primary=self._self_address(),
                lease_ms=self.lease_ms,
                clock_ns=self._clock.last,
                lease_slots=lease_slots,
                lease_epochs=lease_epochs,
            )
            try:
                if link.stream is None:
                    link.stream = link.channel.stream_stream(
                        REPLICATE_METHOD, response_deserializer=node_pb2.ReplicateResponse.FromString
                    )()
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await link.stream.write(head.SerializeToString() + entries)
                    reply = await link.stream.read()
                if reply is grpc.aio.EOF:
                    raise ConnectionError("the follower ended the stream")
            except grpc.aio.AioRpcError as error:
                _end(link)
                self._warn(follower, f"{error.code().name}: {error.details()}")
                return False
            except (grpc.aio.UsageError, asyncio.InvalidStateError, TimeoutError, ConnectionError) as error:
                _end(link)
                self._warn(follower, repr(error))
                return False
            assert isinstance(reply, node_pb2.ReplicateResponse)
            if len(reply.results) != len(slots):
                self._warn(follower, f"{len(reply.results)} results for {len(slots)} entries")
                _end(link)
                return False
            until = sent + self.lease_s
            leases = link.leases
            for slot, result in zip(slots, reply.results, strict=True):
                if result.ok and leases.get(slot, 0.0) < until:
                    leases[slot] = until
            refused = set(reply.refused_leases)
            refused_since = link.refused
            for slot, result in zip(slots, reply.results, strict=True):
                if result.ok:
                    refused_since.pop(slot, None)
            for slot in lease_slots:
                if slot in refused:
                    refused_since.setdefault(slot, sent)
                else:
                    refused_since.pop(slot, None)
                    if leases.get(slot, 0.0) < until:
                        leases[slot] = until
            written = all(r.ok for r in reply.results)
            if not written and not link.refusing_since:
                link.refusing_since = sent
            elif written and slots:
                link.refusing_since = 0.0
            if written:
                link.last_ok = max(link.last_ok, sent)
            else:
                self._warn(follower, next(r.refusal for r in reply.results if not r.ok))
            if refused:
                self._warn(follower, f"leases refused for slots {sorted(refused)[:8]}")
            metrics.replication_round_trip_s.observe(time.monotonic() - sent)
            return written

    def _warn(self, follower: str, reason: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(follower, 0.0) >= 5.0:
            self._warned[follower] = now
            log.warning("a follower did not take a replication call", extra={"follower": follower, "reason": reason})

    def stop(self) -> None:
        """The node stops: a cycle still waiting for followers gives up (its slots fail)."""
        self._stopping.set()

    def configured(self) -> None:
        """The slot table changed: forget leases of slots a follower no longer follows from us,
        start the silence clock of new follower nodes, and call them all now (fresh leases)."""
        now = time.monotonic()
        followers = self._slots.follower_nodes()
        for follower in followers - self._followers:
            link = self._link(follower)
            link.since, link.last_ok, link.refusing_since = now, 0.0, 0.0
            link.refused.clear()
        self._followers = followers
        slots = self._slots
        self._lease_lists.clear()
        for address, link in self._links.items():
            link.leases = {
                slot: until
                for slot, until in link.leases.items()
                if slots[slot].owned and address in slots[slot].followers
            }
            link.refused = {
                slot: since
                for slot, since in link.refused.items()
                if slots[slot].owned and address in slots[slot].followers
            }
            link.last_heartbeat = 0.0
        self._wake.set()

    async def run(self) -> None:
        """Heartbeats: every lease/3, a call to each follower node asking again for the lease of
        every slot it follows from us (every REFUSED_RETRY_S while it has just refused one).
        Each follower's on its own: one that does not answer delays no other's leases."""
        interval = self.lease_s / 3
        beating: dict[str, asyncio.Task[None]] = {}
        pause = interval / 2
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._wake.wait()
                self._wake.clear()
                now = time.monotonic()
                pause = interval / 2
                for follower in self._slots.follower_nodes():
                    link = self._link(follower)
                    every = interval
                    if link.refused and now - min(link.refused.values()) < REFUSED_FRESH_S:
                        every = min(interval, REFUSED_RETRY_S)
                        pause = min(pause, REFUSED_RETRY_S)
                    if follower in beating or now - link.last_heartbeat < every:
                        continue
                    link.last_heartbeat = now
                    task = asyncio.create_task(self._heartbeat(follower))
                    beating[follower] = task
                    task.add_done_callback(functools.partial(_forget, beating, follower))
        finally:
            for task in beating.values():
                task.cancel()

    async def _heartbeat(self, follower: str) -> None:
        named = self._lease_lists.get(follower)
        if named is None:
            led = [slot for slot in self._slots if slot.owned and follower in slot.followers]
            named = self._lease_lists[follower] = ([s.number for s in led], [s.epoch for s in led])
        await self._call(follower, [], lease=named)

    async def close(self) -> None:
        for link in self._links.values():
            _end(link)
            await link.channel.close()
        self._links.clear()


def _end(link: _Link) -> None:
    """Give up the link's stream (broken, or a request not answered in time): the next request
    opens another, and carries again what this one may not have delivered."""
    if link.stream is not None:
        link.stream.cancel()
        link.stream = None


def wait_out_leases(slots: SlotTable, lease_ms: int) -> None:
    """At startup: slots this node leads that have a replicated history are served only after a
    lease x (1 + DRIFT), as after a promotion (4c): a node that restarts within a promotion's
    wait, or whose slots failed over while it was away, does not serve at once."""
    after = time.monotonic() + lease_ms / 1000 * (1 + DRIFT)
    for slot in slots:
        if slot.owned and slot.seq_epoch:
            slot.serve_after = after


def _forget(beating: dict[str, asyncio.Task[None]], follower: str, _task: asyncio.Task[None]) -> None:
    beating.pop(follower, None)


# --- the follower -----------------------------------------------------------------------------


class Replica:
    """The follower side: Node.Replicate's checks and writes, and when a promotion may serve."""

    def __init__(self, storage: Storage, slots: SlotTable, clock: Clock) -> None:
        self._storage = storage
        self._slots = slots
        self._clock = clock
        self._started = time.monotonic()
        self._last_ack: dict[str, float] = {}  # primary address -> when this node last acknowledged it
        self._lease_s: dict[str, float] = {}  # primary address -> the longest lease it asked for
        self.down: frozenset[str] = frozenset()  # nodes the map marks down (AssignSlots)

    def promotion_wait_until(self, old_primary: str) -> float:
        """The monotonic time a slot promoted here from `old_primary` may be served from."""
        last = self._last_ack.get(old_primary, self._started)
        lease = self._lease_s.get(old_primary, LEASE_MS_DEFAULT / 1000)
        return last + lease * (1 + DRIFT)

    async def apply(self, request: node_pb2.ReplicateRequest, sender: str = "") -> node_pb2.ReplicateResponse:
        """Write a call's entries durably, all or none, and grant the leases it asks for that
        this node's table agrees with (see the module's docstring). `sender`: the identity in
        the caller's certificate ("" without TLS). The write shares its fsync with others
        (node/storage.py `write_soon`); the slots' seqs advance right after it. Two calls
        with the same entry waiting at once (a stream given up while its call waits, and the
        resend on the next) both pass the checks and write the same bytes: harmless."""
        whole = self._call_refusal(request, sender)
        if whole:
            raise ReplicaRefused(whole)
        reply = node_pb2.ReplicateResponse()
        refusals = [self._refusal(request, entry) for entry in request.entries]
        if any(refusals):
            first = next(r for r in refusals if r)
            for refusal in refusals:
                reply.results.add(ok=False, refusal=refusal or f"refused with the call's other entries: {first}")
            metrics.replication_refused.inc()
            return reply
        batch = WriteBatch(raw_mode=True)
        advanced: list[tuple[int, int, int]] = []
        for entry in request.entries:
            slot = self._slots[entry.slot]
            if entry.seq > slot.seq:
                for op in entry.ops:
                    if op.deleted:
                        batch.delete(op.key)
                    else:
                        batch.put(op.key, op.value)
                batch.put(keys.seq_key(entry.slot), seq_value(entry.epoch, entry.seq))
                advanced.append((entry.slot, entry.epoch, entry.seq))
            reply.results.add(ok=True)
        raised = request.clock_ns > self._clock.last
        if raised:
            self._clock.raise_to(request.clock_ns)
            batch.put(keys.CLOCK, self._clock.last.to_bytes(8, "big"))
        if advanced or raised:
            await self._storage.write_soon(batch, functools.partial(self._advance, advanced))
        table, primary = self._slots.entries(), request.primary
        reply.refused_leases.extend(
            number
            for number, epoch in zip(request.lease_slots, request.lease_epochs, strict=True)
            if not ((slot := table[number]).following and slot.owner == primary and slot.epoch == epoch)
        )
        self._last_ack[request.primary] = time.monotonic()
        if request.lease_ms:
            self._lease_s[request.primary] = max(self._lease_s.get(request.primary, 0.0), request.lease_ms / 1000)
        return reply

    def _advance(self, advanced: list[tuple[int, int, int]]) -> None:
        """The slots' (epoch, seq) once their entries are durable."""
        for slot_number, epoch, seq in advanced:
            slot = self._slots[slot_number]
            slot.seq_epoch, slot.seq = epoch, seq

    def _call_refusal(self, request: node_pb2.ReplicateRequest, sender: str) -> str:
        """Why the whole call is refused (a peer's input, checked), or ""."""
        if request.primary in self.down:
            return f"{request.primary} is down by this node's table"
        if sender and self._slots.spiffe_ids.get(request.primary) != sender:
            known = self._slots.spiffe_ids.get(request.primary)
            return f"the caller is {sender}, but this node's table has {request.primary} as {known or 'no identity'}"
        if request.lease_ms and not LEASE_MS_MIN <= request.lease_ms <= LEASE_MS_MAX:
            return f"lease_ms {request.lease_ms} is not {LEASE_MS_MIN} to {LEASE_MS_MAX}"
        if ahead := too_far_ahead(request.clock_ns):
            return ahead
        if len(request.lease_slots) != len(request.lease_epochs):
            return f"{len(request.lease_slots)} lease_slots but {len(request.lease_epochs)} lease_epochs"
        total = self._slots.slots_total
        if any(slot >= total for slot in request.lease_slots):
            return f"lease_slots: a slot not below slots_total {total}"
        named = [entry.slot for entry in request.entries]
        if len(set(named)) != len(named):
            # Each would pass the checks against the copy as it stands, and two batches would be
            # written under one (epoch, seq): a copy unlike its primary's.
            return "entries: a slot named twice in one call"
        return ""

    def _refusal(self, request: node_pb2.ReplicateRequest, entry: node_pb2.ReplicaEntry) -> str:
        if entry.slot >= self._slots.slots_total:
            return f"slot {entry.slot} is not below slots_total {self._slots.slots_total}"
        slot = self._slots[entry.slot]
        if not slot.following:
            return f"slot {entry.slot}: this node does not follow it (state {slot.state.value})"
        if slot.owner != request.primary:
            return f"slot {entry.slot}: its primary is {slot.owner!r} at epoch {slot.epoch}, not {request.primary!r}"
        if entry.epoch > slot.epoch:
            return f"slot {entry.slot}: epoch {entry.epoch} is newer than this node's {slot.epoch}; not yet told"
        if entry.seq > slot.seq + 1:
            return f"slot {entry.slot}: seq {entry.seq} after {slot.seq} (a gap)"
        if entry.epoch < slot.seq_epoch:
            return f"slot {entry.slot}: epoch {entry.epoch} is older than this copy's last batch's {slot.seq_epoch}"
        if entry.seq <= slot.seq and (entry.seq, entry.epoch) != (slot.seq, slot.seq_epoch):
            # Not the batch this node wrote last (a resend would be): the histories differ. A
            # copy that took an old primary's last batch after a new one took over (KIP-101).
            return (
                f"slot {entry.slot}: this copy is at ({slot.seq_epoch}, {slot.seq}), the entry ({entry.epoch},"
                f" {entry.seq}): diverged"
            )
        if problem := ops_problem(entry.slot, entry.ops, self._slots.slots_total):
            return f"slot {entry.slot}: {problem}"
        return ""


class ReplicaRefused(Exception):
    """A replication call refused whole (from a node this one's table marks down)."""
