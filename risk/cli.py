"""`yunkai decide ...` and `yunkai risk get|replay ...`: the decision service's commands, over gRPC.

    yunkai decide --risk HOST:PORT --product SME-TAX-LOAN --applicant '{"customer": "c1",
        "amount_requested_fen": 5000000, "Income": 150, ...}' [--application-id ID] [--flow-version N]
    yunkai risk get --risk HOST:PORT ID
    yunkai risk replay --risk HOST:PORT ID [--rescore]

The applicant JSON holds `customer`, `amount_requested_fen` (an integer) and the flow's
numeric fields by name; a field left out is missing data. Each command prints the decision
as JSON; a refusal prints the server's reason (naming the bad field) on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from proto import risk_pb2 as pb, risk_pb2_grpc, serving

RISK_DEFAULT = "127.0.0.1:7400"
TIMEOUT_S = 10.0
EXIT_REFUSED = 1
EXIT_BAD_ARGUMENTS = 2


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--risk", default=RISK_DEFAULT, help=f"HOST:PORT of yunkai risk serve (default {RISK_DEFAULT})")
    parser.add_argument("--tls-ca", help="PEM root certificates: call the server over TLS, trusting these roots")


def add_decide_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("--product", required=True, help="product code, e.g. SME-TAX-LOAN")
    parser.add_argument("--applicant", required=True, help="JSON object: customer, amount_requested_fen, fields")
    parser.add_argument("--application-id", help="idempotency key (default: a new random id)")
    parser.add_argument("--flow-version", type=int, default=0, help="flow version (default: the product's newest)")
    parser.set_defaults(run=decide_main)


def add_risk_actions(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`yunkai risk get|replay`; `serve` is added beside them by cluster/cli.py."""
    for name, text in (("get", "print a stored decision"), ("replay", "re-evaluate a stored decision and compare")):
        sub = actions.add_parser(name, help=text, description=text)
        _common(sub)
        sub.add_argument("application_id")
        if name == "replay":
            sub.add_argument("--rescore", action="store_true", help="also score the application again and compare")
        sub.set_defaults(run=get_main if name == "get" else replay_main)


def decide_request(product: str, applicant_json: str, application_id: str, flow_version: int) -> pb.DecideRequest:
    """The request for an applicant given as JSON; ValueError naming what is wrong."""
    applicant: Any = json.loads(applicant_json)
    if not isinstance(applicant, dict):
        raise ValueError("--applicant: not a JSON object")
    applicant = dict(applicant)
    customer = applicant.pop("customer", "")
    amount = applicant.pop("amount_requested_fen", 0)
    if not isinstance(customer, str):
        raise ValueError("customer: not a string")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise ValueError("amount_requested_fen: not an integer (money is integer fen)")
    fields = {}
    for name, value in applicant.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValueError(f"{name}: {value!r} is not a number")
        fields[name] = float(value)
    return pb.DecideRequest(
        application_id=application_id,
        product=product,
        customer=customer,
        amount_requested_fen=amount,
        fields=fields,
        flow_version=flow_version,
    )


def _call(args: argparse.Namespace, method: str, request: Message) -> int:
    async def run() -> Message:
        async with serving.channel(args.risk, serving.client_credentials(args.tls_ca), []) as channel:
            stub = risk_pb2_grpc.DecisionServiceStub(channel)
            reply: Message = await getattr(stub, method)(request, timeout=TIMEOUT_S)
            return reply

    try:
        reply = asyncio.run(run())
    except grpc.aio.AioRpcError as error:
        print(f"refused ({error.code().name}): {error.details()}", file=sys.stderr)
        return EXIT_REFUSED
    print(json_format.MessageToJson(reply, preserving_proto_field_name=True, indent=2))
    return 0


def decide_main(args: argparse.Namespace) -> int:
    application_id = args.application_id or uuid.uuid4().hex[:20]
    try:
        request = decide_request(args.product, args.applicant, application_id, args.flow_version)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    return _call(args, "Decide", request)


def get_main(args: argparse.Namespace) -> int:
    return _call(args, "GetDecision", pb.DecisionRef(application_id=args.application_id))


def replay_main(args: argparse.Namespace) -> int:
    return _call(args, "ReplayDecision", pb.ReplayRequest(application_id=args.application_id, rescore=args.rescore))
