"""Per-app rates and daily quotas, counted with the `limits` library in a store the gateway
processes of one port share (Redis: `--quota-store async+redis://HOST:PORT`; `memory://`
counts in the process only, enough for one process).

Two windows an app: RATE (its rate_per_s in a moving window of one second, so a burst at a
window's edge cannot double it) and DAY (its daily_quota in a fixed window of 24 hours from
the window's first call: a day's quota, not a calendar day's). A call takes one from each; one
over either is refused with the seconds until the window lets it through. The token endpoint
counts its attempts too, per client id and per address (`take_token_attempt`).
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, RateLimitItemPerDay, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter
from limits.storage import storage_from_string

from gateway.registry import Client

QUOTA_STORE_DEFAULT = "memory://"
# Attempts at the token endpoint (each checks a secret with scrypt): a minute's, per client id
# and per address, so that nobody can guess secrets or spend the gateway's CPU on them.
TOKEN_ATTEMPTS_PER_CLIENT_MINUTE = 30
TOKEN_ATTEMPTS_PER_ADDRESS_MINUTE = 120


class QuotaStoreDown(Exception):
    """The shared store does not answer: calls are refused rather than counted nowhere."""


class Quotas:
    def __init__(self, uri: str = QUOTA_STORE_DEFAULT) -> None:
        self.uri = uri
        storage = storage_from_string(uri if uri.startswith("async+") else f"async+{uri}", key_prefix="yunkai-gw")
        assert isinstance(storage, Storage), storage
        self._storage = storage
        self._rate = MovingWindowRateLimiter(self._storage)
        self._day = FixedWindowRateLimiter(self._storage)

    async def take(self, client: Client) -> tuple[str, int] | None:
        """Count one call of `client`: None if it is within both windows, else which window
        refused it ("rate" or "day") and the seconds to wait."""
        rate = RateLimitItemPerSecond(client.rate_per_s)
        day = RateLimitItemPerDay(client.daily_quota)
        try:
            if not await self._rate.hit(rate, client.client_id):
                return "rate", await self._wait_s(self._rate, rate, client.client_id)
            if not await self._day.hit(day, client.client_id):
                return "day", await self._wait_s(self._day, day, client.client_id)
        except Exception as error:  # the store's client raises its own kinds: any of them means down
            raise QuotaStoreDown(f"the quota store {self.uri} did not answer: {error!r}") from error
        return None

    async def take_token_attempt(self, client_id: str, address: str) -> int | None:
        """Count one token request: None if within both bounds, else the seconds to wait."""
        per_client = RateLimitItemPerMinute(TOKEN_ATTEMPTS_PER_CLIENT_MINUTE)
        per_address = RateLimitItemPerMinute(TOKEN_ATTEMPTS_PER_ADDRESS_MINUTE)
        try:
            for item, name in ((per_client, f"token:{client_id[:64]}"), (per_address, f"token@{address}")):
                if not await self._day.hit(item, name):
                    return await self._wait_s(self._day, item, name)
        except Exception as error:
            raise QuotaStoreDown(f"the quota store {self.uri} did not answer: {error!r}") from error
        return None

    @staticmethod
    async def _wait_s(
        limiter: MovingWindowRateLimiter | FixedWindowRateLimiter, item: RateLimitItem, client_id: str
    ) -> int:
        stats = await limiter.get_window_stats(item, client_id)
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def check(self) -> None:
        """At start: the store answers (else QuotaStoreDown)."""
        try:
            if not await self._storage.check():
                raise QuotaStoreDown(f"the quota store {self.uri} does not answer")
        except QuotaStoreDown:
            raise
        except Exception as error:
            raise QuotaStoreDown(f"the quota store {self.uri} does not answer: {error!r}") from error
