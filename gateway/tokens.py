"""OAuth2 client-credentials access tokens: JWTs signed with the deployment's token key (PyJWT).

The key is a file of 32 random bytes that every gateway process of one deployment reads
(`--token-key FILE`); the first process to find none makes it, atomically (a temporary file
linked into place, so two starting together agree on one key). A token names its app, partner,
scopes and the app's secret version, and lasts TOKEN_TTL_S. Claims follow RFC 7519 (iss, sub,
iat, exp, jti) and RFC 8693's space-separated `scope`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from gateway.registry import Client

TOKEN_TTL_S = 600
ISSUER = "yunkai-gateway"
KEY_BYTES = 32
ALGORITHM = "HS256"
LEEWAY_S = 5  # clocks of the gateway hosts may differ this much


class InvalidToken(Exception):
    """A bearer token that does not hold (the message says why, for the WWW-Authenticate header)."""


@dataclass(frozen=True)
class Claims:
    client_id: str
    partner_id: str
    scopes: frozenset[str]
    secret_version: int
    customer_ref: str = ""  # a customer's session (the HTML5 pages): only this customer's data
    page: Mapping[str, Any] | None = None  # a session's page: the product and data it applies with


def load_key(path: str) -> bytes:
    """The token key in `path`, made first if there is none."""
    file = Path(path)
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        temporary = file.with_name(f".{file.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made it first: take its key
            os.link(temporary, file)
        temporary.unlink()
    key = file.read_bytes()
    if len(key) < KEY_BYTES:
        raise ValueError(f"{path}: a token key is at least {KEY_BYTES} bytes, this file has {len(key)}")
    return key


class Tokens:
    """Issues and checks access tokens with one key."""

    def __init__(self, key: bytes, ttl_s: int = TOKEN_TTL_S) -> None:
        assert len(key) >= KEY_BYTES and ttl_s > 0
        self._key = key
        self.ttl_s = ttl_s

    def issue(self, client: Client, scopes: tuple[str, ...]) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": client.client_id,
            "partner": client.partner_id,
            "scope": " ".join(scopes),
            "sv": client.secret_version,
            "iat": now,
            "exp": now + self.ttl_s,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def issue_session(
        self, client: Client, customer_ref: str, scopes: tuple[str, ...], page: dict[str, Any], ttl_s: int
    ) -> str:
        """A customer's session token for the hosted pages: the app's, narrowed to one customer
        and `scopes`, carrying what the page shows (`page`: the partner's brand, the product, the
        application data the partner filled in)."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": client.client_id,
            "partner": client.partner_id,
            "scope": " ".join(scopes),
            "sv": client.secret_version,
            "cus": customer_ref,
            "page": page,
            "iat": now,
            "exp": now + ttl_s,
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def check(self, token: str) -> Claims:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.InvalidTokenError as error:
            raise InvalidToken(f"the token is not valid: {error}") from None
        fields = (claims.get("sub"), claims.get("partner"), claims.get("scope"), claims.get("sv"))
        if not (isinstance(fields[0], str) and isinstance(fields[1], str) and isinstance(fields[2], str)):
            raise InvalidToken("the token lacks its app, partner or scope")
        if not isinstance(fields[3], int):
            raise InvalidToken("the token lacks its secret version")
        customer, page = claims.get("cus", ""), claims.get("page")
        if not isinstance(customer, str) or (customer and not isinstance(page, dict)):
            raise InvalidToken("the token's customer session is malformed")
        return Claims(fields[0], fields[1], frozenset(fields[2].split()), fields[3], customer, page)
