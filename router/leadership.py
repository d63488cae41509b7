"""Which router process is the controller: an election, and the lease that bounds a controller's acts.

Every router routes; exactly one at a time is the controller (DESIGN section 6a). The
protocol, for either implementation:
  campaign()   returns once this process leads. A new leader then takes office by storing
               the map with controller term + 1 (router/control.py): that term is the
               fencing token every node checks.
  leading()    whether this process may still act as the controller. False from the moment
               its lease may have lapsed, which is always before another can win: a leader
               stops acting before anyone else starts.
  lost()       returns when leadership is lost (the caller stops its controller then).
  leader()     the current leader's admin address, for forwarding ("" while there is none).
  resign()     give leadership up at once (a clean stop).

LocalLeadership: one host, one controller. An exclusive lock on `<dir>/controller.lock`,
taken at start and held for the process's life (the kernel drops it when the process dies,
kill -9 included); a second process that wants it is refused at start. Its admin address is
in `<dir>/controller.addr`. Worker processes of the same router (`--workers`) that are not
the controller never campaign: they follow.

EtcdLeadership: etcd's election recipe. Each candidate puts `<prefix>/election/<lease>`
(value: its admin address) attached to a lease of `ttl_s` that it keeps alive every ttl_s/3;
the candidate whose key has the lowest create_revision leads; the others watch the key just
before theirs and look again when it goes. The leader's lease is renewed from here: the
leader counts its lease from the moment it sent the last renewal that succeeded, and stops
leading at that moment + ttl_s - a margin, whether or not it hears from etcd (etcd expires the
lease no earlier than that moment + ttl_s, so the next leader can only win after this one has
stopped). A leader that loses its lease drops its key and campaigns again with a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from typing import IO, Protocol

from router.etcd import DELETE, Etcd, EtcdUnavailable
from serving import StartupError
from serving.files import private_dir

log = logging.getLogger("yunkai.router.leadership")

TTL_S_DEFAULT = 3
# Stop leading this long before the lease could expire at etcd (clock rates differ a little).
MARGIN_SHARE = 0.2


class Leadership(Protocol):
    admin_address: str

    async def campaign(self) -> None: ...
    def leading(self) -> bool: ...
    async def lost(self) -> None: ...
    async def leader(self) -> str: ...
    async def resign(self) -> None: ...


class LocalLeadership:
    """The controller lock of a local metastore's directory, held for the process's life."""

    def __init__(self, directory: str, admin_address: str, candidate: bool = True) -> None:
        self.directory = directory
        self.admin_address = admin_address
        self.candidate = candidate
        self._address_path = os.path.join(directory, "controller.addr")
        self._lock: IO[str] | None = None
        if candidate:
            self._lock = self._take_lock()
            _write_atomically(self._address_path, admin_address)

    def _take_lock(self) -> IO[str]:
        private_dir(self.directory)
        path = os.path.join(self.directory, "controller.lock")
        handle = open(path, "a+")  # noqa: SIM115 (held open for the process's life)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StartupError(
                f"another router (pid {holder}) is the controller of {self.directory}: a local metastore has exactly"
                " one controller, and a second one could lose acknowledged writes. To run more router processes on"
                " this host use `yunkai router --workers N`; to run routers on several hosts use"
                " --metastore etcd://HOST:PORT,... (cluster/install-etcd.sh installs etcd)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    async def campaign(self) -> None:
        if not self.candidate:
            await asyncio.Event().wait()  # a worker that follows never leads

    def leading(self) -> bool:
        return self._lock is not None

    async def lost(self) -> None:
        await asyncio.Event().wait()  # held until the process ends

    async def leader(self) -> str:
        try:
            with open(self._address_path) as handle:
                return handle.read().strip()
        except FileNotFoundError:
            return ""

    async def resign(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class EtcdLeadership:
    """etcd's election recipe over a kept-alive lease."""

    def __init__(self, etcd: Etcd, prefix: str, admin_address: str, ttl_s: int = TTL_S_DEFAULT) -> None:
        assert ttl_s >= 2, ttl_s  # etcd's own minimum TTL is about 1.5 s
        self.etcd = etcd
        self.admin_address = admin_address
        self.ttl_s = ttl_s
        self.election = f"{prefix}/election/".encode()
        self._lease = 0
        self._key = b""
        self._valid_until = 0.0  # monotonic time the lease is surely valid until
        self._lost = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    async def campaign(self) -> None:
        while True:
            try:
                await self._campaign_once()
                return
            except EtcdUnavailable as error:
                log.warning("cannot campaign: etcd unavailable; retrying", extra={"error": str(error)})
                await self._drop_lease()
                await asyncio.sleep(1.0)

    async def _campaign_once(self) -> None:
        await self._drop_lease()
        self._lost = asyncio.Event()
        sent = time.monotonic()
        self._lease = await self.etcd.grant(self.ttl_s)
        self._valid_until = sent + self.ttl_s * (1 - MARGIN_SHARE)
        # Owned here: _drop_lease cancels and awaits it; it catches its own failures and ends
        # by setting _lost, which the controller's supervisor waits on.
        self._keeper = asyncio.create_task(self._keep_alive())
        self._key = self.election + f"{self._lease:016x}".encode()
        mine = await self.etcd.put_lease(self._key, self.admin_address.encode(), self._lease)
        while not self._lost.is_set():
            candidates, revision = await self.etcd.get_prefix(self.election)
            if not any(kv.key == self._key for kv in candidates):
                raise EtcdUnavailable("this router's election key is gone (its lease expired)")
            ahead = [kv for kv in candidates if kv.create_revision < mine]
            if not ahead:
                log.info("leading", extra={"lease": f"{self._lease:x}"})
                return
            # Wait until the candidate just ahead is gone, then look again.
            await self._gone(bytes(ahead[-1].key), revision + 1)
        raise EtcdUnavailable("the lease lapsed while campaigning")

    async def _gone(self, key: bytes, start_revision: int) -> None:
        """Return once `key` is deleted, or this process's lease is lost."""
        deleted = asyncio.ensure_future(self._deleted(key, start_revision))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({deleted, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (deleted, lost):
                waiter.cancel()
            await asyncio.gather(deleted, lost, return_exceptions=True)
        if deleted.done() and not deleted.cancelled() and deleted.exception() is not None:
            raise deleted.exception()  # type: ignore[misc]

    async def _deleted(self, key: bytes, start_revision: int) -> None:
        async for event in self.etcd.watch(key, start_revision=start_revision):
            if event.type == DELETE:
                return

    async def _keep_alive(self) -> None:
        """Renew the lease every ttl/3; past its sure validity without a renewal, lost."""
        interval = self.ttl_s / 3
        while True:
            sent = time.monotonic()
            try:
                remaining = await self.etcd.keep_alive(self._lease, timeout_s=interval)
            except Exception as error:  # any failure (etcd down, a reset stream): not renewed
                remaining = -1
                log.warning("lease not renewed", extra={"error": str(error)})
            if remaining == 0:
                log.warning("the lease is gone (etcd expired it)")
                self._lost.set()
                return
            if remaining > 0:
                self._valid_until = sent + remaining * (1 - MARGIN_SHARE)
            if time.monotonic() >= self._valid_until:
                log.warning("the lease may have lapsed: stepping down")
                self._lost.set()
                return
            await asyncio.sleep(
                max(0.0, min(interval - (time.monotonic() - sent), self._valid_until - time.monotonic()))
            )

    def leading(self) -> bool:
        return bool(self._lease) and not self._lost.is_set() and time.monotonic() < self._valid_until

    async def lost(self) -> None:
        while not self._lost.is_set():
            waiting = self._valid_until - time.monotonic()
            if waiting <= 0:
                self._lost.set()
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(waiting):
                    await self._lost.wait()

    async def leader(self) -> str:
        candidates, _revision = await self.etcd.get_prefix(self.election)
        return bytes(candidates[0].value).decode() if candidates else ""

    async def resign(self) -> None:
        await self._drop_lease()

    async def _drop_lease(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        if self._lease:
            lease, self._lease = self._lease, 0
            with contextlib.suppress(Exception):  # etcd may be down: the lease then expires by itself
                await self.etcd.revoke(lease, timeout_s=1.0)
        self._valid_until = 0.0


def _write_atomically(path: str, text: str) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
