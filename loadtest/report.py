"""What every benchmark writes beside its numbers: the machine and the exact command."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    return {"cpus": os.cpu_count(), "processor": _cpu_model(), "python": platform.python_version()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def command_line() -> str:
    """The command exactly as it was typed (the JSON records every effective setting too)."""
    return shlex.join(["yunkai", *sys.argv[1:]])


def record(args: argparse.Namespace, result: dict[str, object]) -> None:
    """Add the machine and the command to `result`, and write it to --json if given."""
    result["machine"] = machine()
    result["command"] = command_line()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
