"""`yunkai`: one console command in front of every yunkai process and tool.

Each subcommand imports its module only when it runs, so `yunkai --help` is fast and a
process loads only what it needs.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yunkai",
        description="yunkai: a distributed double-entry core ledger for small-business lending.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from node import server as node_server

    node = commands.add_parser(
        "node",
        help="run a ledger node",
        description="Run a ledger node: slot actors over RocksDB, serving yunkai.ledger.v1.Ledger over gRPC.",
    )
    node_server.add_arguments(node)
    node.set_defaults(run=node_server.main)

    from cluster import demo

    demo_parser = commands.add_parser(
        "demo",
        help="start a node in a temporary directory and walk through the ledger",
        description="Start a local node, open two accounts, move money, show balances and history; "
        "then keep the node running until Ctrl-C (unless --exit).",
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.main)

    from loadtest import node_bench

    bench = commands.add_parser(
        "bench-node",
        help="measure one node: durable transfers/s and account lookups/s",
        description="Open-loop-free saturation benchmark of one node with batched async clients; "
        "starts its own node unless --node is given. Writes JSON with --json.",
    )
    node_bench.add_arguments(bench)
    bench.set_defaults(run=node_bench.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
