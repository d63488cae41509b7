"""Durability under kill -9: SIGKILL a node again and again while clients stream transfers.

Four client threads send batches of random transfers (plain, pending, and posts/voids of
pendings the node acknowledged) to one node while the test kills it with SIGKILL at random
moments and restarts it on the same port and data directory. A request that fails with a
gRPC error has an unknown outcome; the client resends the very same batch until it gets an
answer, so idempotency decides what the retry means. Clients also replay whole batches the
node already answered, and a watcher reads every balance throughout.

Afterwards (one more kill -9 once the clients are quiet, so everything acknowledged must
survive a crash too) the test looks up every transfer id it ever sent and every account,
and proves: nothing acknowledged was lost, nothing was applied twice, replays answer
EXISTS or the original failure, and money is conserved to the unit. The load and the
checks are the bank test's (tests/bank.py), pointed at one node.
"""

from __future__ import annotations

import random
import time

import pytest

from tests.bank import BankRun, Load, Stub, single_node_accounts
from tests.conftest import start_node

pytestmark = pytest.mark.timeout(300)

ACCOUNTS = 40
FUNDING = 20_000  # what the bank credits every account before the load starts
CLIENTS = 4
KILLS_UNDER_LOAD = 6
LOAD_AFTER_LAST_RESTART_S = 1.0


def test_kill_9_loses_no_acknowledged_transfer_and_conserves_money(tmp_path_factory: pytest.TempPathFactory) -> None:
    seed = random.randrange(1 << 32)
    node = start_node(tmp_path_factory)
    kills = 0

    def kill_and_restart(rng: random.Random, pause_s_max: float) -> None:
        nonlocal kills
        node.process.kill()
        kills += 1
        time.sleep(rng.uniform(0.0, pause_s_max))
        node.process.start()  # same port and data dir; raises with the log tail if it fails

    def chaos(rng: random.Random) -> None:
        for _ in range(KILLS_UNDER_LOAD):
            time.sleep(rng.uniform(0.2, 1.5))
            kill_and_restart(rng, 0.2)

    def crash_when_idle(rng: random.Random) -> None:
        # Everything acknowledged so far must also survive one more crash, taken while idle.
        kill_and_restart(rng, 0.0)
        node.reconnect()

    try:
        address = node.process.address
        run = BankRun(
            address=address,
            accounts=single_node_accounts(ACCOUNTS, FUNDING),
            transports=[Stub(address) for _ in range(CLIENTS)],
            watchers=[Stub(address)],
            seed=seed,
            load=Load(batch_events_max=50, amount_max=500, give_up_s=90.0),
            chaos=chaos,
            load_after_chaos_s=LOAD_AFTER_LAST_RESTART_S,
            after_load=crash_when_idle,
        )
        report = run.run()
        print(f"kills={kills}")
        assert kills >= 5
        assert not report.problems, report.explain(f"node log tail:\n{node.process.log_tail(40)}")
    finally:
        node.close()
        code = node.process.stop()
    assert code == 0, f"the node did not stop cleanly ({code}):\n{node.process.log_tail()}"
