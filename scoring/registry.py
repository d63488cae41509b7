"""The model registry on disk: `DIR/<name>/<version>/{model.onnx, model.json}`, and for versions
trained with reasons, `model.cbm` (the CatBoost model the ONNX graph was exported from) and
`shap.npz` (its SHAP tables, scoring/explain.py).

Versions are positive integers (as Triton-style repositories number them). A version is
written into a temporary directory beside it and renamed into place, so readers never see a
half-written version. The reader half (list models and versions, load metadata) is what the
inference server uses.

`DIR/<name>/roles.json` records which version is the champion (what callers who name no version
get), the challenger scored in shadow and its share of requests, and the previous champion
(scoring/champion.py owns the transitions). It is replaced whole in one rename, so a reader sees
the old record or the new one. A model without one serves its highest version.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from serving.files import fsync_path, private_dir

MODEL_FILE = "model.onnx"
METADATA_FILE = "model.json"
CATBOOST_FILE = "model.cbm"
SHAP_FILE = "shap.npz"
ROLES_FILE = "roles.json"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
SCHEMA_VERSION = 1


class RegistryError(Exception):
    """The registry cannot do what was asked (bad name, version exists, nothing to load)."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise RegistryError(f"model name {name!r} must match {NAME_PATTERN.pattern}")
    return name


def list_models(root: Path) -> list[str]:
    """Models that have at least one complete version."""
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name) and list_versions(root, p.name)
    )


def list_versions(root: Path, name: str) -> list[int]:
    """Complete versions of a model, oldest first (temporary directories are not versions)."""
    folder = root / check_name(name)
    if not folder.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in folder.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / MODEL_FILE).is_file() and (p / METADATA_FILE).is_file()
    )


def next_version(root: Path, name: str) -> int:
    versions = list_versions(root, name)
    return versions[-1] + 1 if versions else 1


def version_dir(root: Path, name: str, version: int | None = None) -> Path:
    """Folder of a version; the newest one when `version` is None."""
    versions = list_versions(root, name)
    if not versions:
        raise RegistryError(f"no versions of model {name!r} in {root}")
    chosen = versions[-1] if version is None else version
    if chosen not in versions:
        raise RegistryError(f"model {name!r} has no version {chosen} (has {versions})")
    return root / name / str(chosen)


def load_metadata(root: Path, name: str, version: int | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = json.loads((version_dir(root, name, version) / METADATA_FILE).read_text())
    assert metadata["name"] == name and metadata["schema_version"] == SCHEMA_VERSION, (
        "model.json does not match its place"
    )
    return metadata


def model_path(root: Path, name: str, version: int | None = None) -> Path:
    return version_dir(root, name, version) / MODEL_FILE


def write_version(
    root: Path, name: str, version: int, onnx_file: Path, metadata: dict[str, Any], extra_files: Sequence[Path] = ()
) -> Path:
    """Copy `onnx_file` (and `extra_files`, under their own names) and write `metadata` as a new
    version, atomically; refuse to overwrite."""
    check_name(name)
    if version < 1:
        raise RegistryError(f"version must be a positive integer, not {version}")
    private_dir(str(root))  # models are the bank's: 0700 directories, 0600 files
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / str(version)
    if target.exists():
        raise RegistryError(f"{target} already exists; versions are immutable, pick another --version")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", suffix=".tmp", dir=folder))
    try:
        shutil.copyfile(onnx_file, staging / MODEL_FILE)
        extras = [staging / extra.name for extra in extra_files]
        assert not {e.name for e in extras} & {MODEL_FILE, METADATA_FILE} and len(set(extras)) == len(extras), extras
        for extra, copy in zip(extra_files, extras, strict=True):
            shutil.copyfile(extra, copy)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        for file in (staging / MODEL_FILE, staging / METADATA_FILE, *extras):
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
        # rename(2) of a directory onto a missing name is atomic; it fails if another writer won.
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_path(folder)
    return target


@dataclass(frozen=True)
class Roles:
    """Who serves a model: the champion answers; the challenger, if any, scores `share` of the
    champion's requests in shadow; `previous` is the champion a rollback restores."""

    champion: int
    challenger: int | None = None
    share: float = 0.0
    previous: int | None = None

    def __post_init__(self) -> None:
        assert self.champion >= 1, self
        assert (self.challenger is None) == (self.share == 0.0), self
        assert 0.0 <= self.share <= 1.0 and self.challenger != self.champion, self
        assert self.previous != self.champion, self


def read_roles(root: Path, name: str) -> Roles | None:
    """The model's recorded roles, or None when none was ever recorded."""
    path = root / check_name(name) / ROLES_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise RegistryError(f"{path} is not JSON: {error}") from None
    if not isinstance(record, dict) or record.pop("schema_version", None) != SCHEMA_VERSION:
        raise RegistryError(f"{path} is not a version {SCHEMA_VERSION} roles record")
    try:
        return Roles(**record)
    except (TypeError, AssertionError) as error:
        raise RegistryError(f"{path} holds impossible roles: {record} ({error})") from None


def write_roles(root: Path, name: str, roles: Roles) -> None:
    """Replace the model's roles record in one rename(2), fsync'd: durable once this returns."""
    folder = root / check_name(name)
    record = {"schema_version": SCHEMA_VERSION, **asdict(roles)}
    handle, staging = tempfile.mkstemp(prefix=f".{ROLES_FILE}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, folder / ROLES_FILE)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    fsync_path(folder)
