"""The models a scoring server holds, and the decisions about a request to them.

`ModelStore` owns the loaded versions of every model (onnxruntime sessions, one intra-op thread)
and swaps a model's whole set of versions, with their roles (champion, challenger), in one
assignment, so a reload or a promotion is atomic and a failed one leaves the old set serving.
`check_features` validates a [N, F] float32 block against a version's input schema (a pure
function); `LoadedVersion.score` runs it. No gRPC here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scoring import champion, parity, reasons, registry
from scoring.monitor import Reference
from scoring.reasons import Reasons
from scoring.registry import Roles

ROWS_MAX = 65_536  # one request's rows: bounded so one caller cannot stall every other


class NotFound(Exception):
    """An unknown model or version (NOT_FOUND)."""


class InvalidInput(Exception):
    """Features that do not fit the schema (INVALID_ARGUMENT); the message names the feature."""


class LoadFailed(Exception):
    """A model could not be (re)loaded from disk; whatever served before still serves."""


@dataclass
class LoadedVersion:
    name: str
    version: int
    feature_names: list[str]
    rejects_non_finite: bool  # the schema's missing-value policy: NaN/inf are invalid input
    reference: Reference  # the bins its drift is measured in (scoring/monitor.py)
    session: Any  # the graph without its ZipMap (parity.open_tensor_session)
    output: str
    reasons: Reasons | None = None  # None: trained without reasons (scoring/reasons.py)

    def score(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Positive-class probabilities of checked features."""
        return parity.tensor_probabilities(self.session, self.output, features)


def load_version(root: Path, name: str, version: int) -> LoadedVersion:
    """One version from the registry, opened and smoke-tested on one row; LoadFailed if unusable."""
    try:
        metadata = registry.load_metadata(root, name, version)
        schema = metadata["input_schema"]
        names = [f["name"] for f in sorted(schema["features"], key=lambda f: f["index"])]
        reference = Reference.from_metadata(metadata)
        if reference.features and list(reference.features) != names:
            raise ValueError(f"drift_reference names features {list(reference.features)}, the schema {names}")
        path = registry.model_path(root, name, version)
        session, output = parity.open_tensor_session(path)
        loaded = LoadedVersion(
            name=name,
            version=version,
            feature_names=names,
            rejects_non_finite=str(schema.get("missing_value_policy", "reject")).startswith("reject"),
            reference=reference,
            session=session,
            output=output,
        )
        # A model that loads but cannot score must not replace one that can; and the served
        # graph (ZipMap stripped) must answer exactly as the exported one the gate admitted.
        probe = np.random.default_rng(0).random((8, len(names)), dtype=np.float32)
        probe[0] = 0.0
        served = parity.tensor_probabilities(session, output, probe)
        exported = parity.onnx_probabilities(parity.open_session(path), probe).astype(np.float32)
        if not np.array_equal(served, exported):
            raise ValueError("the graph without ZipMap disagrees with the exported graph")
        # Reasons must explain the scores this graph serves, not only the CatBoost model's.
        loaded.reasons = reasons.load(registry.version_dir(root, name, version), metadata)
        if loaded.reasons is not None:
            reasons.check_served(loaded.reasons, probe, served)
    except Exception as error:
        raise LoadFailed(f"cannot load {name} version {version}: {type(error).__name__}: {error}") from None
    return loaded


