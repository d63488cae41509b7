"""`yunkai scoring deploy|promote|rollback`: change who serves a model, on a running scoring server.

    yunkai scoring deploy --scoring HOST:PORT MODEL VERSION [--share 0.1]
    yunkai scoring promote --scoring HOST:PORT MODEL
    yunkai scoring rollback --scoring HOST:PORT MODEL

Each is one gRPC call (mutual TLS, as the operator, like every operator command) to the server's
RepositoryModelDeploy|Promote|Rollback, never a write to the registry folder from here: the
server checks the transition (scoring/champion.py), loads a version it does not hold yet,
records the new roles in DIR/<name>/roles.json in one atomic replace and then swaps them in.
Other servers over the same registry read the record at their next start or
RepositoryModelLoad. Prints the model's roles as JSON; a refusal (unknown model or version,
nothing to promote or roll back) prints the server's reason on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import Message

import serving
from proto import inference_pb2 as pb, inference_pb2_grpc

SCORING_DEFAULT = "127.0.0.1:8001"
SHARE_DEFAULT = 0.1
TIMEOUT_S = 60.0  # a deploy may load a version from disk and smoke-test it
EXIT_REFUSED = 1


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """--scoring HOST:PORT and the TLS flags: what every operator command on a scoring server takes."""
    parser.add_argument(
        "--scoring", default=SCORING_DEFAULT, help=f"HOST:PORT of yunkai scoring serve (default {SCORING_DEFAULT})"
    )
    serving.add_tls_arguments(parser)


def _common(parser: argparse.ArgumentParser) -> None:
    add_scoring_arguments(parser)
    parser.add_argument("model", help="model name, e.g. credit_risk")


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)
    parser.add_argument("version", type=int, help="the version to deploy as challenger")
    parser.add_argument(
        "--share",
        type=float,
        default=SHARE_DEFAULT,
        help=f"share of the champion's calls the challenger also scores, 0 < share <= 1 (default {SHARE_DEFAULT})",
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    _common(parser)


def deploy_main(args: argparse.Namespace) -> int:
    request = pb.RepositoryModelDeployRequest(model_name=args.model, version=args.version, share=args.share)
    return _call(args, "RepositoryModelDeploy", request)


def promote_main(args: argparse.Namespace) -> int:
    return _call(args, "RepositoryModelPromote", pb.RepositoryModelPromoteRequest(model_name=args.model))


def rollback_main(args: argparse.Namespace) -> int:
    return _call(args, "RepositoryModelRollback", pb.RepositoryModelRollbackRequest(model_name=args.model))


@contextlib.asynccontextmanager
async def operator_stub(args: argparse.Namespace) -> AsyncIterator[Any]:
    """A stub of the scoring server at --scoring, over mutual TLS as the operator (--tls-dir)."""
    credentials = serving.client_credentials(serving.client_tls(args, "operator"))
    async with serving.channel(args.scoring, credentials, []) as channel:
        yield inference_pb2_grpc.GRPCInferenceServiceStub(channel)


def call(args: argparse.Namespace, method: str, request: Message) -> Any:
    """One call to the scoring server as the operator; grpc.aio.AioRpcError if it is refused."""

    async def run() -> Any:
        async with operator_stub(args) as stub:
            return await getattr(stub, method)(request, timeout=TIMEOUT_S)

    return asyncio.run(run())


def refused(error: grpc.aio.AioRpcError) -> int:
    """Print the server's reason for a refusal; the exit status."""
    print(f"refused ({error.code().name}): {error.details()}", file=sys.stderr)
    return EXIT_REFUSED


def _call(args: argparse.Namespace, method: str, request: Message) -> int:
    try:
        roles: pb.ModelRoles = call(args, method, request)
    except grpc.aio.AioRpcError as error:
        return refused(error)
    print(json.dumps(roles_json(roles), sort_keys=True))
    return 0


def roles_json(roles: pb.ModelRoles) -> dict[str, object]:
    """The roles as a person reads them: null where there is none (0 on the wire)."""
    return {
        "model": roles.model_name,
        "champion": roles.champion,
        "challenger": roles.challenger or None,
        "share": roles.share,
        "previous": roles.previous or None,
    }
