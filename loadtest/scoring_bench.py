"""`yunkai bench-scoring`: single-row latency at a fixed rate, batched rows/s, model load time.

Issue 5's three measurements of a scoring server, over gRPC on loopback:
  1. Open loop: one-row ModelInfer calls sent at `--rate` per second for `--duration`
     seconds, each on its own schedule whatever the answers do (no coordinated omission:
     latency counts from when the call was due, not when it was sent). HDR histogram.
  2. Throughput: `--concurrency` callers sending `--batch-rows`-row calls back to back.
  3. Load time: RepositoryModelLoad of the model, `--loads` times (sessions built, a row
     test-scored, versions swapped in).
Without `--server` it trains `--model` into a temporary registry and starts its own server.
Requests use raw_input_contents, as tritonclient sends them. With `--reasons K` the one-row
calls of part 1 also ask for K reasons per row (the `reasons_max` extension): run it with
and without to see what reasons add to a call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time

import grpc
import numpy as np
import uvloop
from hdrh.histogram import HdrHistogram

from cluster.local import ScoringProcess
from loadtest import report
from proto import inference_pb2 as pb, inference_pb2_grpc
from serving.transport import role_channel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="HOST:PORT of a running scoring server (default: train and start one)")
    parser.add_argument("--model", default="credit_risk", help="model to score (default credit_risk)")
    parser.add_argument("--rate", type=int, default=1000, help="one-row calls per second (default 1000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the open loop (default 10)")
    parser.add_argument("--batch-rows", type=int, default=4096, help="rows per call, throughput part (default 4096)")
    parser.add_argument("--concurrency", type=int, default=2, help="callers, throughput part (default 2)")
    parser.add_argument("--loads", type=int, default=5, help="model reloads to time (default 5)")
    parser.add_argument(
        "--reasons", type=int, default=0, metavar="K", help="one-row calls also ask for K reasons, 1-10 (default 0)"
    )
    parser.add_argument("--json", help="write the results here")


def main(args: argparse.Namespace) -> int:
    server = None
    address = args.server
    if address is None:
        registry = os.path.join(tempfile.mkdtemp(prefix="yunkai-bench-scoring-"), "models")
        print(f"training {args.model} into {registry} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "cluster.cli", "scoring", "train", "--registry", registry, "--model", args.model],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        server = ScoringProcess(registry, ["--log-level", "WARNING"]).start()
        address = server.address
    try:
        result = uvloop.run(_bench(args, address))
    finally:
        if server is not None:
            server.stop()
    report.record(args, result)
    asked = f" with {args.reasons} reasons" if args.reasons else ""
    print(
        f"{args.model}: one row at {result['offered_per_s']:,}/s{asked}: p50 {result['p50_ms']:.2f} ms, p99"
        f" {result['p99_ms']:.2f} ms, p99.9 {result['p999_ms']:.2f} ms (from due: p99"
        f" {result['p99_from_due_ms']:.2f} ms), errors {result['errors']};"
        f" batched {result['rows_per_s']:,.0f} rows/s; load {result['load_ms_median']:.1f} ms (median)"
    )
    return 0 if result["errors"] == 0 else 1


def _request(model: str, rows: np.ndarray, reasons_max: int = 0) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=list(rows.shape))
    return pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[rows.astype("<f4").tobytes()], reasons_max=reasons_max
    )


async def _bench(args: argparse.Namespace, address: str) -> dict[str, object]:
    async with role_channel(address, "operator") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name=args.model), timeout=10)
        width = int(metadata.inputs[0].shape[-1])
        rng = np.random.default_rng(7)
        one_row = [_request(args.model, rng.random((1, width), dtype=np.float32), args.reasons) for _ in range(64)]
        batch = _request(args.model, rng.random((args.batch_rows, width), dtype=np.float32))
        for request in one_row[:50]:  # warm up the channel and the session
            await stub.ModelInfer(request, timeout=10)

        # 1. Open loop at a fixed rate. Latency is timed with perf_counter: the event loop's
        # clock (uvloop's libuv clock) and its timers have millisecond resolution. Each call
        # is timed twice: from when it was sent (the server's answer time), and from when
        # it was due (adds the load generator's timer lateness, up to ~1 ms).
        sent = HdrHistogram(1, 60_000_000, 3)  # microseconds
        due_based = HdrHistogram(1, 60_000_000, 3)
        errors = 0
        clock = time.perf_counter

        async def call(index: int, due: float) -> None:
            nonlocal errors
            began = clock()
            try:
                await stub.ModelInfer(one_row[index % len(one_row)], timeout=5)
            except grpc.aio.AioRpcError:
                errors += 1
            ended = clock()
            sent.record_value(max(1, int((ended - began) * 1e6)))
            due_based.record_value(max(1, int((ended - due) * 1e6)))

        calls = int(args.rate * args.duration)
        start = clock() + 0.05
        async with asyncio.TaskGroup() as tasks:
            for index in range(calls):
                due = start + index / args.rate
                delay = due - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.create_task(call(index, due))
        seconds = clock() - start

        # 2. Batched throughput.
        loop = asyncio.get_running_loop()
        rows_done = 0
        deadline = loop.time() + 5.0

        async def batched() -> None:
            nonlocal rows_done
            while loop.time() < deadline:
                await stub.ModelInfer(batch, timeout=30)
                rows_done += args.batch_rows

        began = loop.time()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(args.concurrency):
                tasks.create_task(batched())
        rows_per_s = rows_done / (loop.time() - began)

        # 3. Load time.
        loads = []
        for _ in range(args.loads):
            started = time.perf_counter()
            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=args.model), timeout=60)
            loads.append((time.perf_counter() - started) * 1000)

    return {
        "model": args.model,
        "offered_per_s": args.rate,
        "reasons_max": args.reasons,
        "achieved_per_s": calls / seconds,
        "calls": calls,
        "errors": errors,
        "p50_ms": sent.get_value_at_percentile(50) / 1000,
        "p99_ms": sent.get_value_at_percentile(99) / 1000,
        "p999_ms": sent.get_value_at_percentile(99.9) / 1000,
        "p50_from_due_ms": due_based.get_value_at_percentile(50) / 1000,
        "p99_from_due_ms": due_based.get_value_at_percentile(99) / 1000,
        "batch_rows": args.batch_rows,
        "concurrency": args.concurrency,
        "rows_per_s": rows_per_s,
        "load_ms": loads,
        "load_ms_median": sorted(loads)[len(loads) // 2],
    }
