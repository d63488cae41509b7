"""`yunkai product ...`: the product factory's operator commands, over gRPC to `yunkai lending serve`.

    yunkai product create --file F.toml [--code CODE] [--publish]    # or --sample: the bundled catalogue
    yunkai product publish CODE --version N
    yunkai product retire CODE --version N
    yunkai product list [--all] [--json]
    yunkai product show CODE [--version N]

Each prints what the server answered; a refusal prints the server's reason (which names
the bad parameter) on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format

import serving
from lending.products import SAMPLE_CATALOGUE, InvalidProduct, read_catalogue
from proto import lending_pb2 as pb, lending_pb2_grpc

SERVER_DEFAULT = "127.0.0.1:7300"
TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="product_action", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--server", default=SERVER_DEFAULT, help=f"HOST:PORT of yunkai lending (default {SERVER_DEFAULT})"
        )
        serving.add_tls_arguments(sub)
        return sub

    create = action("create", "save products from a TOML catalogue as drafts (the next version of each code)")
    source = create.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="TOML file of [[product]] tables")
    source.add_argument("--sample", action="store_true", help=f"the bundled sample catalogue ({SAMPLE_CATALOGUE.name})")
    create.add_argument("--code", help="only the product with this code")
    create.add_argument("--publish", action="store_true", help="publish each draft once saved")
    create.set_defaults(run=create_main)

    for name, verb in (("publish", "publish a draft (it becomes immutable)"), ("retire", "retire a published version")):
        sub = action(name, verb)
        sub.add_argument("code")
        sub.add_argument("--version", type=int, required=True, help="the version to act on")
        sub.set_defaults(run=lifecycle_main)

    listing = action("list", "list the published products (with --all, drafts and retired versions too)")
    listing.add_argument("--all", action="store_true", help="include drafts and retired versions")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=list_main)

    show = action("show", "print one product version as JSON")
    show.add_argument("code")
    show.add_argument("--version", type=int, default=0, help="default: the newest published version")
    show.set_defaults(run=show_main)


def _stub(args: argparse.Namespace) -> tuple[grpc.Channel, lending_pb2_grpc.ProductServiceStub]:
    channel = serving.sync_channel(args.server, serving.client_tls(args, "operator"))
    return channel, lending_pb2_grpc.ProductServiceStub(channel)


def _refused(error: grpc.RpcError) -> int:
    print(f"yunkai product: {error.code().name}: {error.details()}", file=sys.stderr)
    return 1


def _line(product: pb.Product) -> str:
    p = product.parameters
    return (
        f"{product.code:<20} v{product.version:<3} {pb.ProductState.Name(product.state):<9} {p.currency} "
        f"{p.amount_min / 100:>12,.2f}-{p.amount_max / 100:<14,.2f} {p.annual_rate_bps / 100:>5.2f}% "
        f"{p.term_months:>3}m {pb.RepaymentMethod.Name(p.repayment_method):<16} {p.name}"
    )


def _as_dict(product: pb.Product) -> dict[str, object]:
    return json_format.MessageToDict(product, preserving_proto_field_name=True)


def create_main(args: argparse.Namespace) -> int:
    path = SAMPLE_CATALOGUE if args.sample else args.file
    try:
        products = read_catalogue(path)
    except (InvalidProduct, OSError) as error:
        print(f"yunkai product create: {error}", file=sys.stderr)
        return 2
    if args.code:
        products = [p for p in products if p.code == args.code]
        if not products:
            print(f"yunkai product create: {path} has no product {args.code!r}", file=sys.stderr)
            return 2
    channel, stub = _stub(args)
    with channel:
        for parameters in products:
            try:
                product = stub.SaveDraft(pb.SaveDraftRequest(parameters=parameters), timeout=TIMEOUT_S)
                if args.publish:
                    ref = pb.ProductRef(code=product.code, version=product.version)
                    product = stub.PublishProduct(ref, timeout=TIMEOUT_S)
            except grpc.RpcError as error:
                return _refused(error)
            print(_line(product), flush=True)
    return 0


def lifecycle_main(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    call = stub.PublishProduct if args.product_action == "publish" else stub.RetireProduct
    with channel:
        try:
            product = call(pb.ProductRef(code=args.code, version=args.version), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            return _refused(error)
    print(_line(product))
    return 0


def list_main(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    request = pb.ListProductsRequest(include_drafts=args.all, include_retired=args.all)
    with channel:
        try:
            reply = stub.ListProducts(request, timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            return _refused(error)
    if args.json:
        print(json.dumps([_as_dict(p) for p in reply.products], indent=2, ensure_ascii=False))
    else:
        for product in reply.products:
            print(_line(product))
    return 0


def show_main(args: argparse.Namespace) -> int:
    channel, stub = _stub(args)
    with channel:
        try:
            product = stub.GetProduct(pb.ProductRef(code=args.code, version=args.version), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            return _refused(error)
    print(json.dumps(_as_dict(product), indent=2, ensure_ascii=False))
    return 0
