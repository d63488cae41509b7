"""The product factory: validation naming the parameter, the lifecycle, durability, the CLI.

The server runs as a real `yunkai lending serve` process on loopback over a real router and
two ledger nodes (the catalogue is a book's records on them), each test's book its own.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.commands import LocalCluster
from cluster.local import LendingProcess
from lending.products import SAMPLE_CATALOGUE, read_catalogue, validate
from proto import lending_pb2 as pb, lending_pb2_grpc
from tests.conftest import channel, fresh, fresh_book


def sample(code: str = "SME-TAX-LOAN") -> pb.ProductParameters:
    [parameters] = [p for p in read_catalogue(SAMPLE_CATALOGUE) if p.code == code]
    return parameters


def changed(parameters: pb.ProductParameters, **fields: object) -> pb.ProductParameters:
    copy = pb.ProductParameters()
    copy.CopyFrom(parameters)
    for name, value in fields.items():
        if isinstance(value, list):
            copy.ClearField(name)  # type: ignore[arg-type]
            getattr(copy, name).extend(value)
        else:
            setattr(copy, name, value)
    return copy


def test_the_sample_catalogue_has_22_valid_products_with_distinct_codes() -> None:
    products = read_catalogue(SAMPLE_CATALOGUE)
    assert len(products) == 22
    assert len({p.code for p in products}) == 22
    assert {p.code: validate(p) for p in products if validate(p)} == {}
    methods = {p.repayment_method for p in products}
    assert methods == {pb.EQUAL_INSTALMENT, pb.EQUAL_PRINCIPAL, pb.INTEREST_ONLY}


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"annual_rate_bps": 250_000}, "annual_rate_bps: 250000 is above the maximum 3600"),
        ({"code": "tax loan"}, "code: 'tax loan' is not 2-24 characters"),
        ({"currency": "XYZ"}, "currency: 'XYZ' is not one of CNY, HKD, USD, EUR"),
        ({"amount_min": 0}, "amount_min: 0 is below the minimum 1"),
        ({"amount_max": 5}, "amount_max: 5 is below the minimum 1000000 (amount_min)"),
        ({"term_months": 0}, "term_months: 0 is below the minimum 1"),
        ({"term_months": 36}, "term_months: 36 is outside its override bounds term_months_min..term_months_max, 3..24"),
        ({"overridable": ["term_months"]}, "annual_rate_bps_min: set, but annual_rate_bps is not overridable"),
        ({"overridable": ["annual_rate_bps", "colour"]}, "overridable: 'colour' is not one of"),
        ({"repayment_method": pb.REPAYMENT_METHOD_UNSPECIFIED}, "repayment_method: must be"),
        ({"day_count": pb.DAY_COUNT_UNSPECIFIED}, "day_count: must be ACT_360 or ACT_365"),
        ({"grace_days": 31}, "grace_days: 31 is above the maximum 30"),
        ({"penalty_rate_bps": 1000}, "penalty_rate_bps: 1000 is below the minimum 1200 (the highest rate)"),
        (
            {"fees": [pb.Fee(kind=pb.ORIGINATION, amount=1, rate_bps=1)]},
            "fees[0]: set exactly one of amount and rate_bps",
        ),
        (
            {"fees": [pb.Fee(kind=pb.ORIGINATION, amount=1), pb.Fee(kind=pb.ORIGINATION, amount=2)]},
            "fees[1].kind: ORIGINATION appears twice",
        ),
        (
            {"fees": [pb.Fee(kind=pb.LATE_PAYMENT, rate_bps=10)]},
            "fees[0].rate_bps: a late-payment fee is a fixed amount",
        ),
    ],
)
def test_a_bad_parameter_is_named(fields: dict[str, object], error: str) -> None:
    errors = validate(changed(sample(), **fields))
    assert any(e.startswith(error) for e in errors), errors


def test_a_bad_gl_mapping_is_named() -> None:
    parameters = sample()
    parameters.gl.interest_income = "income"
    assert validate(parameters) == ["gl.interest_income: 'income' is not a general-ledger code such as 1303 or 6011.01"]


# --- the server ---------------------------------------------------------------------------


class Lending:
    def __init__(self, process: LendingProcess) -> None:
        self.process = process
        self.channel = channel(process.address, "operator")
        self.products = lending_pb2_grpc.ProductServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def refused(self, call: Callable[..., object], request: object) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        return caught.value

    def all(self) -> list[pb.Product]:
        request = pb.ListProductsRequest(include_drafts=True, include_retired=True)
        return list(self.products.ListProducts(request, timeout=10).products)


def serve(directory: str, cluster: LocalCluster, book: str) -> LendingProcess:
    """A lending server of `book` over the module's cluster (its catalogue is the book's records)."""
    return LendingProcess(directory, ["--router", cluster.address, "--book", book])


@pytest.fixture(scope="module")
def lending(tmp_path_factory: pytest.TempPathFactory, cluster: LocalCluster) -> Iterator[Lending]:
    handle = Lending(serve(str(tmp_path_factory.mktemp("lending")), cluster, fresh_book()).start())
    yield handle
    handle.close()
    assert handle.process.stop() == 0, handle.process.log_tail()


def code() -> str:
    return fresh("T").upper().replace("-", "X")


def test_a_product_goes_from_draft_to_published_to_retired_and_versions_are_immutable(lending: Lending) -> None:
    stub, name = lending.products, code()
    first = changed(sample(), code=name)
    draft = stub.SaveDraft(pb.SaveDraftRequest(parameters=first), timeout=10)
    assert (draft.version, draft.state) == (1, pb.DRAFT)
    # A draft is edited in place; saving the same parameters again changes nothing.
    edited = changed(first, annual_rate_bps=800)
    assert stub.SaveDraft(pb.SaveDraftRequest(parameters=edited), timeout=10).version == 1
    assert stub.SaveDraft(pb.SaveDraftRequest(parameters=edited), timeout=10).saved_ms == (
        stub.GetProduct(pb.ProductRef(code=name, version=1), timeout=10).saved_ms
    )
    assert lending.refused(stub.GetProduct, pb.ProductRef(code=name)).code() == grpc.StatusCode.NOT_FOUND
    published = stub.PublishProduct(pb.ProductRef(code=name, version=1), timeout=10)
    assert (published.state, published.parameters.annual_rate_bps) == (pb.PUBLISHED, 800)
    assert stub.PublishProduct(pb.ProductRef(code=name, version=1), timeout=10) == published  # a retry
    # A change after publishing opens version 2; version 1 stays as it was published.
    second = stub.SaveDraft(pb.SaveDraftRequest(parameters=changed(edited, grace_days=5)), timeout=10)
    assert (second.version, second.state) == (2, pb.DRAFT)
    assert stub.GetProduct(pb.ProductRef(code=name, version=1), timeout=10) == published
    assert stub.GetProduct(pb.ProductRef(code=name), timeout=10).version == 1  # newest *published*
    stub.PublishProduct(pb.ProductRef(code=name, version=2), timeout=10)
    assert stub.GetProduct(pb.ProductRef(code=name), timeout=10).version == 2
    retired = stub.RetireProduct(pb.ProductRef(code=name, version=1), timeout=10)
    assert retired.state == pb.RETIRED and retired.parameters == published.parameters
    # A loan pinned to version 1 can still read it.
    assert stub.GetProduct(pb.ProductRef(code=name, version=1), timeout=10).state == pb.RETIRED
    listed = stub.ListProducts(pb.ListProductsRequest(), timeout=10).products
    assert [(p.code, p.version) for p in listed if p.code == name] == [(name, 2)]
    assert [(p.version, p.state) for p in lending.all() if p.code == name] == [(1, pb.RETIRED), (2, pb.PUBLISHED)]


def test_lifecycle_steps_out_of_order_are_refused_and_change_nothing(lending: Lending) -> None:
    stub, name = lending.products, code()
    stub.SaveDraft(pb.SaveDraftRequest(parameters=changed(sample(), code=name)), timeout=10)
    refused = lending.refused(stub.RetireProduct, pb.ProductRef(code=name, version=1))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "is a draft" in str(refused.details())
    stub.PublishProduct(pb.ProductRef(code=name, version=1), timeout=10)
    stub.RetireProduct(pb.ProductRef(code=name, version=1), timeout=10)
    refused = lending.refused(stub.PublishProduct, pb.ProductRef(code=name, version=1))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "is retired" in str(refused.details())
    refused = lending.refused(stub.PublishProduct, pb.ProductRef(code=name, version=2))
    assert refused.code() == grpc.StatusCode.NOT_FOUND and "version: " in str(refused.details())
    assert [(p.version, p.state) for p in lending.all() if p.code == name] == [(1, pb.RETIRED)]


def test_bad_parameters_are_refused_by_name_and_leave_nothing_behind(lending: Lending) -> None:
    stub, name = lending.products, code()
    bad = changed(sample(), code=name, annual_rate_bps=250_000)
    refused = lending.refused(stub.SaveDraft, pb.SaveDraftRequest(parameters=bad))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "annual_rate_bps: 250000 is above the maximum 3600" in str(refused.details())
    assert [p for p in lending.all() if p.code == name] == []
    for call, request, field in [
        (stub.SaveDraft, pb.SaveDraftRequest(), "parameters: missing"),
        (stub.PublishProduct, pb.ProductRef(code=name), "version: missing"),
        (stub.GetProduct, pb.ProductRef(), "code: missing"),
    ]:
        refused = lending.refused(call, request)
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and str(refused.details()).startswith(field)
    # Bytes that are not a request at all.
    garbage = lending.channel.unary_unary("/yunkai.lending.v1.ProductService/SaveDraft")
    refused = lending.refused(garbage, b"\xff\xff\xff")
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid SaveDraftRequest" in str(
        refused.details()
    )
    # Still serving.
    health = health_pb2_grpc.HealthStub(lending.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert [p for p in lending.all() if p.code == name] == []


def test_the_catalogue_survives_a_kill_9_and_the_servers_disk_and_is_one_for_two_servers(
    tmp_path: Path, cluster: LocalCluster
) -> None:
    book = fresh_book()
    process = serve(str(tmp_path / "lending"), cluster, book).start()
    other = serve(str(tmp_path / "other"), cluster, book).start()
    handle, second = Lending(process), Lending(other)
    try:
        name = code()
        stub = handle.products
        stub.SaveDraft(pb.SaveDraftRequest(parameters=changed(sample(), code=name)), timeout=10)
        stub.PublishProduct(pb.ProductRef(code=name, version=1), timeout=10)
        # The second server of the book sees what the first saved, and changes it.
        second.products.SaveDraft(
            pb.SaveDraftRequest(parameters=changed(sample(), code=name, grace_days=1)), timeout=10
        )
        before = handle.all()
        assert [(p.version, p.state) for p in before] == [(1, pb.PUBLISHED), (2, pb.DRAFT)]
        assert second.all() == before
        process.kill()  # acknowledged means committed on the ledger's replicas
        shutil.rmtree(tmp_path / "lending")  # and the server's own disk is gone
        process = serve(str(tmp_path / "lending"), cluster, book).start()
        handle.close()
        handle = Lending(process)
        assert handle.all() == before
        stub = handle.products
        stub.PublishProduct(pb.ProductRef(code=name, version=2), timeout=10)
        retired = second.products.RetireProduct(pb.ProductRef(code=name, version=1), timeout=10)
        after = handle.all()
        assert [(p.version, p.state) for p in after] == [(1, pb.RETIRED), (2, pb.PUBLISHED)]
        assert after[0] == retired
        # Which version is the newest published comes from the catalogue as read at most
        # CATALOGUE_FRESH_S ago, that version's record as stored now: one the other server
        # retired meanwhile is seen at once, and the newest found instead.
        fresh_name = code()
        stub.SaveDraft(pb.SaveDraftRequest(parameters=changed(sample(), code=fresh_name)), timeout=10)
        stub.PublishProduct(pb.ProductRef(code=fresh_name, version=1), timeout=10)
        assert stub.GetProduct(pb.ProductRef(code=fresh_name), timeout=10).version == 1
        changed_there = changed(sample(), code=fresh_name, grace_days=2)
        second.products.SaveDraft(pb.SaveDraftRequest(parameters=changed_there), timeout=10)
        second.products.PublishProduct(pb.ProductRef(code=fresh_name, version=2), timeout=10)
        second.products.RetireProduct(pb.ProductRef(code=fresh_name, version=1), timeout=10)
        newest = stub.GetProduct(pb.ProductRef(code=fresh_name), timeout=10)
        assert (newest.version, newest.state) == (2, pb.PUBLISHED)
        # Another book on the same ledger has a catalogue of its own.
        elsewhere = serve(str(tmp_path / "elsewhere"), cluster, fresh_book()).start()
        try:
            with channel(elsewhere.address, "operator") as to_elsewhere:
                listed = lending_pb2_grpc.ProductServiceStub(to_elsewhere).ListProducts(
                    pb.ListProductsRequest(include_drafts=True, include_retired=True), timeout=10
                )
                assert [p for p in listed.products if p.code == name] == []
        finally:
            assert elsewhere.stop() == 0
    finally:
        handle.close()
        second.close()
        process.stop()
        other.stop()


def yunkai(*words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cluster.cli", *words], capture_output=True, text=True, timeout=60)


def test_the_cli_loads_the_sample_catalogue_once_and_names_bad_parameters(
    tmp_path: Path, cluster: LocalCluster
) -> None:
    process = serve(str(tmp_path / "lending"), cluster, fresh_book()).start()
    server = ["--server", process.address]
    try:
        for _ in range(2):  # loading it twice changes nothing
            loaded = yunkai("product", "create", "--sample", "--publish", *server)
            assert loaded.returncode == 0, loaded.stderr
            assert len(loaded.stdout.splitlines()) == 22
        listed = yunkai("product", "list", "--all", "--json", *server)
        products = json.loads(listed.stdout)
        assert len(products) == 22 and {(p["version"], p["state"]) for p in products} == {(1, "PUBLISHED")}
        shown = json.loads(yunkai("product", "show", "SME-TAX-LOAN", *server).stdout)
        assert shown["parameters"]["annual_rate_bps"] == 720 and shown["version"] == 1
        retired = yunkai("product", "retire", "SME-TAX-LOAN", "--version", "1", *server)
        assert retired.returncode == 0 and "RETIRED" in retired.stdout
        bad = tmp_path / "bad.toml"
        text = SAMPLE_CATALOGUE.read_text().replace("annual_rate_bps = 720\n", "annual_rate_bps = 250000\n", 1)
        bad.write_text(text)
        refused = yunkai("product", "create", "--file", str(bad), "--code", "SME-TAX-LOAN", *server)
        assert refused.returncode == 1
        assert re.search(
            r"INVALID_ARGUMENT: SME-TAX-LOAN: .*annual_rate_bps: 250000 is above the maximum 3600", refused.stderr
        )
        unknown = tmp_path / "unknown.toml"
        unknown.write_text('[[product]]\ncode = "X1"\ncolour = "red"\n')
        refused = yunkai("product", "create", "--file", str(unknown), *server)
        assert refused.returncode == 2 and "product[0]" in refused.stderr and "colour" in refused.stderr
        missing = yunkai("product", "publish", "NOPE", "--version", "1", *server)
        assert missing.returncode == 1 and "NOT_FOUND: code: no product 'NOPE'" in missing.stderr
        assert len(json.loads(yunkai("product", "list", "--all", "--json", *server).stdout)) == 22
    finally:
        process.stop()
