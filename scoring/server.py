"""The scoring process: `yunkai scoring serve --registry DIR --port P`.

It speaks the Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`, as Triton
does), so unmodified clients such as `tritonclient.grpc` work: live/ready, server and model
metadata, ModelInfer with typed (`contents.fp32_contents`) or binary (`raw_input_contents`)
inputs, answered in the same form, and the repository index/load/unload calls. The model is
fed one input, `features` FP32 [N, F], and answers `probability` FP32 [N] (positive class).
Checked calls to one version that arrive together share one onnxruntime run (scoring/batching.py).
Sessions run on the event loop: one intra-op thread each, and a single row scores in tens of
microseconds, so a thread hop would cost more than it saves.

Monitoring (scoring/monitor.py): every scored row, the challenger's in shadow included, enters its
version's drift window, and the scores of a call that carries an `id` are kept for outcomes.
`ModelOutcome` (yunkai extension, audited) joins labels to those scores; `ModelMonitor`
(operators) reports windowed PSI per feature and on the score, and the AUC on outcomes; the same
figures are Prometheus gauges, computed when scraped (yunkai_scoring_drift_*, _outcome_*), and
absent until their minimum sample is there.

Champion and challenger (scoring/champion.py): a call that names no version (or the champion's)
is answered by the champion. When the model has a challenger, `share` of those calls are also
queued for the challenger (Shadow): it scores the same rows after the answer has left, and its
scores are logged beside the champion's (a `shadow` JSON log line) and counted
(yunkai_scoring_shadow_*); a challenger that fails, or a full queue, costs the caller nothing.
`RepositoryModelDeploy|Promote|Rollback` (yunkai extensions, operators only, audited) change
the roles: the record on disk first (registry.write_roles), then the served set in one swap.

Reasons (scoring/reasons.py, a yunkai extension): a ModelInfer with `reasons_max` K (1 to 10)
also gets each row's K largest SHAP contributions, phrased, in `reasons`; they are computed on
the event loop from the version's SHAP tables after the batch answers (tens of microseconds a
row), for the caller's rows only. Without it nothing is computed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message
from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

import serving
from proto import inference_pb2 as pb
from scoring import champion, reasons, service
from scoring.batching import DELAY_S_MAX, ROWS_MAX_DEFAULT, Batcher
from scoring.monitor import (
    ID_CHARS_MAX,
    OUTCOMES_PER_CALL_MAX,
    WINDOW_ROWS_DEFAULT,
    WINDOW_ROWS_MAX,
    WINDOW_ROWS_MIN_DEFAULT,
    Monitors,
    Outcome,
    Report,
)
from scoring.registry import Roles
from scoring.service import InvalidInput, LoadFailed, ModelStore, ModelVersions, NotFound
from serving import BadRequest, Context, parse_request

log = logging.getLogger("yunkai.scoring")

INFERENCE_SERVICE = "inference.GRPCInferenceService"
INPUT_NAME = "features"
OUTPUT_NAME = "probability"
DATATYPE = "FP32"
PLATFORM = "onnxruntime_onnx"
SERVER_VERSION = "1"

DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 8001,
    "registry": None,
    "metrics_port": None,
    "log_level": "INFO",
    "batch_delay_us": 0,
    "batch_rows_max": ROWS_MAX_DEFAULT,
    "drift_window_rows": WINDOW_ROWS_DEFAULT,
    "drift_rows_min": WINDOW_ROWS_MIN_DEFAULT,
}

_LATENCY_BUCKETS_S = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
_ROWS_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
_DIFFERENCE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SHADOW_QUEUE_MAX = 1024  # calls waiting for their challenger's run; past it a shadow is dropped (counted)
SHADOW_ROWS_LOGGED_MAX = 256  # rows of one call whose scores go into its `shadow` log line
# How each refusal is answered; anything else is a bug and fails the call loudly.
REFUSALS: serving.Refusals = (
    ((BadRequest, InvalidInput, champion.BadShare, reasons.BadAsk), grpc.StatusCode.INVALID_ARGUMENT),
    ((NotFound, champion.UnknownVersion), grpc.StatusCode.NOT_FOUND),
    ((LoadFailed, champion.Conflict, reasons.NoReasons), grpc.StatusCode.FAILED_PRECONDITION),
)
requests_total = Counter("yunkai_scoring_requests_total", "Inference-protocol RPCs answered", ["method", "status"])
request_latency_s = Histogram(
    "yunkai_scoring_request_latency_seconds", "RPC latency in the server", ["method"], buckets=_LATENCY_BUCKETS_S
)
queue_latency_s = Histogram(
    "yunkai_scoring_queue_latency_seconds", "Time a batch stayed open", ["model"], buckets=_LATENCY_BUCKETS_S
)
compute_latency_s = Histogram(
    "yunkai_scoring_compute_latency_seconds", "onnxruntime time per batch", ["model"], buckets=_LATENCY_BUCKETS_S
)
batch_rows = Histogram("yunkai_scoring_batch_rows", "Rows per onnxruntime run", ["model"], buckets=_ROWS_BUCKETS)
shadow_total = Counter(
    "yunkai_scoring_shadow_requests_total",
    "Calls the challenger scored in shadow (outcome: scored, failed, dropped)",
    ["model", "champion", "challenger", "outcome"],
)
shadow_difference = Histogram(
    "yunkai_scoring_shadow_score_difference",
    "|challenger score - champion score| per row scored in shadow",
    ["model", "champion", "challenger"],
    buckets=_DIFFERENCE_BUCKETS,
)
outcomes_total = Counter(
    "yunkai_scoring_outcomes_total",
    "Outcomes reported (result: recorded, exists, unknown_score, conflicts)",
    ["model", "result"],
)
OUTCOME_RESULTS = {
    Outcome.RECORDED: pb.OUTCOME_RECORDED,
    Outcome.EXISTS: pb.OUTCOME_EXISTS,
    Outcome.UNKNOWN_SCORE: pb.OUTCOME_UNKNOWN_SCORE,
    Outcome.CONFLICTS: pb.OUTCOME_CONFLICTS,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    serving.add_common_arguments(parser)
    parser.add_argument("--registry", type=Path, metavar="DIR", help="model registry folder (required)")
    parser.add_argument(
        "--batch-delay-us",
        type=int,
        help=f"how long a batch waits for concurrent calls, 0 to {int(DELAY_S_MAX * 1e6)} µs "
        "(default 0: only calls that arrive together share a run)",
    )
    parser.add_argument("--batch-rows-max", type=int, help=f"most rows in one run (default {ROWS_MAX_DEFAULT})")
    parser.add_argument(
        "--drift-window-rows",
        type=int,
        help=f"rows per model version that drift is measured over, the newest (default {WINDOW_ROWS_DEFAULT}, "
        f"at most {WINDOW_ROWS_MAX})",
    )
    parser.add_argument(
        "--drift-rows-min",
        type=int,
        help=f"rows the window needs before PSI is reported (default {WINDOW_ROWS_MIN_DEFAULT})",
    )


def main(args: argparse.Namespace) -> int:
    return serving.main(args, command="scoring serve", section="scoring", defaults=DEFAULTS, check=_check, serve=_serve)


def _check(settings: dict[str, Any]) -> str | None:
    if not settings["registry"]:
        return "--registry is required (or YUNKAI_SCORING_REGISTRY)"
    delay_us, rows_max = int(settings["batch_delay_us"]), int(settings["batch_rows_max"])
    if not 0 <= delay_us <= DELAY_S_MAX * 1e6 or rows_max < 1:
        return f"--batch-delay-us must be 0 to {int(DELAY_S_MAX * 1e6)}, --batch-rows-max at least 1"
    window_rows, rows_min = int(settings["drift_window_rows"]), int(settings["drift_rows_min"])
    if not 1 <= rows_min <= window_rows <= WINDOW_ROWS_MAX:
        return f"need 1 <= --drift-rows-min <= --drift-window-rows <= {WINDOW_ROWS_MAX}"
    return None


async def _serve(settings: dict[str, Any]) -> None:
    store = ModelStore(Path(settings["registry"]))
    try:
        store.load_all()
    except LoadFailed as error:
        raise serving.StartupError(str(error)) from error
    await serving.serve(
        settings,
        role="scoring",
        services=[INFERENCE_SERVICE],
        app=lambda server, port: _scoring(settings, store, server),
        log=log,
    )


@contextlib.asynccontextmanager
async def _scoring(
    settings: dict[str, Any], store: ModelStore, server: grpc.aio.Server
) -> AsyncIterator[Mapping[str, object]]:
    batcher = Batcher(int(settings["batch_delay_us"]) / 1e6, int(settings["batch_rows_max"]), observe_batch)
    monitors = Monitors(int(settings["drift_window_rows"]), int(settings["drift_rows_min"]))
    shadow = Shadow(monitors)
    server.add_generic_rpc_handlers([InferenceService(store, batcher, shadow, monitors).handler()])
    gauges = MonitorGauges(store, monitors)
    REGISTRY.register(gauges)
    try:
        async with asyncio.TaskGroup() as tasks:
            worker = tasks.create_task(shadow.run())
            try:
                yield {
                    "registry": str(store.root),
                    "models": {name: sorted(m.versions) for name, m in store.models.items()},
                    "champions": {name: m.roles.champion for name, m in store.models.items()},
                    "drift_window_rows": monitors.rows_max,
                    "drift_rows_min": monitors.rows_min,
                }
            finally:
                worker.cancel()
    finally:
        REGISTRY.unregister(gauges)


@dataclass(frozen=True)
class ShadowCall:
    """One answered call, to be scored again by the challenger of the same set."""

    model: ModelVersions
    request_id: str
    features: npt.NDArray[np.float32]
    scores: npt.NDArray[np.float32]  # the champion's, as answered


class Shadow:
    """The challenger's runs, off the callers' path: one bounded queue, one worker task."""

    def __init__(self, monitors: Monitors) -> None:
        self.queue: asyncio.Queue[ShadowCall] = asyncio.Queue(SHADOW_QUEUE_MAX)
        self.draw = random.Random()
        self.monitors = monitors

    def offer(self, call: ShadowCall) -> None:
        """Queue `call` for its challenger, for `share` of calls; drop it (counted) if the queue is full."""
        challenger, roles = call.model.challenger, call.model.roles
        if challenger is None or self.draw.random() >= roles.share:
            return
        try:
            self.queue.put_nowait(call)
        except asyncio.QueueFull:
            shadow_total.labels(challenger.name, str(roles.champion), str(challenger.version), "dropped").inc()

    async def run(self) -> None:
        while True:
            self.score(await self.queue.get())

    def score(self, call: ShadowCall) -> None:
        challenger, roles = call.model.challenger, call.model.roles
        assert challenger is not None, "only calls with a challenger are queued"
        labels = (challenger.name, str(roles.champion), str(challenger.version))
        try:
            service.check_features(call.features, challenger)
            scores = challenger.score(call.features)
        except Exception as error:  # the challenger's failure is logged and counted, never the caller's
            shadow_total.labels(*labels, "failed").inc()
            log.warning(
                "shadow failed", extra={"model": labels[0], "challenger": challenger.version, "error": repr(error)}
            )
            return
        shadow_total.labels(*labels, "scored").inc()
        observe(self.monitors, challenger, call.request_id, call.features, scores)
        difference = shadow_difference.labels(*labels)
        for value in np.abs(scores - call.scores).tolist():
            difference.observe(value)
        shown = slice(0, SHADOW_ROWS_LOGGED_MAX)
        log.info(
            "shadow",
            extra={
                "model": challenger.name,
                "id": call.request_id,
                "champion": roles.champion,
                "challenger": challenger.version,
                "rows": len(scores),
                "champion_scores": call.scores[shown].tolist(),
                "challenger_scores": scores[shown].tolist(),
            },
        )


def roles_reply(name: str, roles: Roles) -> pb.ModelRoles:
    return pb.ModelRoles(
        model_name=name,
        champion=roles.champion,
        challenger=roles.challenger or 0,
        share=roles.share,
        previous=roles.previous or 0,
    )


def row_reasons_message(row: reasons.RowReasons, expected_margin: float) -> pb.RowReasons:
    return pb.RowReasons(
        reasons=[
            pb.ScoreReason(
                feature=reason.feature,
                value=reason.value,
                contribution=reason.contribution,
                direction=pb.RAISES_SCORE if reason.contribution > 0 else pb.LOWERS_SCORE,
                phrase=reason.phrase,
            )
            for reason in row.reasons
        ],
        expected_margin=expected_margin,
        others_margin=row.others,
    )


def observe_batch(model: service.LoadedVersion, rows: int, waited_s: float, compute_s: float) -> None:
    queue_latency_s.labels(model.name).observe(waited_s)
    compute_latency_s.labels(model.name).observe(compute_s)
    batch_rows.labels(model.name).observe(rows)


def observe(
    monitors: Monitors,
    model: service.LoadedVersion,
    call_id: str,
    features: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
) -> None:
    monitors.observe(model.name, model.version, model.reference, call_id, features, scores)


def decode_features(tensor: Any, raw: list[bytes] | None) -> npt.NDArray[np.float32]:
    """The `features` input as a [N, F] array; BadRequest (naming the input) if it is malformed."""
    if tensor.name != INPUT_NAME:
        raise BadRequest(f"unknown input {tensor.name!r}; the model takes one input, {INPUT_NAME!r}")
    if tensor.datatype != DATATYPE:
        raise BadRequest(f"input {INPUT_NAME!r} has datatype {tensor.datatype or 'none'}, expected {DATATYPE}")
    shape = list(tensor.shape)
    if len(shape) != 2 or any(d < 0 for d in shape):
        raise BadRequest(f"input {INPUT_NAME!r} has shape {shape}, expected [N, F]")
    count = shape[0] * shape[1]
    if count > service.ROWS_MAX * 4096:
        raise BadRequest(f"input {INPUT_NAME!r} with shape {shape} is too large")
    if raw is not None:
        data = raw[0]
        if len(data) != count * 4:
            raise BadRequest(
                f"input {INPUT_NAME!r}: raw_input_contents has {len(data)} bytes; shape {shape} of {DATATYPE} "
                f"needs {count * 4} (a value is missing or extra)"
            )
        return np.frombuffer(data, dtype="<f4").reshape(shape)
    values = tensor.contents.fp32_contents
    if len(values) != count:
        others = [f.name for f, _ in tensor.contents.ListFields() if f.name != "fp32_contents"]
        hint = f" (it sent {', '.join(others)}; send fp32_contents)" if others else " (a value is missing or extra)"
        raise BadRequest(f"input {INPUT_NAME!r} has {len(values)} FP32 values; shape {shape} needs {count}{hint}")
    return np.asarray(values, dtype=np.float32).reshape(shape)


class InferenceService:
    """inference.GRPCInferenceService over a ModelStore."""

    def __init__(self, store: ModelStore, batcher: Batcher, shadow: Shadow, monitors: Monitors) -> None:
        self.store = store
        self.batcher = batcher
        self.shadow = shadow
        self.monitors = monitors
        self.reloading = asyncio.Lock()  # one load/unload at a time; inference never waits on it

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, serving.Handler] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
            "RepositoryIndex": self.repository_index,
            "RepositoryModelLoad": self.repository_model_load,
            "RepositoryModelUnload": self.repository_model_unload,
            "RepositoryModelDeploy": self.repository_model_deploy,
            "RepositoryModelPromote": self.repository_model_promote,
            "RepositoryModelRollback": self.repository_model_rollback,
            "ModelOutcome": self.model_outcome,
            "ModelMonitor": self.model_monitor,
        }
        return serving.unary_service(INFERENCE_SERVICE, methods, REFUSALS, requests_total, request_latency_s, log)

    async def server_live(self, data: bytes, context: Context) -> Message:
        parse_request(pb.ServerLiveRequest, data)
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, data: bytes, context: Context) -> Message:
        parse_request(pb.ServerReadyRequest, data)
        return pb.ServerReadyResponse(ready=True)

    async def model_ready(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.ModelReadyRequest, data)
        try:
            self.store.get(request.name, request.version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, data: bytes, context: Context) -> Message:
        parse_request(pb.ServerMetadataRequest, data)
        return pb.ServerMetadataResponse(name="yunkai-scoring", version=SERVER_VERSION, extensions=["model_repository"])

    async def model_metadata(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.ModelMetadataRequest, data)
        model = self.store.get(request.name, request.version)
        versions = sorted(self.store.models[request.name].versions)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in versions],
            platform=PLATFORM,
            inputs=[tensor(name=INPUT_NAME, datatype=DATATYPE, shape=[-1, len(model.feature_names)])],
            outputs=[tensor(name=OUTPUT_NAME, datatype=DATATYPE, shape=[-1])],
            feature_names=model.feature_names,
            reasons_max=0 if model.reasons is None else reasons.REASONS_MAX,
        )

    async def model_infer(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.ModelInferRequest, data)
        # One read of the store: the champion and challenger of this call belong to one set.
        model_set = self.store.model(request.model_name)
        model = model_set.get(request.model_name, request.model_version)
        if len(request.inputs) != 1:
            raise BadRequest(f"{len(request.inputs)} inputs; the model takes one, {INPUT_NAME!r} FP32 [N, F]")
        for asked in request.outputs:
            if asked.name != OUTPUT_NAME:
                raise BadRequest(f"unknown output {asked.name!r}; the model has one, {OUTPUT_NAME!r}")
        raw = list(request.raw_input_contents) or None
        if raw is not None and len(raw) != 1:
            raise BadRequest(f"{len(raw)} raw_input_contents for 1 input")
        features = decode_features(request.inputs[0], raw)
        service.check_features(features, model)
        explained = None
        if request.reasons_max:
            explained = reasons.ask(model.reasons, model.name, model.version, len(features), request.reasons_max)
        scores = await self.batcher.score(model, features)
        observe(self.monitors, model, request.id, features, scores)
        if model is model_set.default:
            self.shadow.offer(ShadowCall(model_set, request.id, features, scores))
        output = pb.ModelInferResponse.InferOutputTensor(name=OUTPUT_NAME, datatype=DATATYPE, shape=[len(scores)])
        reply = pb.ModelInferResponse(
            model_name=model.name, model_version=str(model.version), id=request.id, outputs=[output]
        )
        # Answer in the form asked: Triton's clients read raw_output_contents when they sent raw.
        if raw is not None:
            reply.raw_output_contents.append(scores.astype("<f4").tobytes())
        else:
            reply.outputs[0].contents.fp32_contents.extend(scores.tolist())
        if explained is not None:
            rows = explained.top(features, request.reasons_max)
            reply.reasons.extend(row_reasons_message(row, explained.expected_margin) for row in rows)
        return reply

    async def repository_index(self, data: bytes, context: Context) -> Message:
        parse_request(pb.RepositoryIndexRequest, data)
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                entry(name=name, version=str(v), state="READY")
                for name, model in sorted(self.store.models.items())
                for v in sorted(model.versions)
            ]
        )

    async def repository_model_load(self, data: bytes, context: Context) -> Message:
        """Read every version of the model from disk and swap them in at once; on any failure the
        versions that served before keep serving and the caller gets the reason."""
        request = parse_request(pb.RepositoryModelLoadRequest, data)
        async with self.reloading:
            try:
                loaded = await asyncio.to_thread(self.store.read, request.model_name)
            except LoadFailed as error:
                log.warning("load failed", extra={"model": request.model_name, "error": str(error)})
                raise
            self.store.install(request.model_name, loaded)
            self.monitors.keep_only(request.model_name, loaded.versions)
        log.info("loaded", extra={"model": request.model_name, "versions": sorted(loaded.versions)})
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.RepositoryModelUnloadRequest, data)
        async with self.reloading:
            self.store.unload(request.model_name)
            self.monitors.keep_only(request.model_name, ())
        log.info("unloaded", extra={"model": request.model_name})
        return pb.RepositoryModelUnloadResponse()

    async def repository_model_deploy(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.RepositoryModelDeployRequest, data)
        name, version, share = request.model_name, int(request.version), float(request.share)
        return await self.change_roles(
            name, lambda roles, on_disk: champion.deploy(name, roles, version, share, on_disk)
        )

    async def repository_model_promote(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.RepositoryModelPromoteRequest, data)
        name = request.model_name
        return await self.change_roles(name, lambda roles, _: champion.promote(name, roles))

    async def repository_model_rollback(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.RepositoryModelRollbackRequest, data)
        name = request.model_name
        return await self.change_roles(name, lambda roles, _: champion.rollback(name, roles))

    async def change_roles(self, name: str, change: Callable[[Roles, list[int]], Roles]) -> Message:
        """Apply a transition of scoring/champion.py: the record is written durably, then the new
        set swapped in at once; a refusal or a failed load leaves both as they were."""
        async with self.reloading:
            before = self.store.model(name).roles
            changed = await asyncio.to_thread(self.store.change_roles, name, change)
            self.store.install(name, changed)
        log.info("roles changed", extra={"model": name, "before": str(before), "after": str(changed.roles)})
        return roles_reply(name, changed.roles)

    async def model_outcome(self, data: bytes, context: Context) -> Message:
        """Join each outcome to the kept scores of its row; one result per outcome, in order. A
        malformed outcome (label not 0 or 1, no id) refuses the whole call and records nothing."""
        request = parse_request(pb.ModelOutcomeRequest, data)
        model = self.store.model(request.model_name)  # NotFound naming the models there are
        outcomes = check_outcomes(request)
        given = {}
        for index, outcome in enumerate(request.outcomes):
            if outcome.version or outcome.HasField("score"):
                where = f"outcomes[{index}] (id {outcome.id!r}, row {outcome.row})"
                if not (outcome.version and outcome.HasField("score")):
                    raise BadRequest(f"{where}: a kept score needs both version and score")
                if not 0.0 <= outcome.score <= 1.0:
                    raise BadRequest(f"{where}: score {outcome.score} is not a probability")
                if outcome.version in model.versions:  # a version unloaded since: its outcome counts nowhere
                    given[index] = (outcome.version, outcome.score, model.versions[outcome.version].reference)
        results = self.monitors.record(request.model_name, outcomes, given)
        for result in results:
            outcomes_total.labels(request.model_name, result.value).inc()
        return pb.ModelOutcomeResponse(results=[OUTCOME_RESULTS[r] for r in results])

    async def model_monitor(self, data: bytes, context: Context) -> Message:
        request = parse_request(pb.ModelMonitorRequest, data)
        names = [request.model_name] if request.model_name else sorted(self.store.models)
        for name in names:
            self.store.model(name)  # NotFound naming the models there are
        return pb.ModelMonitorResponse(
            versions=[monitor_reply(r, role) for r, role in reports(self.store, self.monitors, names)]
        )


def check_outcomes(request: pb.ModelOutcomeRequest) -> list[tuple[str, int, int]]:
    """The outcomes as (id, row, label); BadRequest naming the first malformed one."""
    count = len(request.outcomes)
    if not 1 <= count <= OUTCOMES_PER_CALL_MAX:
        raise BadRequest(f"{count} outcomes; a call takes 1 to {OUTCOMES_PER_CALL_MAX}")
    checked = []
    for index, outcome in enumerate(request.outcomes):
        where = f"outcomes[{index}] (id {outcome.id!r}, row {outcome.row})"
        if outcome.label not in (0, 1):
            raise BadRequest(f"{where}: label {outcome.label}; a label is 0 or 1 (1: the event the model predicts)")
        if not 1 <= len(outcome.id) <= ID_CHARS_MAX:
            raise BadRequest(f"{where}: the id of the scoring call must be 1 to {ID_CHARS_MAX} characters")
        if not 0 <= outcome.row < service.ROWS_MAX:
            raise BadRequest(f"{where}: row must be 0 to {service.ROWS_MAX - 1}")
        checked.append((outcome.id, int(outcome.row), int(outcome.label)))
    return checked


def reports(store: ModelStore, monitors: Monitors, names: list[str]) -> Iterator[tuple[Report, str]]:
    """Each loaded version of `names` (champion first) with its role."""
    for name in names:
        model = store.models.get(name)
        if model is None:
            continue  # unloaded since the caller looked
        roles = model.roles
        order = sorted(model.versions, key=lambda v: (v != roles.champion, v != roles.challenger, -v))
        for version in order:
            role = "champion" if version == roles.champion else "challenger" if version == roles.challenger else ""
            yield monitors.report(name, version, model.versions[version].reference), role


def monitor_reply(report: Report, role: str) -> pb.VersionMonitor:
    reply = pb.VersionMonitor(
        model_name=report.name,
        version=report.version,
        role=role,
        window_rows=report.window_rows,
        window_rows_max=report.window_rows_max,
        window_rows_min=report.window_rows_min,
        features_binned=report.features_binned,
        features=[pb.FeatureDrift(name=n, psi=p) for n, p in report.feature_psi.items()],
        outcome_positives=report.positives,
        outcome_negatives=report.negatives,
        outcome_class_min=report.class_min,
        outcomes_max=report.outcomes_max,
    )
    if report.window_age_s is not None:
        reply.window_age_s = report.window_age_s
    if report.score_psi is not None:
        reply.score_psi = report.score_psi
    if report.auc is not None:
        reply.outcome_auc = report.auc
    return reply


class MonitorGauges(Collector):
    """The monitors as Prometheus gauges, computed when scraped (on the metrics server's thread):
    nothing on the scoring path. A PSI or AUC below its minimum sample is absent, not 0."""

    def __init__(self, store: ModelStore, monitors: Monitors) -> None:
        self.store = store
        self.monitors = monitors

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families().values())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = self._families()
        for report, _ in reports(self.store, self.monitors, sorted(self.store.models)):
            labels = [report.name, str(report.version)]
            families["rows"].add_metric(labels, report.window_rows)
            if report.score_psi is not None:
                families["score"].add_metric(labels, report.score_psi)
            for feature, value in report.feature_psi.items():
                families["feature"].add_metric([*labels, feature], value)
            families["outcomes"].add_metric([*labels, "1"], report.positives)
            families["outcomes"].add_metric([*labels, "0"], report.negatives)
            if report.auc is not None:
                families["auc"].add_metric(labels, report.auc)
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        version = ["model", "version"]
        return {
            "score": GaugeMetricFamily(
                "yunkai_scoring_drift_psi",
                "PSI of the scores in the drift window vs the held-out reference (absent below the minimum rows)",
                labels=version,
            ),
            "feature": GaugeMetricFamily(
                "yunkai_scoring_drift_feature_psi",
                "PSI of a feature in the drift window vs the training rows (absent below the minimum rows)",
                labels=[*version, "feature"],
            ),
            "rows": GaugeMetricFamily(
                "yunkai_scoring_drift_window_rows", "Scored rows in the drift window", labels=version
            ),
            "auc": GaugeMetricFamily(
                "yunkai_scoring_outcome_auc",
                "AUC of the scores against reported outcomes (absent until each class has the minimum)",
                labels=version,
            ),
            "outcomes": GaugeMetricFamily(
                "yunkai_scoring_outcome_rows", "Outcomes the AUC is computed over, by label", labels=[*version, "label"]
            ),
        }
