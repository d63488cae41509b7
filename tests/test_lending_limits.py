"""Unified credit limits on a real cluster (a router and two nodes): never exceeded, journaled, retry-safe."""

from __future__ import annotations

import asyncio
import random

import pytest

from clients.ledger import LedgerClient, ResultCode, Transfer, TransferFlags, TransferState
from cluster.commands import LocalCluster
from lending.limits import RESERVE_TIMEOUT_S, BadLimitRequest, Code, CreditLimits, Level, LevelView
from tests.conftest import fresh

CNY = 156


def customer_id() -> str:
    return fresh("c").replace("-", "")


async def open_customer(limits: CreditLimits, limit: int, products: dict[str, int]) -> str:
    customer = customer_id()
    results = await limits.open(customer, list(products))
    assert all(r.ok for r in results), results
    assert (await limits.raise_limit(customer, None, limit, f"grant-{customer}")).ok
    for product, amount in products.items():
        assert (await limits.raise_limit(customer, product, amount, f"grant-{customer}-{product}")).ok
    return customer


def run(cluster: LocalCluster, scenario: object) -> None:
    async def main() -> None:
        async with await LedgerClient.connect(cluster.address) as ledger:
            await scenario(CreditLimits(ledger, CNY))  # type: ignore[operator]

    asyncio.run(main())


def test_concurrent_drawdowns_never_exceed_the_customer_limit_or_a_product_sub_limit(cluster: LocalCluster) -> None:
    async def scenario(limits: CreditLimits) -> None:
        # Three customers (so more than one slot, likely both nodes), each asking for about
        # three times their limit at once, in random amounts, under two products.
        customers = [await open_customer(limits, 100_000, {"SME-A": 70_000, "SME-B": 60_000}) for _ in range(3)]
        rng = random.Random(7)
        asks = [
            (c, rng.choice(["SME-A", "SME-B"]), rng.randint(1_000, 9_000), f"d{i}")
            for c in customers
            for i in range(60)
        ]
        outcomes = await asyncio.gather(*(limits.consume(c, p, amount, op) for c, p, amount, op in asks))
        assert {o.code for o in outcomes} == {ResultCode.OK, ResultCode.EXCEEDS_CREDITS}
        for customer in customers:
            granted = {
                (c, p, amount) for (c, p, amount, _), o in zip(asks, outcomes, strict=True) if o.ok and c == customer
            }
            drawn = sum(amount for _, _, amount in granted)
            assert drawn <= 100_000
            assert await limits.view(customer) == LevelView(100_000, drawn, 0, 100_000 - drawn, False)
            for product, sub_limit in (("SME-A", 70_000), ("SME-B", 60_000)):
                under = sum(amount for _, p, amount in granted if p == product)
                assert under <= sub_limit
                assert await limits.view(customer, product) == LevelView(sub_limit, under, 0, sub_limit - under, False)

    run(cluster, scenario)


def test_a_retried_drawdown_consumes_once_and_a_refused_one_keeps_its_reason(cluster: LocalCluster) -> None:
    async def scenario(limits: CreditLimits) -> None:
        customer = await open_customer(limits, 10_000, {"SME-A": 8_000})
        for _ in range(3):
            assert (await limits.consume(customer, "SME-A", 6_000, "draw-1")).ok
        assert (await limits.view(customer)).used == 6_000
        for _ in range(2):
            refused = await limits.consume(customer, "SME-A", 3_000, "draw-2")  # 6,000 + 3,000 > 8,000
            assert refused.code is ResultCode.EXCEEDS_CREDITS
        assert await limits.view(customer, "SME-A") == LevelView(8_000, 6_000, 0, 2_000, False)
        assert await limits.view(customer) == LevelView(10_000, 6_000, 0, 4_000, False)
        # The same op with another amount is a different request: refused, nothing moves.
        different = await limits.consume(customer, "SME-A", 1, "draw-1")
        assert different.code is ResultCode.EXISTS_WITH_DIFFERENT_FIELDS
        assert (await limits.view(customer)).used == 6_000

    run(cluster, scenario)


def test_repayments_restore_both_limits(cluster: LocalCluster) -> None:
    async def scenario(limits: CreditLimits) -> None:
        customer = await open_customer(limits, 10_000, {"SME-A": 10_000, "SME-B": 10_000})
        assert (await limits.consume(customer, "SME-A", 7_000, "draw-a")).ok
        assert (await limits.consume(customer, "SME-B", 4_000, "draw-b")).code is ResultCode.EXCEEDS_CREDITS
        for _ in range(2):  # a replayed repayment restores once
            assert (await limits.restore(customer, "SME-A", 5_000, "repay-a")).ok
        assert await limits.view(customer) == LevelView(10_000, 2_000, 0, 8_000, False)
        assert await limits.view(customer, "SME-A") == LevelView(10_000, 2_000, 0, 8_000, False)
        assert (await limits.consume(customer, "SME-B", 4_000, "draw-b2")).ok

    run(cluster, scenario)


