"""Settings and logs: each setting from its flag, then YUNKAI_<SECTION>_<NAME>, then a TOML file, then the default.

A server's settings are one section (`[node] port = 7001`, YUNKAI_NODE_PORT); defaults are
the section's table of names. Logs are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from serving.authz import CallerLimits
from serving.tls import add_tls_arguments

# Settings every server has beside its own (its section's defaults).
COMMON_DEFAULTS: dict[str, Any] = {
    "tls_dir": None,
    "tls_name": None,
    "insecure": False,
    "reflection": False,
    "caller_calls_per_s": int(CallerLimits.calls_per_s),
    "caller_burst": int(CallerLimits.burst_calls),
    "caller_streams_max": CallerLimits.streams_per_caller_max,
    "deadline_s_max": int(CallerLimits.deadline_s_max),
    "audit_log": None,
}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every server takes. Defaults are None so that env and TOML can fill them."""
    parser.add_argument("--config", help="TOML file with a section per process kind ([node], [router], ...)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="gRPC port (0 picks a free one)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus HTTP port (default: none)")
    add_tls_arguments(parser)
    parser.add_argument(
        "--reflection", action="store_true", default=None, help="serve gRPC reflection (off by default)"
    )
    parser.add_argument(
        "--audit-log",
        help="the audit log (append-only, hash-chained; `yunkai audit verify` checks it)"
        " (default: audit.log in the data directory)",
    )
    limits = CallerLimits()
    parser.add_argument(
        "--caller-calls-per-s",
        type=int,
        help=f"calls a second one caller identity may make here; beyond, RESOURCE_EXHAUSTED with retry-after-ms"
        f" (default {limits.calls_per_s:,.0f}; nodes and routers are not limited)",
    )
    parser.add_argument(
        "--caller-burst", type=int, help=f"calls one caller may save up (default {limits.burst_calls:,.0f})"
    )
    parser.add_argument(
        "--caller-streams-max",
        type=int,
        help="server streams (shard-map watches) one caller may hold open here"
        f" (default {limits.streams_per_caller_max})",
    )
    parser.add_argument(
        "--deadline-s-max",
        type=int,
        help=f"longest a call may run, whatever deadline it asks for (default {limits.deadline_s_max:g})",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")


def resolve(args: argparse.Namespace, section: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """Settings from flags, then YUNKAI_<SECTION>_<NAME>, then the TOML file, then defaults."""
    defaults = {**COMMON_DEFAULTS, **defaults}
    file_values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or os.environ.get(f"YUNKAI_{section.upper()}_CONFIG")
    if config_path:
        with open(config_path, "rb") as handle:
            file_values = tomllib.load(handle).get(section, {})
        unknown = set(file_values) - set(defaults)
        if unknown:
            raise SystemExit(f"{config_path}: [{section}] has unknown settings: {', '.join(sorted(unknown))}")
    settings: dict[str, Any] = {}
    for name, default in defaults.items():
        value = getattr(args, name, None)
        env = os.environ.get(f"YUNKAI_{section.upper()}_{name.upper()}")
        if value is None and env is not None:
            value = _from_env(f"YUNKAI_{section.upper()}_{name.upper()}", env, default)
        if value is None:
            value = file_values.get(name, default)
        settings[name] = value
    return settings


def _from_env(variable: str, text: str, default: Any) -> Any:
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off", ""):
            return False
        raise SystemExit(f"{variable}={text!r}: expected true or false")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise SystemExit(f"{variable}={text!r}: expected a whole number") from None
    return text


def setup_logging(level: str = "INFO", process: str = "yunkai") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"process": process},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def check_common(settings: dict[str, Any]) -> str | None:
    """Why the settings every server has are wrong, or None."""
    for name in ("caller_calls_per_s", "caller_burst", "caller_streams_max", "deadline_s_max"):
        if int(settings[name]) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    return None
