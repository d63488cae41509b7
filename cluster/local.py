"""Start and stop yunkai processes on this host (the demo, benchmarks and tests use it).

A process is started as `python -m cluster.cli ...` with `--port 0`; it prints one JSON
line `{"event": "serving", "port": P}` on stdout once it serves, which is how we learn
its port without racing for a free one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Self


class ProcessFailed(RuntimeError):
    """A process exited, or did not report serving in time; the message has its log tail."""


class ServiceProcess:
    """A `yunkai <kind>` child process (node, router, ...) with its own data directory."""

    kind = ""
    subcommand: tuple[str, ...] = ()  # the `yunkai` words that start it; (kind,) when empty
    directory_flag = "--data-dir"

    def __init__(self, data_dir: str, extra_args: Sequence[str] = (), log_path: str | None = None) -> None:
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.log_path = log_path or os.path.join(data_dir, f"{self.kind}.log")
        self.port = 0
        self.host = "127.0.0.1"  # where it listens (--host) and is reached
        self.launcher: list[str] = []  # runs the interpreter: ["ip", "netns", "exec", "ns1"] (tests)
        self.process: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}  # added to this process's environment at each start
        self.python_options: list[str] = []  # the interpreter's, before `-m`: ["-X", "importtime"]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> Self:
        os.makedirs(self.data_dir, exist_ok=True)
        # Restarts keep the port, so clients' addresses stay valid across kill -9.
        port = str(self.port) if self.port else "0"
        command = [
            *self.launcher,
            sys.executable,
            *self.python_options,
            "-m",
            "cluster.cli",
            *(self.subcommand or (self.kind,)),
            self.directory_flag,
            self.data_dir,
            "--port",
            port,
            *(["--host", self.host] if self.host != "127.0.0.1" else []),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        env = {**os.environ, **self.env} if self.env else None
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        self.port = _await_serving(self.process, timeout_s, self.log_path)
        return self

    def kill(self) -> None:
        """kill -9: no flush, no goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self._release()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                # It did not stop: its stacks into its log first (every task's, every thread's:
                # serving/bootstrap.py), for whoever finds out why.
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGUSR2)
                    time.sleep(0.5)
                    self.process.send_signal(signal.SIGUSR1)
                    time.sleep(0.5)
                self.process.kill()
                self.process.wait()
        self._release()
        return self.process.returncode

    def _release(self) -> None:
        """Close our end of the exited child's stdout (one pipe per start otherwise leaks)."""
        if self.process is not None and self.process.poll() is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)


class NodeProcess(ServiceProcess):
    """A `yunkai node`."""

    kind = "node"


class ScoringProcess(ServiceProcess):
    """A `yunkai scoring serve` on a model registry (data_dir is the registry)."""

    kind = "scoring"
    subcommand = ("scoring", "serve")
    directory_flag = "--registry"

    def __init__(self, registry: str, extra_args: Sequence[str] = (), log_path: str | None = None) -> None:
        super().__init__(registry, extra_args, log_path or os.path.join(registry, "..", "scoring.log"))


class LendingProcess(ServiceProcess):
    """A `yunkai lending serve` (the product factory) with its own data directory."""

    kind = "lending"
    subcommand = ("lending", "serve")


class RiskProcess(ServiceProcess):
    """A `yunkai risk serve` (give it `--scoring HOST:PORT`, and `--lending HOST:PORT` to open credit lines)."""

    kind = "risk"
    subcommand = ("risk", "serve")


class GatewayProcess(ServiceProcess):
    """A `yunkai gateway serve` (give it --router, --risk and --lending); the partners' HTTP(S)
    API on `http_port` (several processes may share one), the partner registry on its --port."""

    kind = "gateway"
    subcommand = ("gateway", "serve")

    def __init__(
        self, data_dir: str, http_port: int, extra_args: Sequence[str] = (), log_path: str | None = None
    ) -> None:
        super().__init__(data_dir, ["--http-port", str(http_port), *extra_args], log_path)
        self.http_port = http_port

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"


