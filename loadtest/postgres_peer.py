"""The PostgreSQL peer of `yunkai bench --peer postgres`: the ledger a user would otherwise build.

A double-entry ledger on PostgreSQL as the textbook writes it:

    accounts(id text primary key, debits_posted bigint, credits_posted bigint)
    transfers(id text primary key, debit text, credit text, amount bigint)

and one transfer is one transaction: lock both accounts with `SELECT ... FOR UPDATE` in id
order (so two transfers between the same accounts cannot deadlock), update both, insert the
transfer, commit with `synchronous_commit = on` (the commit waits for its WAL fsync, as
yunkai acknowledges nothing before its fsync). The load is the write scenario's: the same
customers, the same drawdowns and repayments, the same open-loop rate, over psycopg 3 with
a connection pool per driver process.

`PostgresServer` runs a throwaway cluster (`initdb`, `pg_ctl`) in a temporary directory on a
loopback port, as the `postgres` user when we are root (PostgreSQL refuses to run as root).
It needs the server binaries: `cluster/install-postgres.sh` installs them on Debian.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Any

from cluster.local import free_port
from loadtest.workloads import Chooser, Plan, deposit, loan

SCHEMA = """
CREATE TABLE accounts (id text PRIMARY KEY, debits_posted bigint NOT NULL, credits_posted bigint NOT NULL);
CREATE TABLE transfers (id text PRIMARY KEY, debit text NOT NULL, credit text NOT NULL, amount bigint NOT NULL);
"""


def binaries() -> str | None:
    """The newest PostgreSQL server's bin directory, or None when none is installed."""
    versions = [p.split("/")[4] for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    if versions:
        newest = max(versions, key=lambda v: int(v) if v.isdigit() else 0)
        return f"/usr/lib/postgresql/{newest}/bin"
    pg_ctl = shutil.which("pg_ctl")
    return os.path.dirname(os.path.realpath(pg_ctl)) if pg_ctl else None


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1, deleted on stop."""

    def __init__(self, bin_dir: str) -> None:
        self.bin_dir = bin_dir
        self.directory = tempfile.mkdtemp(prefix="yunkai-bench-pg-")
        self.data_dir = os.path.join(self.directory, "data")
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse root
            self.user = "postgres"
            account = pwd.getpwnam(self.user)
            os.chown(self.directory, account.pw_uid, account.pw_gid)
        self.started = False

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=postgres user=yunkai"

    def _run(self, *command: str) -> None:
        subprocess.run(
            [os.path.join(self.bin_dir, command[0]), *command[1:]],
            check=True,
            cwd=self.directory,
            user=self.user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", self.data_dir, "-U", "yunkai", "--auth=trust", "-E", "UTF8")
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=300"
            " -c synchronous_commit=on -c fsync=on -c shared_buffers=256MB"
        )
        log = os.path.join(self.directory, "postgres.log")
        self._run("pg_ctl", "-D", self.data_dir, "-l", log, "-o", options, "-w", "start")
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "stop")
            self.started = False
        shutil.rmtree(self.directory, ignore_errors=True)


def create_ledger(conninfo: str, run: str, customers: int) -> None:
    """The schema and every customer's two accounts."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS transfers, accounts")
        for statement in filter(str.strip, SCHEMA.split(";")):
            connection.execute(statement)
        with connection.cursor().copy("COPY accounts (id, debits_posted, credits_posted) FROM STDIN") as copy:
            for c in range(customers):
                copy.write_row((deposit(run, c), 0, 0))
                copy.write_row((loan(run, c), 0, 0))


def totals(conninfo: str) -> tuple[int, int, int]:
    """(Σ debits_posted, Σ credits_posted, transfers): a check that the peer did the work."""
    import psycopg

    with psycopg.connect(conninfo) as connection:
        row = connection.execute(
            "SELECT (SELECT coalesce(sum(debits_posted), 0) FROM accounts),"
            " (SELECT coalesce(sum(credits_posted), 0) FROM accounts), (SELECT count(*) FROM transfers)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


class PostgresTarget:
    """The write scenario's transfers, one PostgreSQL transaction each."""

    def __init__(self, plan: Plan, worker: int, pool: Any) -> None:
        self.plan = plan
        self.choose = Chooser(plan, worker)
        self.pool = pool

    @staticmethod
    async def open(plan: Plan, worker: int) -> PostgresTarget:
        from psycopg_pool import AsyncConnectionPool

        assert plan.postgres is not None, "a plan for the peer names its server"
        size = max(1, plan.postgres_pool // plan.procs)
        pool = AsyncConnectionPool(plan.postgres, min_size=size, max_size=size, timeout=plan.timeout_s, open=False)
        await pool.open(wait=True)
        return PostgresTarget(plan, worker, pool)

    async def close(self) -> None:
        await self.pool.close()

    async def operation(self, index: int) -> tuple[str, str | None]:
        kind = self.choose.kind()
        run, c = self.plan.run, self.choose.customer()
        if kind == "drawdown":
            debit, credit = loan(run, c), deposit(run, c)
        elif kind == "repayment":
            debit, credit = deposit(run, c), loan(run, c)
        elif kind == "payment":
            other = (c + 1 + self.choose.rng.randrange(self.plan.customers - 1)) % self.plan.customers
            debit, credit = deposit(run, c), deposit(run, other)
        else:
            raise ValueError(f"the PostgreSQL peer runs the write scenario's transfers only, not {kind}")
        amount = self.choose.amount()
        try:
            async with self.pool.connection() as connection, connection.transaction():
                await connection.execute(
                    "SELECT id FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE", ([debit, credit],)
                )
                await connection.execute(
                    "UPDATE accounts SET debits_posted = debits_posted + %s WHERE id = %s", (amount, debit)
                )
                await connection.execute(
                    "UPDATE accounts SET credits_posted = credits_posted + %s WHERE id = %s", (amount, credit)
                )
                await connection.execute(
                    "INSERT INTO transfers (id, debit, credit, amount) VALUES (%s, %s, %s, %s)",
                    (f"t{self.plan.series}.{index}", debit, credit, amount),
                )
        except Exception as error:  # psycopg's errors and the pool's timeout: counted, not raised
            return kind, type(error).__name__
        return kind, None
