"""The scoring server as a client sees it: a real `yunkai scoring serve` process on loopback,
over the Open Inference Protocol v2, with a small credit_risk registry trained for the tests."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from clients.scoring import BadScoringReply, ScoringClient
from cluster.local import _await_serving
from proto import inference_pb2 as pb, inference_pb2_grpc
from scoring import datasets, parity, registry, train
from tests.conftest import channel, tls

ROOT = Path(__file__).resolve().parent.parent
MODEL = "credit_risk"
ROWS = 8


class ScoringServer:
    """A `yunkai scoring serve` process with a blocking stub."""

    def __init__(self, registry_dir: Path, log_path: Path, *flags: str) -> None:
        self.log = log_path.open("wb")
        command = ["scoring", "serve", "--registry", str(registry_dir), "--port", "0", *flags]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", *command],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.port = _await_serving(self.process, 60.0, str(log_path))
        self.address = f"127.0.0.1:{self.port}"
        self.channel = channel(self.address, "operator")
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.metrics_url = ""

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))

    def stop(self) -> int:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def data() -> datasets.Dataset:
    return datasets.LOADERS[MODEL]()


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory, data: datasets.Dataset) -> Path:
    """Version 1 (20 trees) and version 2 (30 trees): two models that score differently. The
    larger one comes second, as the quality gate admits only a version no worse than the last."""
    root = tmp_path_factory.mktemp("registry")
    for version, iterations in ((1, 20), (2, 30)):
        outcome = train.train_one(MODEL, data, root, version, iterations=iterations)
        assert outcome.admitted, outcome.parity.reason
    return root


@pytest.fixture(scope="module")
def server(registry_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScoringServer]:
    metrics_port = free_port()
    flags = ["--batch-delay-us", "1000", "--metrics-port", str(metrics_port)]
    handle = ScoringServer(registry_dir, tmp_path_factory.mktemp("logs") / "scoring.log", *flags)
    handle.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    yield handle
    assert handle.stop() == 0, "the server did not stop cleanly on SIGTERM"


@pytest.fixture
def own_server(registry_dir: Path, tmp_path: Path) -> Iterator[tuple[ScoringServer, Path]]:
    """A server over a private copy of the registry, for tests that change what is on disk."""
    root = tmp_path / "registry"
    shutil.copytree(registry_dir, root)
    handle = ScoringServer(root, tmp_path / "scoring.log")
    yield handle, root
    assert handle.stop() == 0


def expected(root: Path, version: int, rows: np.ndarray) -> np.ndarray:
    return parity.onnx_probabilities(parity.open_session(registry.model_path(root, MODEL, version)), rows)


def typed_request(rows: np.ndarray, version: str = "", datatype: str = "FP32") -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype=datatype, shape=list(rows.shape))
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    return pb.ModelInferRequest(model_name=MODEL, model_version=version, inputs=[tensor])


def raw_request(rows: np.ndarray, version: str = "") -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=list(rows.shape))
    return pb.ModelInferRequest(
        model_name=MODEL,
        model_version=version,
        inputs=[tensor],
        raw_input_contents=[rows.astype("<f4").tobytes()],
    )


def refused(call: Callable[..., Any], request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)
    return caught.value


def test_server_is_live_ready_and_describes_its_models(server: ScoringServer, data: datasets.Dataset) -> None:
    assert server.stub.ServerLive(pb.ServerLiveRequest(), timeout=5).live
    assert server.stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
    assert server.stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=5).ready
    assert server.stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="1"), timeout=5).ready
    assert not server.stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="9"), timeout=5).ready
    assert not server.stub.ModelReady(pb.ModelReadyRequest(name="no_such_model"), timeout=5).ready
    meta = server.stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=5)
    assert list(meta.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("features", "FP32", [-1, len(data.feature_names)])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("probability", "FP32", [-1])]
    assert list(meta.feature_names) == data.feature_names
    index = server.stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=5)
    assert [(m.name, m.version, m.state) for m in index.models] == [(MODEL, "1", "READY"), (MODEL, "2", "READY")]


def test_typed_and_raw_inputs_score_as_onnxruntime_does(
    server: ScoringServer, registry_dir: Path, data: datasets.Dataset
) -> None:
    rows = data.features[:ROWS]
    for version in (1, 2):
        want = expected(registry_dir, version, rows)
        typed = server.stub.ModelInfer(typed_request(rows, str(version)), timeout=5)
        assert typed.model_version == str(version)
        assert typed.outputs[0].name == "probability" and list(typed.outputs[0].shape) == [ROWS]
        assert np.allclose(typed.outputs[0].contents.fp32_contents, want, atol=1e-6, rtol=0)
        raw = server.stub.ModelInfer(raw_request(rows, str(version)), timeout=5)
        got = np.frombuffer(raw.raw_output_contents[0], dtype="<f4")
        assert np.allclose(got, want, atol=1e-6, rtol=0)
    default = server.stub.ModelInfer(raw_request(rows), timeout=5)
    assert default.model_version == "2", "the highest version is the default"


TRITON_SCRIPT = """
import json, sys
import numpy as np
import tritonclient.grpc as tc
tls = sys.argv[3]  # mutual TLS as the operator (tests/conftest.py)
client = tc.InferenceServerClient(
    sys.argv[1], ssl=True, root_certificates=f"{tls}/ca.pem",
    private_key=f"{tls}/operator.key", certificate_chain=f"{tls}/operator.pem",
)
rows = np.asarray(json.loads(sys.argv[2]), dtype=np.float32)
features = tc.InferInput("features", list(rows.shape), "FP32")
features.set_data_from_numpy(rows)
result = client.infer("credit_risk", [features], model_version="1", outputs=[tc.InferRequestedOutput("probability")])
meta = client.get_model_metadata("credit_risk")
print(json.dumps({
    "live": client.is_server_live(),
    "ready": client.is_model_ready("credit_risk"),
    "versions": list(meta.versions),
    "scores": result.as_numpy("probability").tolist(),
}))
"""


def test_an_unmodified_tritonclient_round_trips(
    server: ScoringServer, registry_dir: Path, data: datasets.Dataset
) -> None:
    # tritonclient registers its own `inference.*` messages; they cannot share a process with ours.
    rows = data.features[:ROWS]
    done = subprocess.run(
        [sys.executable, "-c", TRITON_SCRIPT, server.address, json.dumps(rows.tolist()), tls("operator").directory],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["live"] and answer["ready"] and answer["versions"] == ["1", "2"]
    assert np.allclose(answer["scores"], expected(registry_dir, 1, rows), atol=1e-6, rtol=0)


def test_bad_input_is_refused_naming_the_problem_and_the_server_keeps_serving(
    server: ScoringServer, data: datasets.Dataset
) -> None:
    rows = data.features[:2].copy()
    width = len(data.feature_names)
    infer = server.stub.ModelInfer

    wrong_width = refused(infer, raw_request(rows[:, :-1]))
    assert wrong_width.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"expected [N, {width}]" in (wrong_width.details() or "")

    wrong_dtype = refused(infer, typed_request(rows, datatype="FP64"))
    assert wrong_dtype.code() == grpc.StatusCode.INVALID_ARGUMENT and "FP64" in (wrong_dtype.details() or "")

    short = raw_request(rows)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    missing_value = refused(infer, short)
    assert missing_value.code() == grpc.StatusCode.INVALID_ARGUMENT and "missing" in (missing_value.details() or "")

    with_nan = rows.copy()
    with_nan[1, 3] = np.nan
    nan = refused(infer, raw_request(with_nan))
    assert nan.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"feature {data.feature_names[3]!r}" in (nan.details() or "") and "NaN" in (nan.details() or "")

    unknown_model = refused(infer, pb.ModelInferRequest(model_name="no_such_model", inputs=raw_request(rows).inputs))
    assert unknown_model.code() == grpc.StatusCode.NOT_FOUND and "no_such_model" in (unknown_model.details() or "")

    unknown_version = refused(infer, raw_request(rows, version="7"))
    assert unknown_version.code() == grpc.StatusCode.NOT_FOUND and "'7'" in (unknown_version.details() or "")

    garbage = server.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    assert refused(garbage, b"\xff\xff\xff").code() == grpc.StatusCode.INVALID_ARGUMENT

    assert len(infer(raw_request(rows), timeout=5).raw_output_contents) == 1, "still serving"


def test_hot_reload_under_concurrent_requests_fails_none_and_a_broken_version_keeps_the_old_one(
    own_server: tuple[ScoringServer, Path], data: datasets.Dataset
) -> None:
    server, root = own_server
    rows = data.features[:4]
    # A new version appears on disk: a copy of version 2 as version 3.
    shutil.copytree(root / MODEL / "2", root / MODEL / "3")
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]

    def send() -> None:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(server.channel)
        while not stop.is_set():
            try:
                reply = stub.ModelInfer(raw_request(rows), timeout=5)
                assert len(reply.raw_output_contents[0]) == 4 * len(rows)
                answered[0] += 1
            except Exception as error:
                failures.append(repr(error))

    senders = [threading.Thread(target=send) for _ in range(4)]
    for thread in senders:
        thread.start()
    try:
        while answered[0] < 50 and not failures:  # requests are flowing before the first reload
            stop.wait(0.01)
        for _ in range(3):
            server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=30)
    finally:
        stop.set()
        for thread in senders:
            thread.join()
    assert not failures, failures[:3]
    assert answered[0] >= 50
    meta = server.stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=5)
    assert list(meta.versions) == ["1", "2", "3"]

    broken = root / MODEL / "4"
    shutil.copytree(root / MODEL / "3", broken)
    (broken / registry.MODEL_FILE).write_bytes(b"not an onnx model")
    failed = refused(server.stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=MODEL))
    assert failed.code() == grpc.StatusCode.FAILED_PRECONDITION and "version 4" in (failed.details() or "")
    assert server.stub.ModelInfer(raw_request(rows), timeout=5).model_version == "3", "the old set still serves"
    assert not server.stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="4"), timeout=5).ready


def test_unload_takes_a_model_away_and_load_brings_it_back(
    own_server: tuple[ScoringServer, Path], data: datasets.Dataset
) -> None:
    server, _ = own_server
    server.stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=5)
    assert not server.stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=5).ready
    assert refused(server.stub.ModelInfer, raw_request(data.features[:1])).code() == grpc.StatusCode.NOT_FOUND
    server.stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=30)
    assert server.stub.ModelReady(pb.ModelReadyRequest(name=MODEL), timeout=5).ready


def test_scoring_client_takes_feature_dicts_and_names_what_is_wrong(
    server: ScoringServer, registry_dir: Path, data: datasets.Dataset
) -> None:
    rows = data.features[:ROWS]
    dicts = [dict(zip(data.feature_names, map(float, row), strict=True)) for row in rows]

    async def run() -> tuple[list[float], list[float], str, str]:
        async with ScoringClient(server.address) as client:
            latest = await client.score(MODEL, dicts)
            first = await client.score(MODEL, dicts, version=1)
            with pytest.raises(ValueError) as missing:
                await client.score(MODEL, [{k: v for k, v in dicts[0].items() if k != data.feature_names[0]}])
            with pytest.raises(ValueError) as unknown:
                await client.score(MODEL, [dicts[0] | {"shoe_size": 42.0}])
            return latest, first, str(missing.value), str(unknown.value)

    latest, first, missing, unknown = asyncio.run(run())
    assert np.allclose(latest, expected(registry_dir, 2, rows), atol=1e-6, rtol=0)
    assert np.allclose(first, expected(registry_dir, 1, rows), atol=1e-6, rtol=0)
    assert data.feature_names[0] in missing and "shoe_size" in unknown


def test_concurrent_calls_share_runs_and_each_gets_its_own_rows_scores(
    server: ScoringServer, registry_dir: Path, data: datasets.Dataset
) -> None:
    calls = 64
    rows = data.features[:calls]
    want = expected(registry_dir, 2, rows)
    runs_seen: list[float] = []
    # Whether calls overlap enough to share a run depends on the machine's pace: each burst
    # must score every row right, and one of a few bursts must share runs.
    for _burst in range(3):
        runs_before = server.metric("yunkai_scoring_batch_rows_count")
        with ThreadPoolExecutor(16) as pool:
            replies = list(
                pool.map(lambda i: server.stub.ModelInfer(raw_request(rows[i : i + 1]), timeout=5), range(calls))
            )
        got = np.concatenate([np.frombuffer(r.raw_output_contents[0], dtype="<f4") for r in replies])
        assert np.allclose(got, want, atol=1e-6, rtol=0)
        runs_seen.append(server.metric("yunkai_scoring_batch_rows_count") - runs_before)
        assert 1 <= runs_seen[-1] <= calls, runs_seen
        if runs_seen[-1] < calls:
            break
    assert min(runs_seen) < calls, f"{calls} concurrent calls took {runs_seen} onnxruntime runs in each burst"
    # Every row scored is in the version's drift window (tests/test_scoring_monitor.py covers PSI).
    assert server.metric('yunkai_scoring_drift_window_rows{model="credit_risk",version="2"}') >= calls


def test_raw_request_packing_matches_the_wire_layout() -> None:
    # Little-endian FP32, row-major: what Triton's clients put in raw_input_contents.
    rows = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    assert raw_request(rows).raw_input_contents[0] == struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)


def test_a_reply_no_scoring_server_should_send_is_refused_by_the_client_not_decided_on() -> None:
    """The client checks what a scoring server answers (a peer's reply is input): one FP32 a
    row, each a probability. A score below 0 would pass every cut-off a flow has ("pd < 0.1")
    and approve; a short tensor would index past its end."""
    good = pb.ModelInferResponse(raw_output_contents=[struct.pack("<2f", 0.25, 1.0)])
    assert ScoringClient._scores(good, 2) == [0.25, 1.0]
    for floats, rows, named in (
        ((-0.01,), 1, "not a probability"),
        ((float("nan"),), 1, "not a probability"),
        ((1.5, 0.2), 2, "row 0"),
        ((0.3,), 2, "want one output of 8 bytes"),
    ):
        reply = pb.ModelInferResponse(raw_output_contents=[struct.pack(f"<{len(floats)}f", *floats)])
        with pytest.raises(BadScoringReply, match=named):
            ScoringClient._scores(reply, rows)
    with pytest.raises(BadScoringReply, match="the reply has \\[\\]"):
        ScoringClient._scores(pb.ModelInferResponse(), 1)
    reasons = pb.ModelInferResponse(reasons=[pb.RowReasons()])
    assert len(ScoringClient._reasons(reasons, 1)) == 1
    with pytest.raises(BadScoringReply, match="1 rows of reasons for 2 rows"):
        ScoringClient._reasons(reasons, 2)
    reasons.reasons[0].reasons.add(direction=99)  # type: ignore[arg-type]  # a value no version has
    with pytest.raises(BadScoringReply, match="direction"):
        ScoringClient._reasons(reasons, 1)
    recorded = pb.ModelOutcomeResponse(results=[pb.OUTCOME_RECORDED])
    assert ScoringClient._outcomes(recorded, 1) == ["recorded"]
    for count, results in ((2, [pb.OUTCOME_RECORDED]), (1, [77])):
        with pytest.raises(BadScoringReply, match="results for"):
            ScoringClient._outcomes(pb.ModelOutcomeResponse(results=results), count)  # type: ignore[arg-type]
