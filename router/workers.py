"""`yunkai router --workers N`: N router processes serving one port (SO_REUSEPORT), one of them at most the controller.

Python serves a process from one core, so a host's routers scale by processes (DESIGN
sections 3 and 4). This module is the supervisor: it holds the public port (bound, with
SO_REUSEPORT, not listening: the kernel hands connections only to the workers' listeners),
starts N workers with the same settings on that port (`--worker K`), reports serving once
every worker does, passes SIGTERM/SIGINT on, and stops all of them if one dies.

Each worker is a whole router. It also listens on a private port of its own, its admin
address: an admin call that reaches a worker which is not the controller is forwarded there
(a call to the shared port could land on any worker). With a local metastore, worker 0
stands for controller (it takes the directory's lock) and the others only follow the map;
with etcd, every worker stands, like any router.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 30.0


def supervise(settings: dict[str, Any], argv: Sequence[str]) -> int:
    """Run `workers` copies of this router command (argv without --workers and --port) on one port."""
    workers = int(settings["workers"])
    host = str(settings["host"])
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((host, int(settings["port"])))
    port = int(holder.getsockname()[1])
    children: list[subprocess.Popen[bytes]] = []
    stopping = threading.Event()

    def forward(signum: int, _frame: FrameType | None) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for index in range(workers):
            command = [
                sys.executable,
                "-m",
                "cluster.cli",
                "router",
                *argv,
                "--port",
                str(port),
                "--worker",
                str(index),
            ]
            children.append(subprocess.Popen(command, stdout=subprocess.PIPE))
        for index, child in enumerate(children):
            if not _await_serving(child, START_TIMEOUT_S):
                print(f"yunkai router: worker {index} did not start", file=sys.stderr)
                forward(signal.SIGTERM, None)
                return 1
        print(json.dumps({"event": "serving", "port": port, "workers": workers}), flush=True)
        while not stopping.is_set():
            dead = [i for i, child in enumerate(children) if child.poll() is not None]
            if dead:
                print(f"yunkai router: worker {dead[0]} exited with {children[dead[0]].returncode}", file=sys.stderr)
                forward(signal.SIGTERM, None)
                _wait_all(children)
                return 1
            stopping.wait(0.2)
        return max(_wait_all(children), default=0)
    finally:
        holder.close()


def _await_serving(child: subprocess.Popen[bytes], timeout_s: float) -> bool:
    assert child.stdout is not None
    found = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            try:
                if json.loads(line).get("event") == "serving":
                    found.set()
            except ValueError:
                continue

    threading.Thread(target=read, daemon=True).start()  # keeps draining the worker's stdout
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not found.is_set():
        if child.poll() is not None:
            return False
        found.wait(0.05)
    return found.is_set()


def _wait_all(children: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    codes = []
    for child in children:
        try:
            codes.append(child.wait(STOP_GRACE_S))
        except subprocess.TimeoutExpired:
            child.kill()
            codes.append(child.wait())
    return codes
