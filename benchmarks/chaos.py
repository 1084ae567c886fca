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
5. Shadowing's cost: one service with `dense`, `shadowed` (the same checkpoint, `--shadow-fraction` of its
   requests re-run on dense) and `plain` (the same checkpoint, no shadow); at concurrency 1, rounds of a block of requests
   to each (order swapped every round); the per-round p50s of plain give the noise the difference is judged by.
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
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.client import Target, arrivals, closed_loop, send, settle_collector  # noqa: E402
from loadtests.launch import served  # noqa: E402
from pruning.runtime.numerics import reported_cpu_flags  # noqa: E402
from pruning.tasks.qa import read_squad  # noqa: E402
from service.config import AppConfig  # noqa: E402

log = logging.getLogger("chaos")
LIMITS = {"window_tokens": 384, "window_stride": 128, "max_question_tokens": 64, "max_input_tokens": 4096,
          "request_timeout_s": 10}  # fmt: skip


PHASES = ["overload", "fuzz", "kill", "shadow"]


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else None


def config(model: str, replicas: int, threads: int, max_queue_wait_s: float, port: int, shadow: float = 0.0,
           topology: dict | None = None, nice: int | None = None) -> dict:  # fmt: skip
    """One QA application; `topology` (colocate, http_front) and `nice` override the service's defaults only
    where given, so a run without them measures what a user gets."""
    variant = {"checkpoint": model, "device": "cpu", "dtype": "auto", "replicas": replicas, "num_cpus": 1,
               "threads": threads, "max_ongoing_requests": 256, "max_queued_requests": 64,
               "batching": {"max_batch_size": 8, "max_batch_tokens": 3072, "max_queue_wait_s": max_queue_wait_s}}  # fmt: skip
    if nice is not None:
        variant["nice"] = nice
    variants = {"dense": variant}
    if shadow:  # three replicas on two CPUs: Ray schedules by num_cpus, threads stay as set
        variant["num_cpus"] = 0.5
        variants["plain"] = dict(variant)
        variants["shadowed"] = {**variant, "shadow": {"fraction": shadow, "against": "dense"}}
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{"name": "blockserve", "route_prefix": "/", "import_path": "service.app:build_app",
                          "args": {**(topology or {}), "qa": {"default_variant": "dense", "variants": variants,
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


@dataclass(frozen=True)
class Sent:
    status: int  # 0: no answer (timeout or connection error)
    latency_ms: float  # from the scheduled send time (no coordinated omission)
    inference_ms: float | None


async def _open_loop_aiohttp(url: str, bodies, rate: float, seconds: float, timeout_s: float) -> list[Sent]:
    """Poisson arrivals at `rate` for `seconds`, each request sent at its time whatever came before.

    aiohttp (a dependency of ray[serve]) rather than the load tests' httpx client: at 100-250 req/s httpx
    used most of a core here, the service's two cores were starved by its own load generator, and the
    run measured the client. A request unanswered after `timeout_s` is recorded with status 0.
    """
    import aiohttp

    schedule = arrivals(rate, seconds, seed=7)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    settle_collector()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        start = time.perf_counter()

        async def one(index: int, due: float) -> Sent:
            body = {**bodies[index % len(bodies)], "variant": "dense"}
            try:
                async with session.post(f"{url}/v1/qa", json=body) as response:
                    status = response.status
                    raw = await response.read()
                try:  # Ray's proxy answers its own refusals (503, `proxy_queue`) in plain text
                    data = json.loads(raw)
                except ValueError:
                    data = None
            except (aiohttp.ClientError, TimeoutError):
                return Sent(0, 1000 * (time.perf_counter() - start - due), None)
            inference = data.get("inference_ms") if status == 200 and isinstance(data, dict) else None
            return Sent(status, 1000 * (time.perf_counter() - start - due), inference)

        tasks = []
        for index, due in enumerate(schedule):
            delay = start + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(index, due)))
        return list(await asyncio.gather(*tasks))


async def overload(url: str, bodies, rate: float, seconds: float, max_queue_wait_s: float) -> dict:
    records = await _open_loop_aiohttp(url, bodies, rate, seconds, timeout_s=30)
    accepted = [r.latency_ms for r in records if r.status == 200]
    refused = [r.latency_ms for r in records if r.status == 503]
    # The bound of issue 17: the admitted wait plus two model runs at the batch sizes this load formed
    # (inference_ms is the model time of the batch each answer came from).
    model_p99 = percentile([r.inference_ms for r in records if r.status == 200 and r.inference_ms], 0.99)
    bound = round(1000 * max_queue_wait_s + 2 * model_p99, 1) if model_p99 is not None else None
    accepted_p99 = percentile(accepted, 0.99)
    return {"rate": round(rate, 2), "sent": len(records), "statuses": statuses(records),
            "accepted_p50_ms": percentile(accepted, 0.5), "accepted_p99_ms": accepted_p99,
            "model_p99_ms": model_p99, "accepted_p99_bound_ms": bound,
            "within_bound": None if bound is None or accepted_p99 is None else accepted_p99 <= bound,
            "refused_p50_ms": percentile(refused, 0.5), "refused_p99_ms": percentile(refused, 0.99)}  # fmt: skip


async def shadow_cost(url: str, bodies, rounds: int, per_round: int, fraction: float) -> dict:
    """c = 1; each round a block of requests to `shadowed`, then one to `plain` (order swapped every round).

    Blocks, not alternate requests: a shadow copy runs on the reference replica while the *next* request is
    served, so with alternation its cost would land on `plain`. p50 per round and variant.
    """
    p50s: dict[str, list[float]] = {"shadowed": [], "plain": []}
    async with httpx.AsyncClient(timeout=60) as client:
        targets = {name: Target(url, "qa", name, bodies) for name in p50s}
        for target in targets.values():  # warm-up, both replicas
            await closed_loop(client, target, 1, 0.0, 8)
        for round_index in range(rounds):
            order = list(targets) if round_index % 2 == 0 else list(reversed(targets))
            for name in order:
                latencies = []
                for index in range(per_round):
                    started = time.perf_counter()
                    reply = await send(client, targets[name], index)
                    if reply.status == 200:
                        latencies.append(1000 * (time.perf_counter() - started))
                p50s[name].append(percentile(latencies, 0.5))
        metrics = (await client.get(f"{url}/metrics")).text
    compared = [line for line in metrics.splitlines()
                if line.startswith(("blockserve_shadow_agreement_count", "blockserve_shadow_dropped_total"))]  # fmt: skip
    plain, shadowed = sorted(p50s["plain"]), sorted(p50s["shadowed"])
    difference = round(shadowed[len(shadowed) // 2] - plain[len(plain) // 2], 2)
    noise = round(plain[-1] - plain[0], 2)
    return {"rounds": rounds, "requests_per_round": per_round, "fraction": fraction, "p50_ms_per_round": p50s,
            "median_p50_difference_ms": difference, "plain_round_spread_ms": noise,
            "within_noise": abs(difference) <= noise, "shadow_metric_lines": compared[:8]}  # fmt: skip


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
    contract = schemathesis.config.SchemathesisConfig.from_path(ROOT / "schemathesis.toml")
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=contract)
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
        except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 - recorded as the operation's failure
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
    parser.add_argument("--shadow-rounds", type=int, default=5)
    parser.add_argument("--shadow-fraction", type=float, default=1.0, help="the worst case by default")
    # One model thread on this 2-core machine: the other core is the HTTP path's (Ray's proxy, the ingress),
    # which must keep answering 503s while the model is saturated. With 2, 8× overload starved it.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--port", type=int, default=8124)
    parser.add_argument("--nice", type=int, default=None, help="the variants' `nice` (default: the service's)")
    parser.add_argument(
        "--colocate",
        default=None,
        choices=["auto", "true", "false"],
        help="overload and fuzzing with the model in the ingress or not (default: the service's)",
    )
    parser.add_argument("--http-front", default=None, choices=["ray-proxy", "haproxy"],
                        help="overload and fuzzing behind this HTTP front (default: the service's)")  # fmt: skip
    parser.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request costs the load generator's CPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bodies = [{"question": e.question, "context": e.context} for e in read_squad(Path(args.data))[:64]]
    topology = {"colocate": {"true": True, "false": False}.get(args.colocate, args.colocate),
                "http_front": args.http_front}  # fmt: skip
    topology = {key: value for key, value in topology.items() if value is not None}
    overload_config = config(
        args.model, 1, args.threads, args.max_queue_wait, args.port, topology=topology, nice=args.nice
    )
    resolved = AppConfig.model_validate(overload_config["applications"][0]["args"])
    result: dict = {"model": args.model, "max_queue_wait_s": args.max_queue_wait, "colocate": resolved.colocate,
                    "http_front": resolved.http_front, "nice": resolved.qa.variants["dense"].nice,
                    "topology_overrides": topology}  # fmt: skip
    result["cpu_flags"] = reported_cpu_flags()

    def save() -> None:  # after every phase: a run cut short keeps what it measured
        (out / "chaos.json").write_text(json.dumps(result, indent=1))

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "one.yaml"
        path.write_text(yaml.safe_dump(overload_config))
        with served(path) as url:
            rps = asyncio.run(capacity(url, bodies, args.capacity_concurrency, args.seconds))
            result["capacity_rps"] = round(rps, 2)
            log.info("capacity: %.2f req/s", rps)
            result["overload"] = []
            for factor in (2, 4, 8) if "overload" in args.phases else ():
                load = overload(url, bodies, factor * rps, args.seconds, args.max_queue_wait)
                row = {"factor": factor, **asyncio.run(load)}
                log.info("overload %s", row)
                result["overload"].append(row)
                save()
            if "fuzz" in args.phases:
                result["fuzz"] = fuzz(url, args.fuzz_examples)
                log.info("fuzz: %d failures", result["fuzz"]["failures"])
                save()
        if "kill" in args.phases:
            path = Path(scratch) / "two.yaml"
            path.write_text(yaml.safe_dump(config(args.model, 2, 1, args.max_queue_wait, args.port)))
            with served(path) as url:
                result["killed_replica"] = asyncio.run(killed_replica(url, bodies, 4, args.seconds, kill_after_s=3.0))
                log.info("killed replica: %s", result["killed_replica"])
                save()
        if "shadow" in args.phases:
            path = Path(scratch) / "shadow.yaml"
            path.write_text(
                yaml.safe_dump(config(args.model, 1, 1, args.max_queue_wait, args.port, shadow=args.shadow_fraction))
            )
            with served(path) as url:
                result["shadow"] = asyncio.run(shadow_cost(url, bodies, args.shadow_rounds, 24, args.shadow_fraction))
                log.info("shadow cost: %s", result["shadow"])
                save()
    if set(args.phases) != set(PHASES):
        return  # a partial run (a probe): chaos.json only
    lines = [f"capacity (closed loop, c={args.capacity_concurrency}): {result['capacity_rps']} req/s; "
             f"max_queue_wait_s {args.max_queue_wait}", "",
             "| overload | rate req/s | sent | statuses | accepted p50 / p99 ms | bound ms (wait + 2 × model p99) "
             "| 503 p50 / p99 ms |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in result["overload"]:
        lines.append(f"| {row['factor']}× | {row['rate']} | {row['sent']} | {row['statuses']} | "
                     f"{row['accepted_p50_ms']} / {row['accepted_p99_ms']} | {row['accepted_p99_bound_ms']} "
                     f"({'met' if row['within_bound'] else 'NOT met'}) | {row['refused_p50_ms']} / {row['refused_p99_ms']} |")  # fmt: skip
    kill = result["killed_replica"]
    lines += ["", f"replica killed under load: {kill['statuses']}, every request answered or refused: "
              f"{kill['answered_or_refused']}, non-200 after the kill: {kill['errors_after_kill']} "
              f"(last {kill['last_error_after_kill_s']} s after it)", "",
              f"fuzzing (schemathesis, all checks, {args.fuzz_examples} examples per operation): "
              f"{result['fuzz']['failures']} failures"]  # fmt: skip
    shadow = result["shadow"]
    lines += ["", f"shadowing {shadow['fraction']:.0%} of requests at c=1 ({shadow['rounds']} rounds × {shadow['requests_per_round']} requests per variant, "
              f"in alternating blocks): p50 shadowed − plain {shadow['median_p50_difference_ms']} ms; spread of plain's "
              f"per-round p50 {shadow['plain_round_spread_ms']} ms → within noise: {shadow['within_noise']}"]  # fmt: skip
    (out / "chaos.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
