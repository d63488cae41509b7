"""The product factory: product parameters, their validation, their lifecycle, their store.

Lifecycle of one version of a product code (DESIGN section 8):

    (none) --save--> DRAFT --save--> DRAFT (parameters replaced)
                     DRAFT --publish--> PUBLISHED (immutable from here on)
                     PUBLISHED --retire--> RETIRED (no new loans; existing loans keep it)

Saving a code whose newest version is published or retired opens the draft of the next
version (n + 1); saving exactly the parameters of the newest draft or published version
answers that version and changes nothing, so a catalogue can be loaded again. Publishing
or retiring twice answers the version unchanged, so callers may retry; publishing a
retired version or retiring a draft is refused.

`validate` is pure and names every bad parameter. `ProductStore` keeps every version as a
record of the book on the ledger nodes (lending/book.py), where it is replicated like the
loans that pin it: the catalogue is small and changes rarely, and every lending process that
serves the book reads the same one.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from clients.records import Conflict, Put
from lending.book import CONFLICT_RETRIES, Book
from lending.schedule import ANNUAL_RATE_BPS_MAX, PRINCIPAL_MAX, TERM_MONTHS_MAX
from proto import lending_pb2 as pb

CODE_PATTERN = re.compile(r"[A-Z][A-Z0-9-]{1,23}")
GL_PATTERN = re.compile(r"[0-9]{4}(\.[0-9]{2,4}){0,3}")
NAME_CHARS_MAX = 80
# ISO 4217: alphabetic code -> numeric code, which is the ledger number of the currency's book.
CURRENCIES = {"CNY": 156, "HKD": 344, "USD": 840, "EUR": 978}
GRACE_DAYS_MAX = 30
# The PBOC lets penalty interest run 30-50% above the contract rate (银发[2003]251号);
# a penalty rate of 1.5 x the highest contract rate we accept is the ceiling.
PENALTY_RATE_BPS_MAX = ANNUAL_RATE_BPS_MAX * 3 // 2
FEE_AMOUNT_MAX = 10_000_000  # fen: 100,000 yuan
FEE_RATE_BPS_MAX = 1_000  # 10%
OVERRIDABLE = ("annual_rate_bps", "term_months", "repayment_method", "grace_days")
VERSIONS_MAX = 10_000  # every version of every code the store will hold
SAMPLE_CATALOGUE = Path(__file__).parent / "catalogue" / "products.toml"


class InvalidProduct(ValueError):
    """Bad parameters: each line names one parameter."""


class ProductNotFound(LookupError):
    pass


class LifecycleRefused(RuntimeError):
    """A lifecycle step not allowed from the version's state."""


class StoreFull(RuntimeError):
    pass


class CatalogueDamaged(RuntimeError):
    """A product record is not where its key says: never written so by this module."""