@dataclass(frozen=True)
class ModelVersions:
    """Every loaded version of one model and their roles (scoring/champion.py): the champion is
    the default. Replaced whole, never changed in place, so one read of `ModelStore.models`
    gives a request a champion and a challenger that belong together."""

    versions: dict[int, LoadedVersion]
    roles: Roles

    def __post_init__(self) -> None:
        assert self.roles.champion in self.versions, self.roles
        assert self.roles.challenger is None or self.roles.challenger in self.versions, self.roles

    @property
    def default(self) -> LoadedVersion:
        return self.versions[self.roles.champion]

    @property
    def challenger(self) -> LoadedVersion | None:
        return None if self.roles.challenger is None else self.versions[self.roles.challenger]

    def get(self, name: str, version: str = "") -> LoadedVersion:
        """The version asked for ("" means the champion); NotFound naming what is missing."""
        if not version:
            return self.default
        if not version.isdigit() or int(version) not in self.versions:
            have = ", ".join(str(v) for v in sorted(self.versions))
            raise NotFound(f"model {name!r} has no version {version!r} (loaded: {have})")
        return self.versions[int(version)]


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, ModelVersions] = {}

    def load_all(self) -> None:
        for name in registry.list_models(self.root):
            self.models[name] = self.read(name)

    def read(self, name: str) -> ModelVersions:
        """Every version of `name` on disk, loaded, with its recorded roles; LoadFailed if any
        one fails or the record names a version that is not there (nothing swapped)."""
        try:
            versions = registry.list_versions(self.root, name)
            roles = registry.read_roles(self.root, name)
        except registry.RegistryError as error:
            raise LoadFailed(str(error)) from None
        if not versions:
            raise LoadFailed(f"no versions of model {name!r} in {self.root}")
        roles = roles or champion.initial(versions)
        for role, version in (("champion", roles.champion), ("challenger", roles.challenger)):
            if version is not None and version not in versions:
                raise LoadFailed(f"model {name!r}: the recorded {role}, version {version}, is not in {self.root}")
        return ModelVersions({v: load_version(self.root, name, v) for v in versions}, roles)

    def change_roles(self, name: str, change: Callable[[Roles, list[int]], Roles]) -> ModelVersions:
        """The model's set with `change(roles, versions on disk)` applied: a version the new roles
        need that is not loaded yet is loaded, and the record is written durably. Blocking (disk
        and onnxruntime); the caller installs the result. A refusal (or a failed load or write)
        leaves the record and the served set as they were."""
        current = self.model(name)
        try:
            on_disk = registry.list_versions(self.root, name)
        except registry.RegistryError as error:
            raise LoadFailed(str(error)) from None
        roles = change(current.roles, on_disk)
        versions = dict(current.versions)
        for version in (roles.champion, roles.challenger):
            if version is not None and version not in versions:
                versions[version] = load_version(self.root, name, version)
        changed = ModelVersions(versions, roles)
        registry.write_roles(self.root, name, roles)
        return changed

    def install(self, name: str, loaded: ModelVersions) -> None:
        # One assignment: a request sees the old set or the new one, never a mixture.
        self.models = {**self.models, name: loaded}

    def unload(self, name: str) -> None:
        if name not in self.models:
            raise NotFound(f"model {name!r} is not loaded")
        self.models = {k: v for k, v in self.models.items() if k != name}

    def model(self, name: str) -> ModelVersions:
        """The model's loaded set; NotFound naming the models there are."""
        model = self.models.get(name)
        if model is None:
            raise NotFound(f"unknown model {name!r} (loaded: {', '.join(sorted(self.models)) or 'none'})")
        return model

    def get(self, name: str, version: str = "") -> LoadedVersion:
        """The version asked for ("" means the champion); NotFound naming what is missing."""
        return self.model(name).get(name, version)


def check_features(block: npt.NDArray[np.float32], model: LoadedVersion) -> None:
    """Refuse a block that is not [N, F] with 1 <= N <= ROWS_MAX, or that holds NaN/inf where
    the schema forbids them; the message names the feature (column) and the row."""
    width = len(model.feature_names)
    if block.ndim != 2 or block.shape[1] != width:
        raise InvalidInput(f"input 'features' has shape {list(block.shape)}, expected [N, {width}]")
    rows = block.shape[0]
    if not 1 <= rows <= ROWS_MAX:
        raise InvalidInput(f"input 'features' has {rows} rows; 1 to {ROWS_MAX} are accepted")
    if model.rejects_non_finite:
        bad = ~np.isfinite(block)
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            value = float(block[row, column])
            kind = "NaN" if math.isnan(value) else str(value)
            raise InvalidInput(
                f"feature {model.feature_names[column]!r} (column {column}) of row {row} is {kind}; "
                f"model {model.name!r} rejects missing and non-finite values"
            )
