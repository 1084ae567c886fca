"""The one thread a replica runs its model on, with the intra-op thread count it was configured for.

OpenMP keeps the thread count per calling thread: `torch.set_num_threads` on the replica's main thread
does not reach a thread started later, which begins with the process default — and Ray sets that default
(`OMP_NUM_THREADS`) to the replica's `num_cpus`, 1 when fractional. `torch.get_num_threads()` in the new
thread still answers the main thread's number, so the model silently ran single-threaded (measured here:
MiniLM bf16 31.6 ms per request in the replica against 19.4 ms with the 2 threads it was configured for).
The count is therefore set again on the model thread itself, before its first task. The replica also
runs *all* its torch work here, loading included (see `service.deployments`): each thread that runs a
parallel op keeps its own OpenMP team, and two teams in one process cost every forward ~30 %.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor


def model_thread(threads: int, name: str) -> ThreadPoolExecutor:
    """A single-worker executor whose thread runs torch's intra-op work on `threads` threads."""

    def configure() -> None:
        import torch

        torch.set_num_threads(threads)

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=configure)
