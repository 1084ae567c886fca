"""The replica's model thread runs OpenMP with the configured thread count, whatever Ray's default is."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# OpenMP's own answer, asked on the thread that will run the model: torch.get_num_threads() there reports
# the count set on the main thread even where OpenMP runs with one.
PROBE = textwrap.dedent(
    """
    import ctypes, glob, os
    from concurrent.futures import ThreadPoolExecutor
    import torch
    from service.model_thread import model_thread

    gomp = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*"))
    omp = ctypes.CDLL(gomp[0]) if gomp else ctypes.CDLL("libgomp.so.1")
    torch.set_num_threads(3)
    plain = ThreadPoolExecutor(1).submit(omp.omp_get_max_threads).result()
    ours = model_thread(3, "model").submit(omp.omp_get_max_threads).result()
    print(plain, ours)
    """
)


def test_model_thread_runs_with_the_configured_threads_under_rays_default():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # what Ray gives a num_cpus=1 replica
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    plain, ours = map(int, done.stdout.split())
    assert plain == 1  # the trap: a thread started later begins with the process default
    assert ours == 3


def test_nice_lowers_the_model_threads_priority_and_its_openmp_workers_inherit_it():
    probe = textwrap.dedent(
        """
        import os, threading, time
        import torch
        from service.model_thread import model_thread

        def priority():
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        def workers():
            torch.ones(4096, 4096).add_(1)  # a parallel region: starts the thread's OpenMP team
            tids = [int(t) for t in os.listdir("/proc/self/task")]
            return sorted({os.getpriority(os.PRIO_PROCESS, tid) for tid in tids} - {base})

        base = priority()
        executor = model_thread(2, "model", nice=4)
        model, others = executor.submit(priority).result(), executor.submit(workers).result()
        print(os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"], base, model, priority(), others)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("ONEDNN_PRIMITIVE_CACHE_CAPACITY", None)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cache, base, model, main, others = done.stdout.split(maxsplit=4)
    assert int(cache) >= 16384  # room for a pruned model's kernels at every padded length
    assert int(model) == min(19, int(base) + 4) and int(main) == int(base)  # the caller's thread keeps its own
    assert others.strip() == f"[{min(19, int(base) + 4)}]"  # the model thread and its OpenMP worker, nothing else


def test_a_replica_runs_every_torch_call_on_its_model_thread(dense_bert_dir, monkeypatch):
    """Loading, warm-up and batches on one thread: a second OpenMP team in the process slows every forward."""
    import asyncio
    import threading

    import service.deployments as deployments
    from service.batcher import BatchRun
    from service.qa_engine import QAInput

    seen: dict[str, set[str]] = {}
    real_load, real_answer = deployments.load_checkpoint, deployments.QAEngine.answer_encoded

    def load(*args, **kwargs):
        seen.setdefault("load", set()).add(threading.current_thread().name)
        return real_load(*args, **kwargs)

    def answer(self, payloads):
        seen.setdefault("answer", set()).add(threading.current_thread().name)
        return real_answer(self, payloads)

    monkeypatch.setattr(deployments, "load_checkpoint", load)
    monkeypatch.setattr(deployments.QAEngine, "answer_encoded", answer)
    monkeypatch.setattr(deployments, "_metrics_collector", lambda: _NoMetrics())
    variant = {"checkpoint": str(dense_bert_dir), "device": "cpu", "threads": 1}
    limits = {"window_tokens": 64, "window_stride": 32, "max_question_tokens": 16, "max_input_tokens": 512}
    server = deployments.QAServer.func_or_class("dense", variant, limits, {})
    encoded, tokens = server.prepare(QAInput("What is served?", "Pruned models are served here."))
    outcomes = asyncio.run(server._run_batch(BatchRun([encoded], [tokens], [0.0], 0.0)))

    assert outcomes[0].status == 200
    assert seen["load"] == seen["answer"] == {"model-dense_0"}  # warm-up and the batch: the same thread
    assert server.info().threads == 1


class _NoMetrics:
    def __getattr__(self, name):
        return _Remote()


class _Remote:
    def remote(self, *args, **kwargs) -> None:
        return None


def test_the_idle_lane_runs_below_every_normal_thread_on_one_intra_op_thread():
    probe = textwrap.dedent(
        """
        import os, threading
        import torch
        from service.model_thread import idle_thread

        def state():
            tid = threading.get_native_id()
            policy = os.sched_getscheduler(tid) if hasattr(os, "sched_getscheduler") else None
            torch.ones(2048, 2048).add_(1)  # would start an OpenMP team if the lane had more than one thread
            return policy, torch.get_num_threads(), len(os.listdir("/proc/self/task"))

        before = len(os.listdir("/proc/self/task"))
        policy, threads, after = idle_thread("shadow").submit(state).result()
        print(policy == getattr(os, "SCHED_IDLE", -1), threads, after - before)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    idle, threads, started = done.stdout.split()
    assert idle == "True"  # Linux: SCHED_IDLE, preempted by any normal thread
    assert int(threads) == 1
    assert int(started) == 1  # the lane's own thread and no OpenMP workers beside it


def test_a_shadow_runs_on_the_idle_lane_outside_the_batch_queue(dense_bert_dir, monkeypatch):
    import asyncio
    import threading

    import service.deployments as deployments
    from service.qa_engine import QAInput

    lanes: list[str] = []
    real_answer = deployments.QAEngine.answer_encoded

    def answer(self, payloads):
        lanes.append(threading.current_thread().name)
        return real_answer(self, payloads)

    monkeypatch.setattr(deployments.QAEngine, "answer_encoded", answer)
    monkeypatch.setattr(deployments, "_metrics_collector", lambda: _NoMetrics())
    variant = {"checkpoint": str(dense_bert_dir), "device": "cpu", "threads": 1}
    limits = {"window_tokens": 64, "window_stride": 32, "max_question_tokens": 16, "max_input_tokens": 512}
    server = deployments.QAServer.func_or_class("dense", variant, limits, {})
    question = QAInput("What is served?", "Pruned models are served here.")
    lanes.clear()  # warm-up ran on the model thread

    async def both():
        return await server.shadow(question), await server(question)

    shadowed, served = asyncio.run(both())
    assert shadowed.status == served.status == 200
    assert [(s.start, s.end) for s in shadowed.result] == [(s.start, s.end) for s in served.result]
    assert lanes == ["shadow-dense_0", "model-dense_0"]
    assert server.batcher.batches == 1  # the shadow took no place in the queue