def validate(p: pb.ProductParameters) -> list[str]:
    """Every problem with the parameters, each as `name: what is wrong`; empty when they are valid."""
    errors: list[str] = []
    if not CODE_PATTERN.fullmatch(p.code):
        errors.append(f"code: {p.code!r} is not 2-24 characters of A-Z, 0-9 and -, starting with a letter")
    if not p.name.strip() or len(p.name) > NAME_CHARS_MAX:
        errors.append(f"name: must be 1-{NAME_CHARS_MAX} characters, not blank")
    if p.currency not in CURRENCIES:
        errors.append(f"currency: {p.currency!r} is not one of {', '.join(CURRENCIES)}")
    errors += _range("amount_min", p.amount_min, 1, PRINCIPAL_MAX)
    errors += _range("amount_max", p.amount_max, max(1, p.amount_min), PRINCIPAL_MAX, "amount_min")
    overridable = list(p.overridable)
    for name in overridable:
        if name not in OVERRIDABLE:
            errors.append(f"overridable: {name!r} is not one of {', '.join(OVERRIDABLE)}")
    if len(set(overridable)) != len(overridable):
        errors.append("overridable: names a parameter twice")
    errors += _range("annual_rate_bps", p.annual_rate_bps, 0, ANNUAL_RATE_BPS_MAX)
    errors += _bounds(p, "annual_rate_bps", p.annual_rate_bps, p.annual_rate_bps_min, p.annual_rate_bps_max)
    errors += _range("term_months", p.term_months, 1, TERM_MONTHS_MAX)
    errors += _bounds(p, "term_months", p.term_months, p.term_months_min, p.term_months_max)
    if p.repayment_method == pb.REPAYMENT_METHOD_UNSPECIFIED:
        errors.append("repayment_method: must be EQUAL_INSTALMENT, EQUAL_PRINCIPAL or INTEREST_ONLY")
    if p.day_count == pb.DAY_COUNT_UNSPECIFIED:
        errors.append("day_count: must be ACT_360 or ACT_365")
    errors += _range("grace_days", p.grace_days, 0, GRACE_DAYS_MAX)
    # A penalty below the contract rate would make paying late cheaper than paying on time.
    highest_rate = max(p.annual_rate_bps, p.annual_rate_bps_max)
    errors += _range("penalty_rate_bps", p.penalty_rate_bps, highest_rate, PENALTY_RATE_BPS_MAX, "the highest rate")
    kinds: set[int] = set()
    for index, fee in enumerate(p.fees):
        where = f"fees[{index}]"
        if fee.kind == pb.FEE_KIND_UNSPECIFIED:
            errors.append(f"{where}.kind: must be ORIGINATION, LATE_PAYMENT or EARLY_REPAYMENT")
        elif fee.kind in kinds:
            errors.append(f"{where}.kind: {pb.FeeKind.Name(fee.kind)} appears twice")
        kinds.add(fee.kind)
        if (fee.amount != 0) == (fee.rate_bps != 0):
            errors.append(f"{where}: set exactly one of amount and rate_bps")
        errors += _range(f"{where}.amount", fee.amount, 0, FEE_AMOUNT_MAX)
        errors += _range(f"{where}.rate_bps", fee.rate_bps, 0, FEE_RATE_BPS_MAX)
        if fee.kind == pb.LATE_PAYMENT and fee.rate_bps:
            errors.append(f"{where}.rate_bps: a late-payment fee is a fixed amount")
    for field in pb.GlMapping.DESCRIPTOR.fields:
        code = getattr(p.gl, field.name)
        if not GL_PATTERN.fullmatch(code):
            errors.append(f"gl.{field.name}: {code!r} is not a general-ledger code such as 1303 or 6011.01")
    return errors


def _range(name: str, value: int, low: int, high: int, low_name: str = "") -> list[str]:
    if value < low:
        return [f"{name}: {value} is below the minimum {low}" + (f" ({low_name})" if low_name else "")]
    if value > high:
        return [f"{name}: {value} is above the maximum {high}"]
    return []


def _bounds(p: pb.ProductParameters, name: str, value: int, low: int, high: int) -> list[str]:
    """A loan's own value must lie in [low, high], and the product's value with it."""
    if name not in p.overridable:
        return [f"{name}_{end}: set, but {name} is not overridable" for end, v in (("min", low), ("max", high)) if v]
    if not low <= value <= high:
        return [f"{name}: {value} is outside its override bounds {name}_min..{name}_max, {low}..{high}"]
    return []


def check(p: pb.ProductParameters) -> None:
    errors = validate(p)
    if errors:
        raise InvalidProduct(f"{p.code or 'product'}: " + "; ".join(errors))


def ledger_of(currency: str) -> int:
    """The ledger (book) a currency's accounts live in: its ISO 4217 numeric code."""
    return CURRENCIES[currency]


# --- files -------------------------------------------------------------------------------


def parameters_from_dict(values: dict[str, Any], where: str) -> pb.ProductParameters:
    """Parameters from a TOML table (fields named as in proto/lending.proto, enums by name)."""
    try:
        return json_format.ParseDict(values, pb.ProductParameters())
    except json_format.ParseError as error:
        raise InvalidProduct(f"{where}: {error}") from None


