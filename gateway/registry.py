"""Partners and their apps, kept as the gateway's records on the ledger (see gateway/__init__.py).

A partner's record and its apps' records sit in one slot, the partner's (`{p<pid>}`), so a
partner with its apps is one read and its list one scan of one slot. Client secrets are
kept as scrypt hashes (RFC 7914's parameters below: 16 MiB and ~40 ms a check here), and
checked with a constant-time comparison. Each process caches what it read for
REGISTRY_FRESH_S (an app, and a partner's apps for its events' deliveries): a revocation, a
rotation or a new webhook reaches every process within that.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from clients.ledger import LedgerClient
from clients.records import Conflict, Put, Records
from proto import gateway_pb2 as pb

RECORDS = "gw"  # the gateway's set of records on the ledger (clients/records.py)
PARTNER_ID = re.compile(r"[a-z0-9]{4}")
APP_NAME = re.compile(r"[a-z0-9]{1,16}")
NAME_CHARS_MAX = 64
SCOPES = ("customers", "applications", "loans", "repayments", "statements", "events")
RATE_PER_S_DEFAULT = 100
DAILY_QUOTA_DEFAULT = 1_000_000
RATE_PER_S_MAX = 100_000
REGISTRY_FRESH_S = 2.0
URL_CHARS_MAX = 512
# scrypt's cost: N = 2^14, r = 8, p = 1 (RFC 7914 section 2's interactive-login figures).
_SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}
_CACHED_MAX = 100_000
V = TypeVar("V")


class RegistryError(Exception):
    """A request the registry refuses, with a message naming what is wrong."""


class BadRegistration(RegistryError):
    pass


class NotFound(RegistryError):
    pass


class AlreadyExists(RegistryError):
    pass


@dataclass(frozen=True)
class Client:
    """An app as a token issuer and the API see it: who it is and what it may do."""

    client_id: str
    partner_id: str
    scopes: tuple[str, ...]
    rate_per_s: int
    daily_quota: int
    secret_version: int
    revoked: bool  # the app or its partner
    webhook_url: str = ""
    webhook_version: int = 0


def partner_tag(partner_id: str) -> str:
    return f"{{p{partner_id}}}"


def _partner_key(partner_id: str) -> str:
    return f"{partner_tag(partner_id)}:partner"


def _app_key(partner_id: str, app: str) -> str:
    return f"{partner_tag(partner_id)}:app:{app}"


def split_client_id(client_id: str) -> tuple[str, str] | None:
    """(partner id, app name) of a well-formed client id, else None."""
    partner_id, dot, app = client_id.partition(".")
    if not dot or not PARTNER_ID.fullmatch(partner_id) or not APP_NAME.fullmatch(app):
        return None
    return partner_id, app


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)


class _Fresh(Generic[V]):
    """What this process read at most REGISTRY_FRESH_S ago, by key (at most _CACHED_MAX keys)."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[float, V]] = {}

    def get(self, key: str) -> tuple[V] | None:
        """(the value,) if it was read recently enough, else None."""
        held = self._held.get(key)
        if held is None or time.monotonic() - held[0] >= REGISTRY_FRESH_S:
            return None
        return (held[1],)

    def put(self, key: str, value: V, read_at: float) -> None:
        """Keep `value`, as of `read_at` (time.monotonic() before the read: never fresher than it is)."""
        if len(self._held) >= _CACHED_MAX:
            self._held.clear()
        self._held[key] = (read_at, value)

    def forget(self, key: str | None = None) -> None:
        """Forget `key` (everything without one): this process changed it."""
        if key is None:
            self._held.clear()
        else:
            self._held.pop(key, None)


