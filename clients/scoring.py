"""A client of the scoring server: feature dicts in, positive-class probabilities out.

It learns each model's feature order from ModelMetadata (the `feature_names` extension), so
callers name features instead of remembering column positions, and sends one binary
(`raw_input_contents`) FP32 [N, F] tensor per call over the Open Inference Protocol v2.
`score_with_reasons` also asks for the reasons behind each score (the `reasons_max` extension,
scoring/reasons.py), for model versions whose metadata says they have them.
"""

from __future__ import annotations

import struct

import grpc

import serving
from proto import inference_pb2 as pb, inference_pb2_grpc

DEADLINE_DEFAULT_S = 5.0
INPUT_NAME = "features"
OUTPUT_NAME = "probability"


class BadScoringReply(Exception):
    """A reply no scoring server should send (a broken or mismatched one): scores that are not
    probabilities, too few or too many of them, a value an enum does not have. Nothing is to
    be decided on it; callers answer as for a server that did not answer."""


class ScoringClient:
    def __init__(
        self,
        address: str,
        deadline_s: float = DEADLINE_DEFAULT_S,
        credentials: grpc.ChannelCredentials | None = None,
        *,
        insecure: bool = False,
    ) -> None:
        """Mutual TLS with `credentials`, else as the `service` identity of YUNKAI_TLS_DIR;
        plaintext only with `insecure`."""
        if credentials is None and not insecure:
            credentials = serving.client_credentials(serving.resolve_tls(None, "service", False, "service"))
        self.channel = serving.channel(address, credentials, [])
        self.stub = inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.deadline_s = deadline_s
        self.metadata: dict[tuple[str, str], pb.ModelMetadataResponse] = {}

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> ScoringClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def metadata_of(self, model: str, version: int | None = None) -> pb.ModelMetadataResponse:
        """The model's metadata (asked once per model and version: a version never changes)."""
        key = (model, "" if version is None else str(version))
        if key not in self.metadata:
            self.metadata[key] = await self.stub.ModelMetadata(
                pb.ModelMetadataRequest(name=model, version=key[1]), timeout=self.deadline_s
            )
        return self.metadata[key]

    async def features_of(self, model: str, version: int | None = None) -> list[str]:
        """The model's feature names in column order."""
        return list((await self.metadata_of(model, version)).feature_names)

    async def reasons_max_of(self, model: str, version: int | None = None) -> int:
        """The most reasons per row the version gives (0: it was trained without reasons)."""
        return int((await self.metadata_of(model, version)).reasons_max)

    async def score(
        self, model: str, rows: list[dict[str, float]], version: int | None = None, request_id: str = ""
    ) -> list[float]:
        """Probabilities of the positive class, one per row. ValueError naming any missing or
        unknown feature (nothing is sent); grpc.aio.AioRpcError for what the server refuses.
        With a `request_id` (1-128 characters, unique to this call) the server keeps the scores
        for `record_outcomes` to join, by (request_id, row)."""
        if not rows:
            return []
        reply = await self._infer(model, rows, version, 0, request_id)
        return self._scores(reply, len(rows))

    async def score_with_reasons(
        self,
        model: str,
        rows: list[dict[str, float]],
        version: int | None,
        reasons_max: int,
        request_id: str = "",
    ) -> list[tuple[float, pb.RowReasons]]:
        """Each row's probability and up to `reasons_max` reasons behind it (largest first), as
        `score` (`request_id` too); the server refuses a version without reasons
        (FAILED_PRECONDITION) and a reasons_max outside 1 to 10 (INVALID_ARGUMENT)."""
        if not rows:
            return []
        reply = await self._infer(model, rows, version, reasons_max, request_id)
        return list(zip(self._scores(reply, len(rows)), self._reasons(reply, len(rows)), strict=True))

    async def _infer(
        self, model: str, rows: list[dict[str, float]], version: int | None, reasons_max: int, request_id: str
    ) -> pb.ModelInferResponse:
        names = await self.features_of(model, version)
        expected = set(names)
        for index, row in enumerate(rows):
            missing = [n for n in names if n not in row]
            unknown = sorted(set(row) - expected)
            if missing or unknown:
                parts = []
                if missing:
                    parts.append(f"missing {', '.join(missing)}")
                if unknown:
                    parts.append(f"unknown {', '.join(unknown)}")
                raise ValueError(f"rows[{index}] of model {model!r}: {'; '.join(parts)}")
        values = [float(row[n]) for row in rows for n in names]
        request = pb.ModelInferRequest(
            model_name=model,
            model_version="" if version is None else str(version),
            id=request_id,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name=INPUT_NAME, datatype="FP32", shape=[len(rows), len(names)])
            ],
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=OUTPUT_NAME)],
            raw_input_contents=[struct.pack(f"<{len(values)}f", *values)],
            reasons_max=reasons_max,
        )
        reply: pb.ModelInferResponse = await self.stub.ModelInfer(request, timeout=self.deadline_s)
        return reply

    @staticmethod
    def _scores(reply: pb.ModelInferResponse, rows: int) -> list[float]:
        """The reply's probabilities, checked: one FP32 a row, each in [0, 1] (BadScoringReply)."""
        outputs = reply.raw_output_contents
        if len(outputs) != 1 or len(outputs[0]) != 4 * rows:
            sizes = [len(o) for o in outputs]
            raise BadScoringReply(f"{rows} rows want one output of {4 * rows} bytes, the reply has {sizes}")
        scores = list(struct.unpack(f"<{rows}f", outputs[0]))
        bad = [(row, score) for row, score in enumerate(scores) if not 0.0 <= score <= 1.0]  # NaN too
        if bad:
            raise BadScoringReply(f"row {bad[0][0]}'s score {bad[0][1]!r} is not a probability")
        return scores

    @staticmethod
    def _reasons(reply: pb.ModelInferResponse, rows: int) -> list[pb.RowReasons]:
        """The reply's reasons, checked: one RowReasons a row, each direction a known one."""
        if len(reply.reasons) != rows:
            raise BadScoringReply(f"{len(reply.reasons)} rows of reasons for {rows} rows")
        directions = pb.ReasonDirection.values()
        if any(r.direction not in directions for row in reply.reasons for r in row.reasons):
            raise BadScoringReply(f"a reason's direction is none of {sorted(directions)}")
        return list(reply.reasons)

    @staticmethod
    def _outcomes(reply: pb.ModelOutcomeResponse, count: int) -> list[str]:
        """The reply's results, checked: one a sent outcome, each a known one."""
        known = pb.OutcomeResult.values()
        if len(reply.results) != count or any(r not in known for r in reply.results):
            raise BadScoringReply(f"{len(reply.results)} results for {count} outcomes, or one none of {known}")
        return [pb.OutcomeResult.Name(r).lower().removeprefix("outcome_") for r in reply.results]

    async def record_outcomes(
        self, model: str, outcomes: list[tuple[str, int, int]], kept: list[tuple[int, float]] | None = None
    ) -> list[str]:
        """Outcomes of scored rows, each (request_id of the call that scored it, row, label: 1 the
        event the model predicts happened, 0 it did not), at most 10,000 a call; with `kept`, the
        (version, score) the caller stored for each (used if the server keeps none). One result per
        outcome: "recorded", "exists" (the same label before), "unknown_score" (no kept score: never
        scored with that id, or forgotten) or "conflicts" (another label before; kept).
        grpc.aio.AioRpcError when the server refuses the call (unknown model, a label not 0 or 1)."""
        request = pb.ModelOutcomeRequest(model_name=model)
        for index, (call_id, row, label) in enumerate(outcomes):
            outcome = request.outcomes.add(id=call_id, row=row, label=label)
            if kept is not None:
                outcome.version, outcome.score = kept[index]
        reply = await self.stub.ModelOutcome(request, timeout=self.deadline_s)
        return self._outcomes(reply, len(outcomes))