def read_catalogue(path: Path) -> list[pb.ProductParameters]:
    """The `[[product]]` tables of a TOML file, in order."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise InvalidProduct(f"{path}: {error}") from None
    tables = document.get("product")
    if not isinstance(tables, list) or not tables:
        raise InvalidProduct(f"{path}: no [[product]] tables")
    return [parameters_from_dict(t, f"{path}: product[{i}]") for i, t in enumerate(tables)]


# --- the store ---------------------------------------------------------------------------

CATALOGUE_TAG = "{catalogue}"  # every version's record is in this tag's slot: the catalogue is one scan
CATALOGUE_FRESH_S = 2.0  # how stale the cached catalogue may be for reports (decisions read the record)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _key(code: str, version: int) -> str:
    return f"{CATALOGUE_TAG}:{code}:{version:05d}"


class ProductStore:
    """Every version of every product, as the book's records on the ledger (lending/book.py's
    kind "product", all in the catalogue's slot): replicated with it, one catalogue for every
    lending process that serves the book.

    A change reads the catalogue as stored, decides, and commits the version's record naming
    the record version it read; a change that lost a race to another process is decided again.
    Reads for decisions (`fetch`) read the one record; reports and listings use the catalogue
    as read at most CATALOGUE_FRESH_S ago (`get`, after `refresh`), and so does `fetch` to
    learn which version is the newest published.
    """

    def __init__(self, book: Book) -> None:
        self._book = book
        self._versions: dict[str, list[pb.Product]] = {}  # code -> versions in order (index v-1 is v)
        self._records: dict[tuple[str, int], int] = {}  # (code, version) -> its record's version
        self._read_at = -CATALOGUE_FRESH_S

    async def load(self) -> None:
        """Read the whole catalogue as stored now."""
        versions: dict[str, list[pb.Product]] = {}
        records: dict[tuple[str, int], int] = {}
        slot = await self._book.slot_of(CATALOGUE_TAG)
        async for page in self._book.scan("product", [slot], f"{CATALOGUE_TAG}:"):
            for record in page:
                product = pb.Product.FromString(record.value)
                if record.key != _key(product.code, product.version):
                    raise CatalogueDamaged(f"product record {record.key} holds {product.code} v{product.version}")
                versions.setdefault(product.code, []).append(product)
                records[(product.code, product.version)] = record.version
        for code, found in versions.items():
            found.sort(key=lambda p: p.version)
            if [p.version for p in found] != list(range(1, len(found) + 1)):
                raise CatalogueDamaged(f"product {code}: versions {[p.version for p in found]} are not 1..n")
        self._versions, self._records = versions, records
        self._read_at = time.monotonic()

    async def refresh(self) -> None:
        """`load` if the catalogue was read more than CATALOGUE_FRESH_S ago."""
        if time.monotonic() - self._read_at > CATALOGUE_FRESH_S:
            await self.load()

    async def fetch(self, code: str, version: int) -> pb.Product:
        """One version as stored now (a retirement in another process is seen at once).
        Version 0, the newest published one: which version that is comes from the catalogue
        as read at most CATALOGUE_FRESH_S ago (a version another process published since is
        seen after that), and that version's record is then read as stored now."""
        if version == 0:
            await self.refresh()
            try:
                newest = self.get(code, 0)
            except ProductNotFound:  # none known yet: perhaps published since
                await self.load()
                return self.get(code, 0)
            product = await self.fetch(code, newest.version)
            if product.state != pb.PUBLISHED:  # retired since: which is the newest now?
                await self.load()
                return self.get(code, 0)
            return product
        [record] = await self._book.read([("product", _key(code, version))])
        if record is None:
            await self.load()  # says which versions there are
            return self.get(code, version)
        product = pb.Product.FromString(record.value)
        versions = self._versions.setdefault(code, [])
        if version <= len(versions):
            versions[version - 1] = product
        else:
            await self.load()
        self._records[(code, version)] = record.version
        return product

    async def have(self, code: str, version: int) -> None:
        """Make sure `get(code, version)` answers (a version another process saved since the
        last read is fetched); ProductNotFound if the catalogue has no such version."""
        versions = self._versions.get(code, [])
        if not 1 <= version <= len(versions):
            await self.fetch(code, version)

    async def _write(self, product: pb.Product) -> pb.Product:
        """Store a version, naming the record version it was decided on (Conflict if it moved)."""
        seen = self._records.get((product.code, product.version), 0)
        await self._book.commit([Put("product", _key(product.code, product.version), product, seen)])
        self._read_at = -CATALOGUE_FRESH_S  # read again before the next report
        return product

    async def _decided(self, decide: Callable[[], Awaitable[pb.Product]]) -> pb.Product:
        for _ in range(CONFLICT_RETRIES):
            await self.load()
            try:
                return await decide()
            except Conflict:
                continue
        raise LifecycleRefused("the catalogue kept changing under this change (other lending servers); retry")

    async def save_draft(self, parameters: pb.ProductParameters) -> pb.Product:
        check(parameters)

        async def decide() -> pb.Product:
            versions = self._versions.get(parameters.code, [])
            newest = versions[-1] if versions else None
            if newest is not None and newest.state != pb.RETIRED and newest.parameters == parameters:
                return newest  # nothing new to save: loading a catalogue twice changes nothing
            if newest is not None and newest.state == pb.DRAFT:
                version = newest.version
            else:
                if sum(len(v) for v in self._versions.values()) >= VERSIONS_MAX:
                    raise StoreFull(f"the catalogue holds {VERSIONS_MAX} product versions, its limit")
                version = len(versions) + 1
            draft = pb.Product(
                code=parameters.code, version=version, state=pb.DRAFT, parameters=parameters, saved_ms=_now_ms()
            )
            return await self._write(draft)

        return await self._decided(decide)

    async def publish(self, code: str, version: int) -> pb.Product:
        async def decide() -> pb.Product:
            product = self.get(code, version)
            if product.state == pb.PUBLISHED:
                return product
            if product.state == pb.RETIRED:
                raise LifecycleRefused(f"{code} version {version} is retired: it cannot be published again")
            check(product.parameters)  # the rules may have tightened since it was saved
            published = pb.Product()
            published.CopyFrom(product)
            published.state = pb.PUBLISHED
            published.published_ms = _now_ms()
            return await self._write(published)

        return await self._decided(decide)

    async def retire(self, code: str, version: int) -> pb.Product:
        async def decide() -> pb.Product:
            product = self.get(code, version)
            if product.state == pb.RETIRED:
                return product
            if product.state == pb.DRAFT:
                raise LifecycleRefused(f"{code} version {version} is a draft: only a published version is retired")
            retired = pb.Product()
            retired.CopyFrom(product)
            retired.state = pb.RETIRED
            retired.retired_ms = _now_ms()
            return await self._write(retired)

        return await self._decided(decide)

    def get(self, code: str, version: int = 0) -> pb.Product:
        """One version as last read; version 0 is the newest published one (what new loans use)."""
        versions = self._versions.get(code)
        if not versions:
            raise ProductNotFound(f"code: no product {code!r}")
        if version == 0:
            for product in reversed(versions):
                if product.state == pb.PUBLISHED:
                    return product
            raise ProductNotFound(f"code: {code} has no published version")
        if not 1 <= version <= len(versions):
            raise ProductNotFound(f"version: {code} has versions 1..{len(versions)}, not {version}")
        return versions[version - 1]

    def list(self, include_drafts: bool = False, include_retired: bool = False) -> list[pb.Product]:
        shown = (
            {pb.PUBLISHED} | ({pb.DRAFT} if include_drafts else set()) | ({pb.RETIRED} if include_retired else set())
        )
        return [p for code in sorted(self._versions) for p in self._versions[code] if p.state in shown]

    def codes(self) -> Iterable[str]:
        return sorted(self._versions)
