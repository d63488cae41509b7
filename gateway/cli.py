"""`yunkai partner ...`: the open platform's registry, over gRPC to `yunkai gateway serve` (its --port).

    yunkai partner register ID --name NAME
    yunkai partner add-app ID APP --scopes customers,applications,... [--rate-per-s N] [--daily-quota N]
    yunkai partner rotate-secret CLIENT_ID
    yunkai partner revoke ID|CLIENT_ID
    yunkai partner webhook CLIENT_ID --url https://...
    yunkai partner list [--json]

add-app and rotate-secret print the client secret once (it is kept only as a hash), webhook the
signing secret once. A refusal prints the gateway's reason (which names what is wrong) on stderr
and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

import serving
from gateway.registry import SCOPES
from proto import gateway_pb2 as pb, gateway_pb2_grpc

SERVER_DEFAULT = "127.0.0.1:7500"
TIMEOUT_S = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="partner_action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--gateway",
            default=SERVER_DEFAULT,
            help=f"HOST:PORT of the gateway's registry (its gRPC --port; default {SERVER_DEFAULT})",
        )
        serving.add_tls_arguments(sub)
        sub.set_defaults(run=run)
        return sub

    register = action("register", "register a partner (a 4-character id: the prefix of every id it names)", _register)
    register.add_argument("id", help="exactly 4 of a-z, 0-9")
    register.add_argument("--name", required=True, help="the partner's name")
    add = action("add-app", "add an app to a partner and print its client id and secret (shown once)", _add_app)
    add.add_argument("id", help="the partner's id")
    add.add_argument("app", help="the app's name: 1-16 of a-z, 0-9")
    add.add_argument("--scopes", required=True, help=f"comma-separated API groups: {', '.join(SCOPES)}")
    add.add_argument("--rate-per-s", type=int, default=0, help="calls a second (default: the gateway's)")
    add.add_argument("--daily-quota", type=int, default=0, help="calls a day (default: the gateway's)")
    rotate = action("rotate-secret", "give an app a new client secret (the old one and its tokens stop)", _rotate)
    rotate.add_argument("client_id", help="<partner>.<app>")
    revoke = action("revoke", "revoke an app, or a partner and all its apps", _revoke)
    revoke.add_argument("id", help="a partner id or a client id")
    hook = action(
        "webhook", "send the partner's events to an app's URL, with a new signing secret (shown once)", _webhook
    )
    hook.add_argument("client_id", help="<partner>.<app>")
    hook.add_argument("--url", required=True, help='https:// URL the events are POSTed to ("" stops them)')
    listing = action("list", "list partners and their apps", _list)
    listing.add_argument("--json", action="store_true", help="print JSON")


def _call(args: argparse.Namespace, method: str, request: Message) -> Message | None:
    with serving.sync_channel(args.gateway, serving.client_tls(args, "operator")) as channel:
        stub = gateway_pb2_grpc.PartnersStub(channel)
        try:
            reply: Message = getattr(stub, method)(request, timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            print(f"yunkai partner {args.partner_action}: {error.code().name}: {error.details()}", file=sys.stderr)
            return None
    return reply


def _register(args: argparse.Namespace) -> int:
    reply = _call(args, "RegisterPartner", pb.RegisterPartnerRequest(partner_id=args.id, name=args.name))
    if not isinstance(reply, pb.Partner):
        return 1
    print(f"partner {reply.partner_id} registered: {reply.name}")
    return 0


def _credentials(reply: pb.AppCredentials) -> None:
    app = reply.app
    print(f"client_id     {app.client_id}")
    print(f"client_secret {reply.client_secret}   (shown once: keep it now)")
    print(f"scopes        {' '.join(app.scopes)}; {app.rate_per_s} calls/s, {app.daily_quota} calls a day")


def _add_app(args: argparse.Namespace) -> int:
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    request = pb.AddAppRequest(
        partner_id=args.id, app=args.app, scopes=scopes, rate_per_s=args.rate_per_s, daily_quota=args.daily_quota
    )
    reply = _call(args, "AddApp", request)
    if not isinstance(reply, pb.AppCredentials):
        return 1
    _credentials(reply)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    reply = _call(args, "RotateSecret", pb.AppRef(client_id=args.client_id))
    if not isinstance(reply, pb.AppCredentials):
        return 1
    _credentials(reply)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    reply = _call(args, "Revoke", pb.RevokeRequest(id=args.id))
    if not isinstance(reply, pb.RevokeResponse):
        return 1
    print(f"{args.id} revoked ({reply.apps_revoked} apps revoked now)")
    return 0


def _webhook(args: argparse.Namespace) -> int:
    reply = _call(args, "SetWebhook", pb.SetWebhookRequest(client_id=args.client_id, url=args.url))
    if not isinstance(reply, pb.WebhookSecret):
        return 1
    print(f"webhook       {reply.app.webhook_url or '(none)'}")
    print(f"signing_secret {reply.signing_secret}   (shown once: keep it now)")
    return 0


def _list(args: argparse.Namespace) -> int:
    reply = _call(args, "ListPartners", pb.ListPartnersRequest())
    if not isinstance(reply, pb.ListPartnersResponse):
        return 1
    if args.json:
        print(json.dumps(json_format.MessageToDict(reply, preserving_proto_field_name=True), indent=2))
        return 0
    for partner in reply.partners:
        state = " (revoked)" if partner.revoked else ""
        print(f"{partner.partner_id}  {partner.name}{state}")
        for app in partner.apps:
            flag = " (revoked)" if app.revoked else ""
            print(f"    {app.client_id:<22} {' '.join(app.scopes)}; {app.rate_per_s}/s, {app.daily_quota}/day{flag}")
    return 0
