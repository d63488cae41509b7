"""The decision log: every decision, durably, with what it was decided on (RocksDB via rocksdict).

Keys (raw bytes): `d/<application_id>` -> the Decision (inputs, model versions and scores,
flow version and hash, outputs); `r/<application_id>` -> the DecideRequest it answered, so a
repeated request can be told from a different one under the same id. Both go in one
fsync'd batch before the caller is answered; a decision is rewritten only to mark its credit
line opened. Records are checked after they are read (the key says whose they are).
"""

from __future__ import annotations

import os

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from proto import risk_pb2 as pb


def _key(kind: str, application_id: str) -> bytes:
    return f"{kind}/{application_id}".encode()


class DecisionStore:
    """Stored decisions by application id. Synchronous: one event loop calls it, one write at a time."""

    def __init__(self, data_dir: str) -> None:
        os.makedirs(data_dir, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(os.path.join(data_dir, "decisions"), options)
        self._sync = WriteOptions()
        self._sync.sync = True

    def close(self) -> None:
        self._db.close()

    def get(self, application_id: str) -> tuple[pb.DecideRequest, pb.Decision] | None:
        decision_bytes: bytes | None = self._db.get(_key("d", application_id))
        if decision_bytes is None:
            return None
        decision = pb.Decision.FromString(decision_bytes)
        request_bytes = self._db.get(_key("r", application_id))
        assert request_bytes is not None, f"decision {application_id} has no request"
        request = pb.DecideRequest.FromString(request_bytes)
        assert decision.application_id == request.application_id == application_id, application_id
        return request, decision

    def put(self, request: pb.DecideRequest, decision: pb.Decision) -> None:
        assert request.application_id == decision.application_id
        batch = WriteBatch(raw_mode=True)
        batch.put(_key("r", request.application_id), request.SerializeToString(deterministic=True))
        batch.put(_key("d", decision.application_id), decision.SerializeToString(deterministic=True))
        self._db.write(batch, self._sync)

    def mark_opened(self, decision: pb.Decision) -> None:
        decision.credit_line_opened = True
        self._db.put(_key("d", decision.application_id), decision.SerializeToString(deterministic=True), self._sync)