class RedisProcess:
    """A throwaway redis-server on a loopback port (Debian's redis-server; cluster/install-redis.sh),
    keeping nothing on disk: the partner gateway's quota counters."""

    def __init__(self, work_dir: str) -> None:
        self.work_dir = work_dir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"async+redis://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> Self:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed: run `bash cluster/install-redis.sh` (make services)")
        os.makedirs(self.work_dir, exist_ok=True)
        self.port = self.port or free_port()
        arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = open(os.path.join(self.work_dir, "redis.log"), "ab")  # noqa: SIM115 (handed to the child)
        self.process = subprocess.Popen(
            [executable, *arguments, "--dir", self.work_dir], stdout=log, stderr=log, cwd=self.work_dir
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                probe.sendall(b"PING\r\n")
                if probe.recv(16).startswith(b"+PONG"):
                    return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}: see {self.work_dir}/redis.log")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def start_business(
    router: str, registry: str, work_dir: str, started: list[ServiceProcess]
) -> tuple[ScoringProcess, LendingProcess, RiskProcess]:
    """A scoring node over `registry`, a lending server over the ledger at `router` and a risk
    server over both, started in that order under `work_dir` (quiet logs); each is appended to
    `started` as it starts, for the caller to stop in reverse."""
    scoring = ScoringProcess(registry, ["--log-level", "WARNING"]).start()
    started.append(scoring)
    lending = LendingProcess(os.path.join(work_dir, "lending"), ["--router", router, "--log-level", "WARNING"])
    started.append(lending.start())
    upstream = ["--scoring", scoring.address, "--router", router, "--lending", lending.address]
    risk = RiskProcess(os.path.join(work_dir, "risk"), [*upstream, "--log-level", "WARNING"])
    started.append(risk.start())
    return scoring, lending, risk


class RouterProcess(ServiceProcess):
    """A `yunkai router` (give it `--nodes ...` in extra_args for a new cluster)."""

    kind = "router"


class EtcdProcess:
    """A throwaway one-member etcd on loopback (Debian's etcd-server; cluster/install-etcd.sh),
    with its data in `data_dir`. Restarts keep its ports and its data. With `tls_dir`, clients
    speak mutual TLS with the etcd CA there (etcd-ca.pem, etcd-server.pem/.key; routers present
    etcd-client.pem/.key) and etcd admits no other certificate."""

    def __init__(self, data_dir: str, log_path: str | None = None, tls_dir: str | None = None) -> None:
        self.data_dir = data_dir
        self.tls_dir = tls_dir
        self.log_path = log_path or os.path.join(os.path.dirname(data_dir.rstrip("/")) or ".", "etcd.log")
        self.client_port = 0
        self.peer_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """The router's --metastore for this etcd."""
        return f"etcd://{self.endpoint}"

    def start(self, timeout_s: float = 30.0) -> Self:
        binary = shutil.which("etcd")
        if binary is None:
            raise ProcessFailed("etcd is not installed: run cluster/install-etcd.sh (Debian's etcd-server)")
        if not self.client_port:
            self.client_port, self.peer_port = free_port(), free_port()
        scheme = "http" if self.tls_dir is None else "https"
        client, peer = f"{scheme}://127.0.0.1:{self.client_port}", f"http://127.0.0.1:{self.peer_port}"
        command = [
            binary, "--name", "yunkai", "--data-dir", self.data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"yunkai={peer}", "--logger", "zap", "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.tls_dir is not None:
            files = {name: os.path.join(self.tls_dir, name) for name in ("etcd-ca.pem", "etcd-server.pem")}
            command += [
                "--cert-file", files["etcd-server.pem"],
                "--key-file", os.path.join(self.tls_dir, "etcd-server.key"),
                "--client-cert-auth", "--trusted-ca-file", files["etcd-ca.pem"],
            ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ProcessFailed(f"etcd exited with {self.process.returncode}:\n{_tail(self.log_path, 30)}")
            try:
                with urllib.request.urlopen(f"{client}/health", timeout=1, context=self._client_tls()) as reply:
                    if json.loads(reply.read()).get("health") == "true":
                        return self
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        self.process.kill()
        raise ProcessFailed(f"etcd did not become healthy in {timeout_s}s:\n{_tail(self.log_path, 30)}")

    def _client_tls(self) -> ssl.SSLContext | None:
        """What a client of this etcd presents (the routers' etcd client certificate)."""
        if self.tls_dir is None:
            return None
        context = ssl.create_default_context(cafile=os.path.join(self.tls_dir, "etcd-ca.pem"))
        context.load_cert_chain(
            os.path.join(self.tls_dir, "etcd-client.pem"), os.path.join(self.tls_dir, "etcd-client.key")
        )
        return context

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def free_port() -> int:
    """A TCP port free on loopback now (for a process about to listen on it: the scripts'
    and tests' local services that take no --port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tail(path: str, lines: int) -> str:
    try:
        with open(path, "rb") as handle:
            return b"".join(handle.readlines()[-lines:]).decode(errors="replace")
    except OSError:
        return ""


def _await_serving(process: subprocess.Popen[bytes], timeout_s: float, log_path: str) -> int:
    assert process.stdout is not None
    found: list[int] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("event") == "serving":
                found.append(int(message["port"]))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not found:
        if process.poll() is not None:
            raise ProcessFailed(f"the process exited with {process.returncode}:\n{_tail(log_path, 30)}")
        reader.join(0.05)
    if not found:
        process.kill()
        raise ProcessFailed(f"the process did not report serving in {timeout_s}s:\n{_tail(log_path, 30)}")
    return found[0]
