"""The systemd units (cluster/systemd/): each passes `systemd-analyze verify` with no warning, and
each yunkai command line in them is one the `yunkai` front door accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "cluster" / "systemd").glob("*.service"))
INSTALLED = "/opt/yunkai/bin/yunkai"  # where cluster/systemd/README.md installs it

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (systemd)")


def exec_start(unit: Path) -> list[str]:
    [line] = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_there_is_a_unit_for_every_process_kind() -> None:
    assert {unit.stem for unit in UNITS} == {
        f"yunkai-{kind}" for kind in ("etcd", "node", "router", "scoring", "lending", "risk", "gateway")
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: unit.stem)
def test_each_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    """Verified with the binaries of this machine in place of the installed ones (systemd checks
    that each ExecStart is executable)."""
    yunkai = Path(sys.executable).parent / "yunkai"
    etcd = shutil.which("etcd")
    assert etcd, "etcd not found: run cluster/install-etcd.sh (make test does)"
    text = unit.read_text().replace(INSTALLED, str(yunkai)).replace("/usr/bin/etcd", etcd)
    (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / unit.name)], capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.parametrize("unit", [u for u in UNITS if u.stem != "yunkai-etcd"], ids=lambda unit: unit.stem)
def test_each_yunkai_command_line_is_accepted_by_the_front_door(unit: Path) -> None:
    argv = exec_start(unit)
    assert argv[0] == INSTALLED
    words = argv[1:]
    args = build_parser(words).parse_args(words)  # exits (SystemExit) on an unknown command or flag
    assert args.config == "/etc/yunkai/yunkai.toml"
