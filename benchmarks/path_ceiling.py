"""How many requests per second the serving path itself carries on this machine, with no model in them.

    python benchmarks/path_ceiling.py --model ../shared/models/minilm-l6-squad --out benchmarks/path-ceiling

The whole-path target of issue 16 asks for N × the naive server's throughput. On a small machine the load
generator, HAProxy and the ingress's event loop share the cores with the model, so there is a ceiling that
no model speed can lift. This measures it with the project's own client and topology (service defaults,
the model loaded and idle): closed loops of `GET /healthz` (HTTP only: HAProxy → ingress → a JSON answer)
and, for scale, `POST /v1/qa` on the same server, at each concurrency. One run; nothing else may run
meanwhile. Writes JSON and Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_overhead import blockserve_config  # noqa: E402

from loadtests.client import Target, closed_loop, settle_collector  # noqa: E402
from loadtests.launch import served  # noqa: E402
from pruning.runtime.numerics import reported_cpu_flags  # noqa: E402
from pruning.tasks.qa import read_squad  # noqa: E402
from service.config import AppConfig  # noqa: E402

log = logging.getLogger("path_ceiling")


async def health_loop(url: str, concurrency: int, duration_s: float) -> dict:
    """Closed loop of GET /healthz: answered requests per second and client p50/p99."""
    latencies: list[float] = []
    failures = 0
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        settle_collector()
        start = time.perf_counter()

        async def worker() -> None:
            nonlocal failures
            while time.perf_counter() - start < duration_s:
                sent = time.perf_counter()
                try:
                    response = await client.get(f"{url}/healthz")
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(1000.0 * (time.perf_counter() - sent))
                else:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return _summary("GET /healthz", concurrency, latencies, failures, elapsed)


async def qa_loop(url: str, bodies: list[dict], concurrency: int, duration_s: float) -> dict:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        start = time.perf_counter()
        records = await closed_loop(client, Target(url, "qa", "dense", bodies), concurrency, duration_s)
        elapsed = time.perf_counter() - start
    ok = [r.latency_ms for r in records if r.ok]
    return _summary("POST /v1/qa (dense)", concurrency, ok, len(records) - len(ok), elapsed)


def _summary(route: str, concurrency: int, latencies: list[float], failures: int, elapsed: float) -> dict:
    ordered = sorted(latencies)
    return {
        "route": route, "concurrency": concurrency, "answered": len(ordered), "failures": failures,
        "rps": round(len(ordered) / elapsed, 1),
        "p50_ms": round(statistics.median(ordered), 2) if ordered else None,
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2) if ordered else None,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "squad" / "dev.json"))
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bodies = [{"question": e.question, "context": e.context} for e in read_squad(Path(args.data))[:64]]

    document = blockserve_config(args.model, args.model, "auto", 2, args.port, 8)
    topology = AppConfig.model_validate(document["applications"][0]["args"]).topology()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "serve.yaml"
        config.write_text(yaml.safe_dump(document))
        with served(config) as url:
            asyncio.run(qa_loop(url, bodies, 2, 2.0))  # warm-up
            for concurrency in args.levels:
                for row in (
                    asyncio.run(health_loop(url, concurrency, args.duration)),
                    asyncio.run(qa_loop(url, bodies, concurrency, args.duration)),
                ):
                    log.info("%s", row)
                    rows.append(row)
    result = {"topology": topology, "cpu_flags": reported_cpu_flags(), "model": args.model, "rows": rows}
    (out / "path-ceiling.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"topology: {topology}; cpu flags: {' '.join(result['cpu_flags'])}", "",
        "| route | c | req/s | p50 ms | p99 ms | failures |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    lines += [
        f"| {r['route']} | {r['concurrency']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['failures']} |"
        for r in rows
    ]
    (out / "path-ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