def test_freezing_stops_drawdowns_at_its_level_but_repayments_still_restore(cluster: LocalCluster) -> None:
    async def scenario(limits: CreditLimits) -> None:
        customer = await open_customer(limits, 20_000, {"SME-A": 10_000, "SME-B": 10_000})
        assert (await limits.consume(customer, "SME-A", 5_000, "before")).ok
        assert (await limits.freeze(customer, "SME-A", "risk-1")).ok
        assert (await limits.freeze(customer, "SME-A", "risk-1")).ok  # a replay
        frozen = await limits.consume(customer, "SME-A", 1_000, "during")
        assert frozen.code is ResultCode.CREDIT_ACCOUNT_FROZEN
        assert (await limits.consume(customer, "SME-B", 1_000, "other")).ok  # only SME-A is frozen
        assert (await limits.restore(customer, "SME-A", 5_000, "repaid")).ok
        assert await limits.view(customer, "SME-A") == LevelView(10_000, 0, 0, 10_000, True)
        assert await limits.view(customer) == LevelView(20_000, 1_000, 0, 19_000, False)
        assert (await limits.freeze(customer, "SME-A", "risk-2", frozen=False)).ok
        assert (await limits.consume(customer, "SME-A", 1_000, "after")).ok
        # The customer level stops every product.
        assert (await limits.freeze(customer, None, "risk-3")).ok
        for product in ("SME-A", "SME-B"):
            assert (await limits.consume(customer, product, 1, f"x-{product}")).code is ResultCode.CREDIT_ACCOUNT_FROZEN
        assert (await limits.view(customer)).reserved == 0 and (await limits.view(customer)).frozen

    run(cluster, scenario)


def test_raising_and_lowering_is_journaled_and_never_takes_away_what_is_drawn(cluster: LocalCluster) -> None:
    async def scenario(limits: CreditLimits) -> None:
        customer = await open_customer(limits, 10_000, {"SME-A": 10_000})
        assert (await limits.consume(customer, "SME-A", 6_000, "draw")).ok
        refused = await limits.lower_limit(customer, None, 4_001, "cut-1")
        assert refused.code is ResultCode.EXCEEDS_CREDITS
        assert await limits.view(customer) == LevelView(10_000, 6_000, 0, 4_000, False)
        assert (await limits.lower_limit(customer, None, 4_000, "cut-2")).ok
        assert (await limits.raise_limit(customer, "SME-A", 5_000, "up-1")).ok
        assert (await limits.raise_limit(customer, "SME-A", 5_000, "up-1")).ok  # a replay
        assert await limits.view(customer) == LevelView(6_000, 6_000, 0, 0, False)
        assert await limits.view(customer, "SME-A") == LevelView(15_000, 6_000, 0, 9_000, False)
        assert await limits.granted(customer, "SME-A") == (6_000, 15_000)  # the views' in one read
        assert await limits.granted(customer, "SME-B") == (6_000, 0)  # a level not open yet
        page = await limits.ledger.get_account_transfers(Level(customer, None).limit)
        ids = [t.id for t in page.transfers]
        assert ids[0] == f"grant-{customer}:raise" and "cut-2:lower" in ids and "draw:c" in ids
        # The refused cut is recorded too (by its id, not in the history of balance changes).
        [refused_cut] = await limits.ledger.lookup_transfers([(Level(customer, None).limit, "cut-1:lower")])
        assert refused_cut is not None and (refused_cut.state, refused_cut.result) == (
            TransferState.REJECTED,
            ResultCode.EXCEEDS_CREDITS,
        )

    run(cluster, scenario)


def test_a_drawdown_left_half_posted_is_given_back_when_retried(cluster: LocalCluster) -> None:
    # What a crash between the two posts would leave (the posts go in one batch, so this
    # needs a leg to expire in between): the customer leg posted, the product leg gone.
    async def scenario(limits: CreditLimits) -> None:
        customer = await open_customer(limits, 10_000, {"SME-A": 10_000})
        levels = [Level(customer, None), Level(customer, "SME-A")]
        legs = [
            Transfer(
                f"half:{tag}",
                lv.limit,
                lv.drawn,
                3_000,
                limits.book,
                Code.CONSUME,
                TransferFlags.PENDING,
                timeout_s=RESERVE_TIMEOUT_S,
            )
            for tag, lv in zip("cp", levels, strict=True)
        ]
        assert all(r.ok for r in await limits.ledger.create_transfers(legs))
        resolutions = [
            Transfer("half:c:post", levels[0].limit, pending_id="half:c", flags=TransferFlags.POST_PENDING),
            Transfer("half:p:void", levels[1].limit, pending_id="half:p", flags=TransferFlags.VOID_PENDING),
        ]
        assert all(r.ok for r in await limits.ledger.create_transfers(resolutions))
        assert (await limits.view(customer)).used == 3_000
        retried = await limits.consume(customer, "SME-A", 3_000, "half")
        assert retried.code is ResultCode.PENDING_TRANSFER_ALREADY_VOIDED
        assert await limits.view(customer) == LevelView(10_000, 0, 0, 10_000, False)
        assert await limits.view(customer, "SME-A") == LevelView(10_000, 0, 0, 10_000, False)
        assert (await limits.consume(customer, "SME-A", 3_000, "half")).code is retried.code  # and stays so
        assert (await limits.view(customer)).used == 0

    run(cluster, scenario)


def test_bad_limit_requests_name_the_parameter(cluster: LocalCluster) -> None:
    async def scenario(limits: CreditLimits) -> None:
        customer = await open_customer(limits, 1_000, {"SME-A": 1_000})
        cases = [
            (limits.consume(customer, "SME-A", 0, "z"), "amount: 0 must be positive"),
            (limits.consume(customer, "sme a", 1, "z"), "product: 'sme a' is not a product code"),
            (limits.consume("c/1", "SME-A", 1, "z"), "customer: 'c/1' is not 1-20 letters and digits"),
            (limits.raise_limit(customer, None, 1, "has space"), "op: 'has space' is not 1-40 characters"),
            (limits.view(customer_id()), "customer: "),
        ]
        for call, message in cases:
            with pytest.raises(BadLimitRequest, match="^" + message.replace("(", r"\(")):
                await call
        assert await limits.view(customer) == LevelView(1_000, 0, 0, 1_000, False)

    run(cluster, scenario)
