"""The one thread a replica runs its model on, with the intra-op thread count it was configured for.

OpenMP keeps the thread count per calling thread: `torch.set_num_threads` on the replica's main thread
does not reach a thread started later, which begins with the process default — and Ray sets that default
(`OMP_NUM_THREADS`) to the replica's `num_cpus`, 1 when fractional. `torch.get_num_threads()` in the new
thread still answers the main thread's number, so the model silently ran single-threaded (measured here:
MiniLM bf16 31.6 ms per request in the replica against 19.4 ms with the 2 threads it was configured for).
The count is therefore set again on the model thread itself, before its first task. The replica also
runs *all* its torch work here, loading included (see `service.deployments`): each thread that runs a
parallel op keeps its own OpenMP team, and two teams in one process cost every forward ~30 %.

`nice` lets the HTTP path (event loop, proxy) take the CPU first where it shares cores with the model:
under overload, refusals then wait for the model's threads no longer (issue 17's 503 latency).

`idle_thread` is the other lane: work no request waits for (shadow comparisons) runs there, on one
intra-op thread (no second OpenMP team) that the kernel schedules only when a CPU would otherwise idle.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

# oneDNN (torch's bf16/fp32 CPU matmuls) keeps 1024 kernels by default, one per shape; a pruned model has
# a shape per layer width, so sequence lengths padded to 8 thrash it (pruned MiniLM bf16, 64 questions:
# 29.5 ms per request unpadded against 12.2 with room for 16384; read when the first kernel is built).
PRIMITIVE_CACHE_CAPACITY = "16384"


def _torch_thread(name: str, threads: int, lower_priority: Callable[[int], None]) -> ThreadPoolExecutor:
    """A single-worker executor whose thread, before its first task, lowers its own priority (given its
    native id) and sets the intra-op thread count it runs torch with."""

    def configure() -> None:
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", PRIMITIVE_CACHE_CAPACITY)
        import torch

        lower_priority(threading.get_native_id())
        torch.set_num_threads(threads)

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=configure)


def model_thread(threads: int, name: str, nice: int = 0) -> ThreadPoolExecutor:
    """The model's executor: torch's intra-op work on `threads` threads, `nice` steps below the process's
    priority (Linux: per thread; the OpenMP workers it starts inherit it)."""

    def lower(tid: int) -> None:
        if nice:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))

    return _torch_thread(name, threads, lower)


def lowest_priority(tid: int) -> None:
    """Put thread `tid` below every normal thread: Linux's SCHED_IDLE (it runs only on a CPU nothing else
    wants, and is preempted at once), else the weakest nice, else leave it."""
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError):  # not Linux, or a kernel without it
        pass
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, tid, 19)


def idle_thread(name: str) -> ThreadPoolExecutor:
    """An executor for work that must never delay a request: one intra-op thread (no second OpenMP team)
    at `lowest_priority` (on CPUs; GPU kernels it launches share the device's queues)."""
    return _torch_thread(name, 1, lowest_priority)
