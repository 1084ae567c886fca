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
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_overhead import blockserve_config, drive, percentile  # noqa: E402

from loadtests.client import settle_collector  # noqa: E402
from loadtests.launch import served  # noqa: E402
from pruning.runtime.numerics import reported_cpu_flags  # noqa: E402
from pruning.tasks.qa import read_squad  # noqa: E402
from service.config import AppConfig  # noqa: E402

log = logging.getLogger("path_ceiling")


async def health_loop(url: str, concurrency: int, duration_s: float) -> dict:
    """Closed loop of GET /healthz, summarised like `serve_overhead.drive`'s QA rows."""
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
                    ok = (await client.get(f"{url}/healthz")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(1000.0 * (time.perf_counter() - sent))
                else:
                    failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {
        "variant": "GET /healthz", "concurrency": concurrency, "requests": len(latencies) + failures,
        "errors": failures, "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2), "throughput_rps": round(len(latencies) / seconds, 2),
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
            for concurrency in args.levels:
                rows.append(asyncio.run(health_loop(url, concurrency, args.duration)))
                log.info("%s", rows[-1])
                rows.append(asyncio.run(drive(url, "dense", bodies, concurrency, args.duration)))
    result = {"topology": topology, "cpu_flags": reported_cpu_flags(), "model": args.model, "rows": rows}
    (out / "path-ceiling.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"topology: {topology}; cpu flags: {' '.join(result['cpu_flags'])}", "",
        "| request | c | req/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    lines += [
        f"| {r['variant']} | {r['concurrency']} | {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} |"
        for r in rows
    ]
    (out / "path-ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