class Registry:
    """Partners and apps over the ledger's records."""

    def __init__(self, ledger: LedgerClient) -> None:
        self.records = Records(ledger, RECORDS)
        self._clients: _Fresh[Client | None] = _Fresh()  # client id -> its app (None: no such app)
        self._apps: _Fresh[Sequence[pb.App]] = _Fresh()  # partner id -> its apps

    # --- the operators' side (gateway/admin.py) ------------------------------------------

    async def register(self, partner_id: str, name: str) -> pb.Partner:
        if not PARTNER_ID.fullmatch(partner_id):
            raise BadRegistration(f"partner_id {partner_id[:20]!r}: exactly 4 of a-z, 0-9")
        if not 0 < len(name) <= NAME_CHARS_MAX or not name.isprintable():
            raise BadRegistration(f"name: 1-{NAME_CHARS_MAX} printable characters")
        partner = pb.Partner(partner_id=partner_id, name=name, registered_unix_ms=int(time.time() * 1000))
        try:
            await self.records.commit([Put("partner", _partner_key(partner_id), partner, 0)])
        except Conflict:
            raise AlreadyExists(f"partner {partner_id} is registered already") from None
        return partner

    async def partner(self, partner_id: str) -> tuple[pb.Partner, int]:
        """The partner's record and its version; NotFound."""
        if not PARTNER_ID.fullmatch(partner_id):
            raise NotFound(f"partner_id {partner_id[:20]!r}: no such partner (ids are 4 of a-z, 0-9)")
        [found] = await self.records.read([("partner", _partner_key(partner_id))])
        if found is None:
            raise NotFound(f"partner {partner_id}: not registered")
        return pb.Partner.FromString(found.value), found.version

    async def apps(self, partner_id: str) -> list[tuple[pb.StoredApp, int]]:
        """Every app of a partner, with each record's version."""
        tag = partner_tag(partner_id)
        slot = await self.records.slot_of(tag)
        found: list[tuple[pb.StoredApp, int]] = []
        async for page in self.records.scan("app", [slot], prefix=f"{tag}:app:"):
            found += [(pb.StoredApp.FromString(r.value), r.version) for r in page]
        return found

    async def list(self) -> list[pb.Partner]:
        partners: list[pb.Partner] = []
        async for page in self.records.scan("partner"):
            partners += [pb.Partner.FromString(r.value) for r in page]
        for partner in partners:
            partner.apps.extend(stored.app for stored, _v in await self.apps(partner.partner_id))
        return sorted(partners, key=lambda p: p.partner_id)

    async def add_app(self, request: pb.AddAppRequest) -> pb.AppCredentials:
        partner, _version = await self.partner(request.partner_id)
        if partner.revoked:
            raise BadRegistration(f"partner {partner.partner_id} is revoked")
        if not APP_NAME.fullmatch(request.app):
            raise BadRegistration(f"app {request.app[:20]!r}: 1-16 of a-z, 0-9")
        unknown = sorted(set(request.scopes) - set(SCOPES))
        if not request.scopes or unknown:
            raise BadRegistration(f"scopes: at least one of {', '.join(SCOPES)} (not {unknown[:3]})")
        if request.rate_per_s > RATE_PER_S_MAX:
            raise BadRegistration(f"rate_per_s {request.rate_per_s}: at most {RATE_PER_S_MAX}")
        app = pb.App(
            client_id=f"{partner.partner_id}.{request.app}",
            scopes=sorted(set(request.scopes)),
            rate_per_s=request.rate_per_s or RATE_PER_S_DEFAULT,
            daily_quota=request.daily_quota or DAILY_QUOTA_DEFAULT,
            secret_version=1,
        )
        secret, stored = _with_secret(app)
        try:
            await self.records.commit([Put("app", _app_key(partner.partner_id, request.app), stored, 0)])
        except Conflict:
            raise AlreadyExists(f"app {app.client_id} exists already (rotate-secret gives it a new secret)") from None
        self._apps.forget(partner.partner_id)
        return pb.AppCredentials(app=app, client_secret=secret)

    async def rotate(self, client_id: str) -> pb.AppCredentials:
        stored, version = await self._stored(client_id)
        if stored.app.revoked:
            raise BadRegistration(f"app {client_id} is revoked")
        app = pb.App()
        app.CopyFrom(stored.app)
        app.secret_version += 1
        secret, fresh = _with_secret(app)
        partner_id, name = client_id.split(".")
        await self.records.commit([Put("app", _app_key(partner_id, name), fresh, version)])
        self._clients.forget(client_id)
        self._apps.forget(partner_id)
        return pb.AppCredentials(app=app, client_secret=secret)

    async def set_webhook(self, client_id: str, url: str) -> pb.App:
        """Where the app's webhooks go ("" none), its signing secret's version one more."""
        loopback = url.startswith(("http://127.0.0.1:", "http://localhost:"))  # a sandbox's own receiver
        if (url and not (url.startswith("https://") or loopback)) or len(url) > URL_CHARS_MAX:
            raise BadRegistration(f"url {url[:60]!r}: an https:// URL of at most {URL_CHARS_MAX} characters")
        stored, version = await self._stored(client_id)
        if stored.app.revoked:
            raise BadRegistration(f"app {client_id} is revoked")
        stored.app.webhook_url = url
        stored.app.webhook_version += 1
        partner_id, name = client_id.split(".")
        await self.records.commit([Put("app", _app_key(partner_id, name), stored, version)])
        self._clients.forget(client_id)
        self._apps.forget(partner_id)
        return stored.app

    async def revoke(self, identifier: str) -> int:
        """Revoke an app (a client id) or a partner and every app of it; the apps revoked now."""
        if split_client_id(identifier) is not None:
            stored, version = await self._stored(identifier)
            targets = [(stored, version)]
        else:
            partner, version = await self.partner(identifier)
            targets = await self.apps(identifier)
            if not partner.revoked:
                partner.revoked = True
                await self.records.commit([Put("partner", _partner_key(identifier), partner, version)])
        revoked = 0
        for stored, version in targets:
            if stored.app.revoked:
                continue
            stored.app.revoked = True
            partner_id, name = stored.app.client_id.split(".")
            await self.records.commit([Put("app", _app_key(partner_id, name), stored, version)])
            revoked += 1
        self._clients.forget()
        self._apps.forget()
        return revoked

    async def _stored(self, client_id: str) -> tuple[pb.StoredApp, int]:
        split = split_client_id(client_id)
        if split is None:
            raise NotFound(f"client_id {client_id[:40]!r}: no such app (client ids are <partner>.<app>)")
        [found] = await self.records.read([("app", _app_key(*split))])
        if found is None:
            raise NotFound(f"app {client_id}: not registered")
        return pb.StoredApp.FromString(found.value), found.version

    # --- the API's side --------------------------------------------------------------------

    async def authenticate(self, client_id: str, secret: str) -> Client | None:
        """The app whose id and secret these are (revoked or not), or None: no such app, or
        the secret is not its current one."""
        stored, partner = await self._app_and_partner(client_id)
        # scrypt off the event loop (~40 ms of a core), and for an unknown client id too, so the
        # answer's time does not tell whether the id exists.
        hashed = await asyncio.to_thread(_hash, secret, (stored or _NOBODY).secret_salt)
        if stored is None or partner is None or not hmac.compare_digest(hashed, stored.secret_scrypt):
            return None
        return _client(stored.app, partner)

    async def apps_fresh(self, partner_id: str) -> Sequence[pb.App]:
        """The partner's apps as the registry held them at most REGISTRY_FRESH_S ago (an event's
        deliveries: gateway/webhooks.py), without a scan of its slot on every write."""
        read_at = time.monotonic()
        cached = self._apps.get(partner_id)
        if cached is not None:
            return cached[0]
        apps = [stored.app for stored, _version in await self.apps(partner_id)]
        self._apps.put(partner_id, apps, read_at)
        return apps

    async def client(self, client_id: str) -> Client | None:
        """The app as the registry held it at most REGISTRY_FRESH_S ago (None: unknown)."""
        read_at = time.monotonic()
        cached = self._clients.get(client_id)
        if cached is not None:
            return cached[0]
        stored, partner = await self._app_and_partner(client_id)
        client = _client(stored.app, partner) if stored is not None and partner is not None else None
        self._clients.put(client_id, client, read_at)
        return client

    async def _app_and_partner(self, client_id: str) -> tuple[pb.StoredApp | None, pb.Partner | None]:
        """The app's record and its partner's, in one read (None where there is none)."""
        split = split_client_id(client_id)
        if split is None:
            return None, None
        [app_record, partner_record] = await self.records.read(
            [("app", _app_key(*split)), ("partner", _partner_key(split[0]))]
        )
        return (
            None if app_record is None else pb.StoredApp.FromString(app_record.value),
            None if partner_record is None else pb.Partner.FromString(partner_record.value),
        )


_NOBODY = pb.StoredApp(secret_salt=b"\0" * 16, secret_scrypt=b"")  # compared against when no app has the id


def _with_secret(app: pb.App) -> tuple[str, pb.StoredApp]:
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    return secret, pb.StoredApp(app=app, secret_salt=salt, secret_scrypt=_hash(secret, salt))


def _client(app: pb.App, partner: pb.Partner) -> Client:
    return Client(
        client_id=app.client_id,
        partner_id=partner.partner_id,
        scopes=tuple(app.scopes),
        rate_per_s=app.rate_per_s,
        daily_quota=app.daily_quota,
        secret_version=app.secret_version,
        revoked=app.revoked or partner.revoked,
        webhook_url=app.webhook_url,
        webhook_version=app.webhook_version,
    )
