"""Overload, a killed replica and fuzzing, against the real service: what users see when things go wrong.

    python benchmarks/chaos.py --model ../shared/models/minilm-l6-squad --data ../shared/data/squad/dev.json \
        --out benchmarks/chaos

1. Capacity: closed loop at `--capacity-concurrency` on one replica → the requests per second it serves.
2. Overload: open loop (Poisson arrivals) at 2×, 4× and 8× that capacity; per level the status mix, the
   accepted requests' p50/p99, and how fast a 503 arrives (p50/p99) — admission by expected wait
   (`max_queue_wait_s`) should refuse at once and keep accepted latency bounded.
3. A replica killed under load (two replicas, closed loop, `kill -9` of one): statuses by kind, every
   request answered or refused (none lost), and the time until answers are all 200 again.
4. Fuzzing: schemathesis with every check on every operation → the failure count.
Writes chaos.json and chaos.md; nothing else may run meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.client import Target, closed_loop, open_loop  # noqa: E402
from loadtests.launch import served  # noqa: E402
from pruning.runtime.numerics import reported_cpu_flags  # noqa: E402
from pruning.tasks.qa import read_squad  # noqa: E402

log = logging.getLogger("chaos")
LIMITS = {"window_tokens": 384, "window_stride": 128, "max_question_tokens": 64, "max_input_tokens": 4096,
          "request_timeout_s": 10}  # fmt: skip


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else None


def config(model: str, replicas: int, threads: int, max_queue_wait_s: float, port: int) -> dict:
    variant = {"checkpoint": model, "device": "cpu", "dtype": "auto", "replicas": replicas, "num_cpus": 1,
               "threads": threads, "max_ongoing_requests": 256, "max_queued_requests": 64,
               "batching": {"max_batch_size": 8, "max_batch_tokens": 3072, "max_queue_wait_s": max_queue_wait_s}}  # fmt: skip
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "blockserve", "route_prefix": "/", "import_path": "service.app:build_app",
                          "args": {"qa": {"default_variant": "dense", "variants": {"dense": variant},
                                          "limits": LIMITS}}}],
    }  # fmt: skip


def statuses(records) -> dict[str, int]:
    return dict(sorted(Counter(str(r.status) for r in records).items()))


async def capacity(url: str, bodies, concurrency: int, seconds: float) -> float:
    async with httpx.AsyncClient(timeout=60) as client:
        target = Target(url, "qa", "dense", bodies)
        await closed_loop(client, target, concurrency, 0.0, 2 * concurrency)
        started = time.perf_counter()
        records = await closed_loop(client, target, concurrency, seconds)
        return sum(r.ok for r in records) / (time.perf_counter() - started)


async def overload(url: str, bodies, rate: float, seconds: float) -> dict:
    limits = httpx.Limits(max_connections=2048, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        records = await open_loop(client, Target(url, "qa", "dense", bodies), rate, seconds, seed=7, drain_s=30)
    accepted = [r.latency_ms for r in records if r.status == 200]
    refused = [r.latency_ms for r in records if r.status == 503]
    return {"rate": round(rate, 2), "sent": len(records), "statuses": statuses(records),
            "accepted_p50_ms": percentile(accepted, 0.5), "accepted_p99_ms": percentile(accepted, 0.99),
            "refused_p50_ms": percentile(refused, 0.5), "refused_p99_ms": percentile(refused, 0.99)}  # fmt: skip


async def killed_replica(url: str, bodies, concurrency: int, seconds: float, kill_after_s: float) -> dict:
    pids = set()
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(40):
            pids.add((await client.get(f"{url}/v1/models")).json()[0]["replica_pid"])
            if len(pids) == 2:
                break
        victim = sorted(pids)[0]
        killed_at = {}

        async def killer():
            await asyncio.sleep(kill_after_s)
            os.kill(victim, signal.SIGKILL)
            killed_at["t"] = time.perf_counter()

        started = time.perf_counter()
        records, _ = await asyncio.gather(
            closed_loop(client, Target(url, "qa", "dense", bodies), concurrency, seconds), killer()
        )
    kill_s = killed_at["t"] - started
    after = sorted((r for r in records if r.sent_s >= kill_s), key=lambda r: r.sent_s)
    bad = [r for r in after if r.status != 200]
    recovered_s = round(bad[-1].done_s - kill_s, 2) if bad else 0.0
    return {"replicas": 2, "killed_pid": victim, "sent": len(records), "statuses": statuses(records),
            "answered_or_refused": all(r.status in (200, 503) for r in records),
            "errors_after_kill": len(bad), "last_error_after_kill_s": recovered_s}  # fmt: skip


def fuzz(url: str, examples: int) -> dict:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    checks.load_all_checks()
    every_check = checks.CHECKS.get_all()
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    report = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        calls = Counter()

        def property_test(operation, calls):  # hypothesis's @given refuses defaulted arguments
            @given(case=operation.as_strategy())
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case):
                response = case.call_and_validate(base_url=url, checks=every_check, timeout=60)
                calls[str(response.status_code)] += 1

            return check

        try:
            property_test(operation, calls)()
            failure = None
        except Exception as error:  # noqa: BLE001 - recorded as the operation's failure
            failure = str(error)[:600]
        report[operation.label] = {"statuses": dict(calls), "failure": failure}
    return {"examples_per_operation": examples, "operations": report,
            "failures": sum(1 for r in report.values() if r["failure"])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--max-queue-wait", type=float, default=1.0)
    parser.add_argument("--capacity-concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fuzz-examples", type=int, default=50)
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bodies = [{"question": e.question, "context": e.context} for e in read_squad(Path(args.data))[:64]]
    result: dict = {"model": args.model, "max_queue_wait_s": args.max_queue_wait}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "one.yaml"
        path.write_text(yaml.safe_dump(config(args.model, 1, 2, args.max_queue_wait, args.port)))
        with served(path) as url:
            rps = asyncio.run(capacity(url, bodies, args.capacity_concurrency, args.seconds))
            result["capacity_rps"] = round(rps, 2)
            log.info("capacity: %.2f req/s", rps)
            result["overload"] = []
            for factor in (2, 4, 8):
                row = {"factor": factor, **asyncio.run(overload(url, bodies, factor * rps, args.seconds))}
                log.info("overload %s", row)
                result["overload"].append(row)
            result["fuzz"] = fuzz(url, args.fuzz_examples)
            log.info("fuzz: %d failures", result["fuzz"]["failures"])
        path = Path(scratch) / "two.yaml"
        path.write_text(yaml.safe_dump(config(args.model, 2, 1, args.max_queue_wait, args.port)))
        with served(path) as url:
            result["killed_replica"] = asyncio.run(killed_replica(url, bodies, 4, args.seconds, kill_after_s=3.0))
            log.info("killed replica: %s", result["killed_replica"])
    result["cpu_flags"] = reported_cpu_flags()
    (out / "chaos.json").write_text(json.dumps(result, indent=1))
    lines = [f"capacity (closed loop, c={args.capacity_concurrency}): {result['capacity_rps']} req/s; "
             f"max_queue_wait_s {args.max_queue_wait}", "",
             "| overload | rate req/s | sent | statuses | accepted p50 / p99 ms | 503 p50 / p99 ms |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for row in result["overload"]:
        lines.append(f"| {row['factor']}× | {row['rate']} | {row['sent']} | {row['statuses']} | "
                     f"{row['accepted_p50_ms']} / {row['accepted_p99_ms']} | {row['refused_p50_ms']} / {row['refused_p99_ms']} |")  # fmt: skip
    kill = result["killed_replica"]
    lines += ["", f"replica killed under load: {kill['statuses']}, every request answered or refused: "
              f"{kill['answered_or_refused']}, non-200 after the kill: {kill['errors_after_kill']} "
              f"(last {kill['last_error_after_kill_s']} s after it)", "",
              f"fuzzing (schemathesis, all checks, {args.fuzz_examples} examples per operation): "
              f"{result['fuzz']['failures']} failures"]  # fmt: skip
    (out / "chaos.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
