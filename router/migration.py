"""Slot moves, the controller's half: jobs (add-node, drain-node, rebalance, repair) made of
waves of slot copies, each one driven through node/slotmove.py's protocol.

A copy (a Migration) takes slot s from its primary A to a target B that takes the place of
one member: A itself (the primary moves: B serves s from the commit, A drops it), a follower
F (B follows from the commit, F drops s), or nobody (B is added as a follower: repair).
With one copy per slot every move is of the first kind. What each job copies is planned by
router/placement.py (primaries) and router/replicas.py (configurations with followers).

A wave moves up to `concurrency` slots, each from its owner A to its target B:
  1. Record. One compare-and-swap records every move of the wave in the shard map
     (`Migration{id, slot, A, B}`); a move's id is fresh for every attempt.
  2. Copy. For each move: B.PrepareImport, then A.StartExport (snapshot and catch-up;
     answered once A's change log for the slot is drained).
  3. Freeze. For each copied move: A.FreezeSlot (A holds writes to the slot, ships the tail,
     and B checks the digest and makes the staged range durable).
  4. Commit. One compare-and-swap gives each frozen slot its new configuration (B in the
     replaced member's place) at epoch + 1 and forgets every move of the wave (the ones that
     failed are aborted by it). This swap is the single point of truth: before it, a move
     aborts; after it, it only rolls forward. The change is published to the slots' members
     first, then to every node (a delta): a moved primary A answers the writes it held with
     WRONG_SLOT naming B, which serves; a primary that stays thaws and replicates to B too.
  5. Abort. For each move that failed: AbortMove to A (unfreeze) and B (drop the staged
     range), only after step 4 recorded it. A node that misses it is told by reconcile.
A failed move is tried again in a later wave with a new id, at most ATTEMPTS_MAX times; then
the job gives it up and goes on with every other copy, and fails at its end naming the copies
it gave up and why (one slot's problem, a copy its target refuses, never holds up the rest;
an operator runs add-node, drain-node or rebalance again to retry them). A drain-node whose
plan is done while its node still holds copies (a failover meanwhile changed the configurations
it was planned from) plans again, at most DRAIN_ROUNDS_MAX times, then fails saying so: a node
leaves the map only once it is a member of no slot. A repair also sets
their slots aside: it plans them again only after a back-off (`repair_retry_s`, doubling with
each repair that gave up on the slot, at most REPAIR_RETRY_S_MAX), so a slot that cannot be
copied neither restarts a repair every REPAIR_CHECK_S nor keeps operators' jobs waiting; the
back-off is this controller's alone (a new controller tries at once).
Each slot's freeze pause (from step 3 until its source and target have the commit; the
other nodes get it right after) is recorded for the job's report.

Jobs run one at a time, in the controller's router (whether one runs is checked inside the
swap that records a new one: JobRunning). Each job's record (kind, node, state,
progress) lives in the shard map and rides the swaps that make its progress, so every
router's Status shows it, and a new controller (after a restart, or another router's
election) aborts the moves that were in flight (router/controller.py) and resumes the
running job: its plan is computed again from the map as it stands.

Fault points, for the crash tests: with YUNKAI_MOVE_PAUSE_AT set to `recorded`, `copied`,
`frozen` or `committed` (the commit stored, not yet published), the first wave that
reaches that point logs "paused at a fault point" and sleeps YUNKAI_MOVE_PAUSE_S seconds,
so that a test can kill a process exactly there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from proto import cluster_pb2, node_pb2
from router import metrics, placement, replicas
from router.controller import Controller, ControllerError
from router.replicas import Change
from router.shardmap import ACTIVE, DOWN, DRAINING, JOINING, LOST, STEPPED_DOWN, Migration, ShardMap

log = logging.getLogger("yunkai.router.migration")

CONCURRENCY_DEFAULT = 4  # measured: 8 moves ~20% more slots/s at a longer write pause per slot
REPAIR_CHECK_S = 2.0  # how often an idle controller looks for slots with fewer than R copies
ATTEMPTS_MAX = 5
DRAIN_ROUNDS_MAX = 3  # plans made again for what a drained node still holds (a failover meanwhile)
REPAIR_RETRY_S_DEFAULT = 30.0  # a slot a repair set aside waits this long, doubled for each such repair
REPAIR_RETRY_S_MAX = 900.0
SET_ASIDE_NAMED_MAX = 5  # slots named in a job's error; the rest are counted
COPY_TIMEOUT_S = 120.0
FREEZE_TIMEOUT_S = 10.0
PREPARE_TIMEOUT_S = 10.0
NODE_REACH_S = 10.0
PAUSE_AT_ENV = "YUNKAI_MOVE_PAUSE_AT"
PAUSE_S_ENV = "YUNKAI_MOVE_PAUSE_S"


class JobRunning(ControllerError):
    """A job is running: another is not started (an operator waits for it and asks again)."""

    def __init__(self, job: cluster_pb2.Job) -> None:
        super().__init__(f"job {job.id} ({job.kind} {job.node}) is still running; wait for it")
        self.job = job


@dataclass
class Job:
    id: str
    kind: str
    node: str
    planned: int = 0
    moved: int = 0
    aborted: int = 0
    state: int = cluster_pb2.JOB_RUNNING
    error: str = ""
    started_unix_s: float = field(default_factory=time.time)
    finished_unix_s: float = 0.0
    freeze_ms: list[float] = field(default_factory=list)

    @staticmethod
    def from_proto(record: cluster_pb2.Job) -> Job:
        """A job recorded in the map (by this controller or an earlier one)."""
        return Job(
            id=record.id,
            kind=record.kind,
            node=record.node,
            planned=record.slots_planned,
            moved=record.slots_moved,
            aborted=record.moves_aborted,
            state=record.state,
            error=record.error,
            started_unix_s=record.started_unix_s,
            finished_unix_s=record.finished_unix_s,
        )

    def to_proto(self) -> cluster_pb2.Job:
        pauses = sorted(self.freeze_ms)

        def quantile(q: float) -> float:
            return pauses[min(len(pauses) - 1, int(q * len(pauses)))] if pauses else 0.0

        return cluster_pb2.Job(
            id=self.id,
            kind=self.kind,
            node=self.node,
            state=self.state,  # type: ignore[arg-type]
            slots_planned=self.planned,
            slots_moved=self.moved,
            moves_aborted=self.aborted,
            started_unix_s=self.started_unix_s,
            finished_unix_s=self.finished_unix_s,
            error=self.error,
            freeze_ms_p50=quantile(0.5),
            freeze_ms_p99=quantile(0.99),
            freeze_ms_max=pauses[-1] if pauses else 0.0,
        )


@dataclass
class SetAside:
    """A slot a job gave up on: how many jobs did, until when repair leaves it (monotonic
    seconds), and the last refusal."""

    jobs: int
    until: float
    why: str


class Mover:
    """Runs operator jobs against the controller's map, one job at a time."""

    def __init__(
        self,
        controller: Controller,
        concurrency: int = CONCURRENCY_DEFAULT,
        repair_retry_s: float = REPAIR_RETRY_S_DEFAULT,
    ) -> None:
        assert concurrency >= 1 and repair_retry_s > 0
        self.controller = controller
        self.concurrency = concurrency
        self.repair_retry_s = repair_retry_s
        self.set_aside: dict[int, SetAside] = {}  # slot -> its back-off (repair's)
        self._why: dict[tuple[int, str], str] = {}  # (slot, target) -> why its last copy there failed
        metrics.slots_set_aside.set(0)
        self._job: Job | None = None  # the job running here
        self._queue: asyncio.Queue[Job] = asyncio.Queue()
        self._pause_at = os.environ.get(PAUSE_AT_ENV, "")
        self._pause_s = float(os.environ.get(PAUSE_S_ENV, "5"))

    async def _fault_point(self, name: str) -> None:
        if name == self._pause_at:
            self._pause_at = ""  # once per process
            log.warning("paused at a fault point", extra={"point": name, "seconds": self._pause_s})
            await asyncio.sleep(self._pause_s)

    def resume(self) -> None:
        """On taking office: run again the job an earlier controller left running."""
        record = self.controller.current().running_job()
        if record is not None:
            log.warning("resuming a job left running", extra={"job": record.id, "kind": record.kind})
            self._queue.put_nowait(Job.from_proto(record))

    # --- starting jobs ----------------------------------------------------------------------

    async def add_node(self, address: str) -> Job:
        table = await self._check_joining(address)
        return await self._start("add-node", address, table.node_id, table.spiffe_id)

    async def drain_node(self, address: str) -> Job:
        shard_map = self.controller.current()
        if address not in shard_map.nodes:
            raise ControllerError(f"{address} is not in the cluster (nodes: {', '.join(sorted(shard_map.nodes))})")
        if len(shard_map.nodes) == 1:
            raise ControllerError(f"{address} is the cluster's only node: there is nowhere to move its slots")
        if shard_map.nodes[address] == LOST:
            raise ControllerError(
                f"{address} is lost (its data directory is not there): its slots have no live copy to move"
            )
        return await self._start("drain-node", address)

    async def rebalance(self) -> Job:
        return await self._start("rebalance", "")

    async def _start(self, kind: str, node: str, node_id: str = "", spiffe_id: str = "") -> Job:
        """Record a new job and queue it; the same request as the running job reports that one.
        Whether a job runs is decided inside the swap that records the new one: a repair the
        idle loop starts while an operator's call awaits its turn (or the other way round)
        would otherwise make two running jobs (JobRunning instead)."""
        job = Job(id=uuid.uuid4().hex[:8], kind=kind, node=node)

        def record(m: ShardMap) -> ShardMap:
            running = m.running_job()
            if running is not None:
                raise JobRunning(running)
            if kind == "add-node":
                # A new node enters the map (with its id) in the swap that records the job; one
                # already there (an add-node run again) keeps its state.
                m = m.with_node(node, m.nodes.get(node, JOINING), node_id, spiffe_id=spiffe_id)
            else:
                m = m.next_version()
            return m.with_job(job.to_proto())

        try:
            await self.controller.change(record, changed=None if kind == "add-node" else [])
        except JobRunning as refused:
            if (refused.job.kind, refused.job.node) == (kind, node):
                return Job.from_proto(refused.job)  # the same request again: report the job already running
            raise
        self._queue.put_nowait(job)
        return job

    async def run(self) -> None:
        """Run queued jobs, one at a time, until cancelled (the controller's supervisor owns it).
        When idle, with replicas, start a repair job for slots with fewer than R live copies."""
        while True:
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation (gh-86296)
                async with asyncio.timeout(REPAIR_CHECK_S):
                    job = await self._queue.get()
            except TimeoutError:
                await self._repair_if_needed()
                continue
            await self._run(job)

    async def _repair_if_needed(self) -> None:
        shard_map = self.controller.current()
        if shard_map.replicas <= 1 or shard_map.running_job() is not None:
            return
        under = shard_map.under_replicated()
        for slot in set(self.set_aside) - set(under):
            del self.set_aside[slot]  # whole again (its node came back): a later loss starts afresh
        metrics.slots_set_aside.set(len(self.set_aside))
        if not under or not self._plan(Job(id="", kind="repair", node="")):
            # Nothing to do, nowhere to copy to (too few live nodes), or only slots set aside
            # and still waiting: status shows them under-replicated and the job that gave up.
            return
        log.warning("repairing", extra={"under_replicated": len(under), "set_aside": len(self.set_aside)})
        with contextlib.suppress(JobRunning):  # an operator's job was recorded first: repair waits for it
            await self._start("repair", "")

    async def _check_joining(self, address: str) -> node_pb2.GetSlotsResponse:
        """The table of the node to add (its id, its certificate's identity), after checking it may join."""
        controller = self.controller
        # The caller saw the node healthy; this process's channel to it may still be backing
        # off from an earlier connection (a node restarted at the same address): try a while.
        deadline = time.monotonic() + NODE_REACH_S
        table = await controller.node_table(address)
        while table is None and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            table = await controller.node_table(address)
        if table is None:
            raise ControllerError(f"cannot reach node {address}; is `yunkai node --join` running there?")
        if table.slots_total != controller.slots_total:
            raise ControllerError(f"node {address} has {table.slots_total} slots, the cluster {controller.slots_total}")
        shard_map = controller.current()
        owned = sum(1 for s in table.slots if s.owned)
        if address in shard_map.nodes:
            recorded = shard_map.ids.get(address, "")
            if recorded and table.node_id != recorded:
                raise ControllerError(
                    f"{address} is in the map as node {recorded}, but the process there is node {table.node_id}"
                    " (an empty or replaced data directory): it cannot take node {recorded}'s place; node"
                    f" {recorded}'s slots have no live copy until its data directory is back"
                )
            return table
        if owned or table.map_version or (table.cluster_id and table.cluster_id != shard_map.cluster_id):
            raise ControllerError(
                f"node {address} owns {owned} slots at map v{table.map_version} of another cluster or by itself;"
                " add only a new node started with --join and an empty data directory"
            )
        return table

    # --- running them -------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        self._job = job
        try:
            await self._run_job(job)
            job.state = cluster_pb2.JOB_DONE
            log.info("job done", extra={"job": job.id, "kind": job.kind, "moved": job.moved})
        except asyncio.CancelledError:
            raise  # the controller stepped down: the job stays RUNNING in the map for the next one
        except Exception as error:  # recorded for the operator; the map is consistent after any failure
            job.state, job.error = cluster_pb2.JOB_FAILED, str(error) or type(error).__name__
            log.error("job failed", extra={"job": job.id, "kind": job.kind, "error": job.error})
        finally:
            self._job = None
        job.finished_unix_s = time.time()
        with contextlib.suppress(ControllerError):  # not the controller any more: the next one finishes it
            await self.controller.change(lambda m: m.next_version().with_job(job.to_proto()), changed=[])

    async def _run_job(self, job: Job) -> None:
        controller = self.controller
        current = controller.current()
        if job.kind == "add-node" and current.nodes.get(job.node) is None:
            raise ControllerError(f"{job.node} left the map while its add-node job waited")
        if job.kind == "drain-node":
            if current.nodes.get(job.node) is None:
                return  # drained already (an earlier controller finished the moves and removed it)
            if current.nodes[job.node] not in (DRAINING, DOWN, LOST):
                await self._swap(job, lambda m: m.with_node(job.node, DRAINING), changed=[])
        plan = self._plan(job)
        job.planned = job.moved + len(plan)
        log.info("job planned", extra={"job": job.id, "kind": job.kind, "node": job.node, "slots": len(plan)})
        await self._move_all(job, plan)
        if job.kind == "drain-node":
            await self._drain_rest(job)
        if job.kind == "add-node":
            await self._swap(job, lambda m: m.with_node(job.node, ACTIVE), changed=[])
        elif job.kind == "drain-node":
            await self._swap(job, lambda m: m.without_node(job.node), changed=[])
        else:  # a node an interrupted add-node left joining has its share now
            for node, state in sorted(controller.current().nodes.items()):
                if state == JOINING:
                    await self._swap(job, functools.partial(_activate, node), changed=[])

    async def _drain_rest(self, job: Job) -> None:
        """Move the copies a drained node still holds once its plan is done: a failover while it
        drained (another node died) changes configurations the plan was made from, and can
        leave it a member of slots the plan did not name. Planned again up to DRAIN_ROUNDS_MAX
        times; the job then fails saying so (run it again), rather than remove a member."""
        rounds = 0
        while rounds < DRAIN_ROUNDS_MAX and self.controller.current().slots_with(job.node):
            plan = self._plan(job)  # raises if a copy has nowhere to go
            rounds += 1
            job.planned = job.moved + len(plan)
            log.warning("drain planned again", extra={"job": job.id, "node": job.node, "slots": len(plan)})
            await self._move_all(job, plan)
        left = self.controller.current().slots_with(job.node)
        if left:
            raise ControllerError(
                f"{job.node} still holds copies of {len(left)} slots (first: {left[:SET_ASIDE_NAMED_MAX]}) after"
                f" {rounds} more rounds of moves: configurations kept changing under it (failovers); run"
                " drain-node again"
            )

    def _plan(self, job: Job) -> list[Change]:
        """The copies the job makes: with one copy per slot, primaries placed by balanced
        rendezvous hashing (router/placement.py); with replicas, router/replicas.py's plans."""
        shard_map = self.controller.current()
        owners = list(shard_map.owners)
        dead = {a for a, state in shard_map.nodes.items() if state in (DOWN, LOST)}
        if shard_map.replicas <= 1:
            if job.kind == "add-node":
                after = placement.add_node(owners, job.node)
            elif job.kind == "drain-node":
                after = placement.remove_node(owners, job.node)
            else:
                active = sorted(
                    a for a, state in shard_map.nodes.items() if state not in (DRAINING, LOST, DOWN, STEPPED_DOWN)
                )
                after = placement.rebalance(owners, active)
            return [Change(slot, target, source) for slot, source, target in placement.moves(owners, after)]
        configs = [shard_map.config(slot) for slot in range(shard_map.slots_total)]
        # A node stepped down for a restart takes no copy until it is resumed.
        live = sorted(
            a for a, state in shard_map.nodes.items() if a not in dead and state not in (DRAINING, STEPPED_DOWN)
        )
        if job.kind == "add-node":
            return replicas.add(configs, job.node, shard_map.replicas, shard_map.zones)
        if job.kind == "drain-node":
            return replicas.drain(configs, job.node, [a for a in live if a != job.node], shard_map.zones)
        plan = replicas.repair(configs, live, shard_map.replicas, shard_map.zones, dead)  # rebalance, repair
        if job.kind == "repair":
            now = time.monotonic()
            plan = [c for c in plan if c.slot not in self.set_aside or self.set_aside[c.slot].until <= now]
        return plan

    async def _move_all(self, job: Job, plan: list[Change]) -> None:
        """Every change of `plan`, wave by wave; a change that fails ATTEMPTS_MAX times is given
        up and the rest go on; then the job fails naming what it gave up (`_give_up`)."""
        attempts: dict[tuple[int, str], int] = {}
        given_up: list[Change] = []
        todo = list(plan)
        while todo:
            wave = _one_per_slot(todo, self.concurrency)  # a slot takes one move at a time
            taken = set(wave)  # not `in wave`: a list scan per change made 4,096-slot plans quadratic
            todo = [change for change in todo if change not in taken]
            failed = await self._wave(job, wave)
            for change in failed:
                tried = attempts[(change.slot, change.target)] = attempts.get((change.slot, change.target), 0) + 1
                if tried < ATTEMPTS_MAX:
                    todo.append(change)
                else:
                    given_up.append(change)
        if given_up:
            raise ControllerError(self._give_up(job, given_up))

    def _give_up(self, job: Job, given_up: Sequence[Change]) -> str:
        """Why the job fails, naming the first few copies it gave up; a repair also sets their
        slots aside (it plans them again only after their back-off)."""
        named = "; ".join(
            f"slot {c.slot} to {c.target}" + (f" ({why})" if (why := self._why.get((c.slot, c.target))) else "")
            for c in given_up[:SET_ASIDE_NAMED_MAX]
        )
        more = f"; and {len(given_up) - SET_ASIDE_NAMED_MAX} more" if len(given_up) > SET_ASIDE_NAMED_MAX else ""
        failed = f"{len(given_up)} slot copies failed {ATTEMPTS_MAX} times each, the rest are done: {named}{more}"
        slots = sorted({c.slot for c in given_up})
        if job.kind != "repair":
            log.error("slot copies given up", extra={"job": job.id, "slots": slots})
            return f"{failed}; run the job again to retry them"
        now = time.monotonic()
        waits: list[float] = []
        for slot in slots:
            earlier = self.set_aside.get(slot)
            jobs = 1 if earlier is None else earlier.jobs + 1
            wait_s = min(REPAIR_RETRY_S_MAX, self.repair_retry_s * 2 ** (jobs - 1))
            waits.append(wait_s)
            reasons = (self._why.get((c.slot, c.target), "") for c in given_up if c.slot == slot)
            why = next((reason for reason in reasons if reason), "")
            self.set_aside[slot] = SetAside(jobs, now + wait_s, why)
        metrics.slots_set_aside.set(len(self.set_aside))
        log.error("slots set aside", extra={"job": job.id, "slots": slots, "retry_s": min(waits)})
        return f"{failed}; set aside: repair tries them again in {min(waits):.0f} s or more"

    async def _wave(self, job: Job, wave: Sequence[Change]) -> list[Change]:
        """Make up to `concurrency` copies; returns the changes that failed (aborted)."""
        controller = self.controller
        shard_map = controller.current()
        dead = {a for a, state in shard_map.nodes.items() if state in (DOWN, LOST)}
        moves = [
            Migration(uuid.uuid4().hex[:12], c.slot, shard_map.owners[c.slot], c.target, c.replaces)
            for c in wave
            if c.target not in shard_map.members(c.slot)
            and shard_map.owners[c.slot] not in dead
            and c.target not in dead
            and (not c.replaces or c.replaces in shard_map.members(c.slot))
        ]
        if not moves:
            return []
        await self._swap(job, lambda m: m.with_migrations(add=moves), changed=[])
        try:
            failed = await self._run_wave(job, moves)
        except BaseException:
            await self._abandon(moves)
            raise
        return [Change(m.slot, m.target, m.replaces) for m in failed]

    async def _abandon(self, moves: Sequence[Migration]) -> None:
        """A wave failed unexpectedly (or the controller is stopping): forget its moves that are
        still recorded, and tell the nodes, but only of moves that did not commit (their slot
        is still their source's): a committed move only rolls forward."""
        controller = self.controller
        with contextlib.suppress(Exception):
            ids = {m.id for m in moves}
            if ids & {m.id for m in controller.current().migrations}:
                await controller.change(lambda m: m.with_migrations(remove=sorted(ids)), changed=[])
            current = controller.current()
            if {m.id for m in current.migrations} & ids:
                return  # not recorded as aborted: the next controller will abort them
            for m in moves:
                if m.target not in current.members(m.slot):  # not committed
                    await asyncio.gather(
                        controller.abort_move(m.source, m.id, m.slot), controller.abort_move(m.target, m.id, m.slot)
                    )

    async def _run_wave(self, job: Job, moves: Sequence[Migration]) -> list[Migration]:
        controller = self.controller
        await self._fault_point("recorded")
        copied = await asyncio.gather(*(self._copy(m) for m in moves))
        await self._fault_point("copied")
        frozen_at: dict[str, float] = {}
        ready = [m for m, ok in zip(moves, copied, strict=True) if ok]
        frozen = await asyncio.gather(*(self._freeze(m, frozen_at) for m in ready))
        froze_at = time.perf_counter()
        committed = [m for m, ok in zip(ready, frozen, strict=True) if ok]
        await self._fault_point("frozen")
        failed = [m for m in moves if m not in committed]
        job.moved += len(committed)
        job.aborted += len(failed)
        # The commit point: owners change and the wave's moves are forgotten, in one swap.
        learned: list[float] = []  # when the wave's sources and targets had the commit

        async def stored() -> None:
            await self._fault_point("committed")

        def commit(shard_map: ShardMap) -> ShardMap:
            # Only moves the map still records, from the primary they copied: a failover may
            # have forgotten a move (and changed its slot) while the wave froze its slots.
            recorded = {m.id for m in shard_map.migrations}
            stale.extend(m for m in committed if m.id not in recorded or shard_map.owners[m.slot] != m.source)
            changes = {
                move.slot: replicas.apply(shard_map.config(move.slot), Change(move.slot, move.target, move.replaces))
                for move in committed
                if move not in stale
            }
            return shard_map.reconfigure(changes, forget=[move.id for move in moves if move.id in recorded])

        stale: list[Migration] = []
        before = controller.current()
        involved = {a for m in committed for a in (*before.members(m.slot), m.target)}
        await self._swap(
            job,
            commit,
            changed=[m.slot for m in committed],
            before_publish=stored,
            first=sorted(involved),
            after_first=lambda: learned.append(time.perf_counter()),
        )
        if stale:
            log.warning("moves forgotten while their wave froze: not committed", extra={"moves": len(stale)})
            committed = [m for m in committed if m not in stale]
            failed += stale
            job.moved -= len(stale)
            job.aborted += len(stale)
        now = learned[0] if learned else time.perf_counter()
        log.debug(
            "wave committed",
            extra={
                "slots": len(committed),
                "freeze_ms": round((froze_at - min(frozen_at.values(), default=froze_at)) * 1000, 1),
                "commit_ms": round((now - froze_at) * 1000, 1),
            },
        )
        for m in committed:
            job.freeze_ms.append((now - frozen_at[m.id]) * 1000)
            metrics.freeze_pause_s.observe(now - frozen_at[m.id])
        metrics.slots_moved_total.inc(len(committed))
        metrics.moves_aborted_total.inc(len(failed))
        for m in failed:
            await asyncio.gather(
                controller.abort_move(m.source, m.id, m.slot), controller.abort_move(m.target, m.id, m.slot)
            )
        return failed

    async def _copy(self, move: Migration) -> bool:
        controller = self.controller
        term = controller.term
        self._why.pop((move.slot, move.target), None)
        try:
            await controller.stub(move.target).PrepareImport(
                node_pb2.PrepareImportRequest(
                    migration_id=move.id, slot=move.slot, source=move.source, controller_term=term
                ),
                timeout=PREPARE_TIMEOUT_S,
            )
            await controller.stub(move.source).StartExport(
                node_pb2.StartExportRequest(
                    migration_id=move.id, slot=move.slot, target=move.target, controller_term=term
                ),
                timeout=COPY_TIMEOUT_S,
            )
            return True
        except grpc.aio.AioRpcError as error:
            log.warning("slot copy failed", extra={"slot": move.slot, "id": move.id, "error": error.details()})
            self._why[(move.slot, move.target)] = f"copy: {error.code().name}: {error.details()}"
            return False

    async def _freeze(self, move: Migration, frozen_at: dict[str, float]) -> bool:
        frozen_at[move.id] = time.perf_counter()
        try:
            await self.controller.stub(move.source).FreezeSlot(
                node_pb2.FreezeSlotRequest(migration_id=move.id, slot=move.slot, controller_term=self.controller.term),
                timeout=FREEZE_TIMEOUT_S,
            )
            return True
        except grpc.aio.AioRpcError as error:
            log.warning("slot freeze failed", extra={"slot": move.slot, "id": move.id, "error": error.details()})
            self._why[(move.slot, move.target)] = f"freeze: {error.code().name}: {error.details()}"
            return False

    async def _swap(
        self,
        job: Job,
        change: Callable[[ShardMap], ShardMap],
        changed: Sequence[int] | None,
        before_publish: Callable[[], Awaitable[None]] | None = None,
        first: Sequence[str] = (),
        after_first: Callable[[], None] | None = None,
    ) -> None:
        """A change of the map that also records the job's progress."""

        def recorded(shard_map: ShardMap) -> ShardMap:
            return change(shard_map).with_job(job.to_proto())

        await self.controller.change(recorded, changed, before_publish, first=first, after_first=after_first)


def _activate(node: str, shard_map: ShardMap) -> ShardMap:
    return shard_map.with_node(node, ACTIVE)


def _one_per_slot(plan: Sequence[Change], most: int) -> list[Change]:
    """The next wave: up to `most` changes of `plan`, in order, no two of one slot (a slot
    missing two copies gets them in two waves)."""
    wave: list[Change] = []
    slots: set[int] = set()
    for change in plan:
        if len(wave) == most:
            break
        if change.slot not in slots:
            wave.append(change)
            slots.add(change.slot)
    return wave
