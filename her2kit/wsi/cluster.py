"""Where block tasks run: in-process, a local Dask cluster, or an existing one.

- ``workers=1`` (default): tasks run in this process one after another
  (dask's "synchronous" semantics without a graph): no start-up cost, the
  segmenter loaded once, easy to debug.
- ``workers=N``: a ``distributed.LocalCluster`` of N worker *processes* with
  one thread each. Processes, not threads: cell finding (scikit-image
  watershed, region properties, Python loops) holds the GIL, so threads would
  serialise it; each process caches its open slide and its loaded model, and
  torch inside it gets ``cores // N`` threads so N workers don't oversubscribe.
- ``scheduler="tcp://host:port"``: a ``distributed.Client`` to an existing
  cluster; its workers must see the input and output paths.

Every executor yields results as tasks finish, so the caller drives a
progress bar and records finished blocks as they come.

Inside :func:`shared_executors` (``her2kit score`` / ``segment`` run in one),
executors are made once per (workers, scheduler) and reused by every slide of
the run: one local cluster (or one client of the scheduler) per run, not per
slide.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from her2kit.errors import SetupError


class TaskFailed(Exception):
    """A task raised; ``message`` is the worker's one-line description."""

    def __init__(self, item: Any, message: str):
        super().__init__(message)
        self.item = item
        self.message = message


def release_memory(slack_mb: float = 64.0) -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``; no-op elsewhere)
    once the process has grown ``slack_mb`` beyond its working set.

    Blocks allocate and free hundreds of MB of arrays; glibc keeps freed
    fragments in its heap, so without trimming a long in-process run grows by
    a few MB per block. But a trim hands back the block's working set too,
    and the next block faults every page of it in again: trimming after every
    block cost ~10 % of the network's CPU time.

    So the trim waits until the resident size, taken between blocks, is
    ``slack_mb`` above the working set: the size at the first call. A size
    that is back above that mark within one block of a trim is the working
    set itself (a larger block, more cells), not growth: it becomes the new
    mark, untrimmed. Memory stays within ``slack_mb`` of flat.

    The mark used to be the size right after the previous trim, which every
    block's working set exceeds: on an 8192^2 slide (16 blocks, Her2Net) it
    trimmed at 13-15 of 18 calls, with 0.86-0.98 million page faults and
    5.0-6.8 s of system time; with the working-set mark 0-3 trims, 0.23-0.41
    million faults, 2.4-3.4 s, and the same peak RSS (1102-1155 MB against
    1112-1164). Fixing glibc's mmap threshold instead costs ~13 % more CPU in
    the segmenter. Dask workers call it after each block task too.
    """
    global _malloc_trim, _working_set_mb, _trimmed_last
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if not _malloc_trim:
        return
    rss = _rss_mb()
    if rss is not None:
        if _working_set_mb is None or (_trimmed_last and rss >= _working_set_mb + slack_mb):
            _working_set_mb, _trimmed_last = rss, False
            return
        if rss < _working_set_mb + slack_mb:
            _trimmed_last = False
            return
    _malloc_trim(0)
    _trimmed_last = True


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse in this process: large arrays come
    from the heap instead of fresh mmaps, the heap is not trimmed behind our
    back, and all threads share one arena. Returns whether it applied.

    Cell finding allocates and frees ~40 image-sized arrays per block; with
    glibc's defaults each one above 32 MB was a fresh mapping and the heap was
    trimmed after the smaller ones, so every block faulted ~60,000 zeroed pages
    in again (a 2048^2 block: 2.20 -> 1.74 s with this, no faults; peak RSS
    unchanged). :func:`release_memory` still hands memory back between blocks,
    so a long run stays flat. Call it before threads start (torch's included):
    ``her2kit score`` / ``segment`` do for in-process runs; a program calling
    :func:`her2kit.wsi.pipeline.run_slide` itself may. Dask workers apply it
    at their first block task (:func:`in_worker_process`).
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return bool(mallopt(m_mmap_threshold, 1 << 30) and mallopt(m_trim_threshold, 1 << 31)
                and mallopt(m_arena_max, 1))


@contextlib.contextmanager
def gc_frozen():
    """Python's cycle collector leaves the objects alive on entry alone until exit.

    A block's outlines and GeoJSON features are ~150,000 small lists; each
    full collection they trigger walked every object of the process (torch,
    dask, zarr: hundreds of thousands), which tripled the time of the
    outlines inside a run (0.46 -> 0.15 s per 2048^2 block). Freezing the
    objects that exist when the blocks start (after a collection) keeps
    collections to the new ones; on exit they are thawed. A process that
    froze objects itself keeps its own arrangement.
    """
    import gc

    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _rss_mb() -> float | None:
    """Resident size of this process in MB (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


_working_set_mb: float | None = None  # see release_memory
_trimmed_last = False
_malloc_trim: Any = None


class SyncExecutor:
    """Runs tasks in this process, one at a time."""

    kind = "in-process"
    workers = 1

    def share(self, obj: Any) -> Any:
        """Make ``obj`` available to tasks (here: itself)."""
        return obj

    def run(self, fn: Callable, items: Sequence[tuple], key: str = "task") -> Iterator[tuple[tuple, Any]]:
        """Yield (item, fn(*item)) as each finishes; a raising task stops the run."""
        for item in items:
            result = fn(*item)
            release_memory()
            yield item, result

    def close(self) -> None:
        pass


_memory_settled = False


def in_worker_process(fn: Callable, *args: Any) -> Any:
    """Run a task in a dask worker with the memory handling of an in-process
    run: :func:`reuse_freed_memory` (once per process), then
    :func:`release_memory` after each task.

    With dask's ``MALLOC_TRIM_THRESHOLD_`` every large array (torch's layer
    outputs, cell finding's images) was a fresh mapping, zeroed page by page:
    on 2 cores, ``--workers 2`` spent 24 s in the kernel and ran a 4096^2
    slide in 37.5 s against 17.8 s in-process (the network's sum 43 s against 12).
    """
    global _memory_settled
    if not _memory_settled:
        _memory_settled = True
        reuse_freed_memory()
    try:
        return fn(*args)
    finally:
        release_memory()


class DaskExecutor:
    """Runs tasks on a ``distributed.Client`` (local or remote)."""

    def __init__(self, client: Any, cluster: Any = None, kind: str = "dask", own: bool = False):
        self.client = client
        self.cluster = cluster
        self.own = own or cluster is not None
        self.kind = kind
        try:
            self.workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
        except TypeError:  # older distributed without n_workers
            self.workers = max(1, len(client.scheduler_info()["workers"]))
        except Exception:
            self.workers = 1

    def share(self, obj: Any) -> Any:
        """Send ``obj`` once to every worker; tasks receive it as an argument."""
        if isinstance(obj, (str, bytes, int, float, type(None))):
            return obj
        return self.client.scatter(obj, broadcast=True, hash=False)

    def run(self, fn: Callable, items: Sequence[tuple], key: str = "task") -> Iterator[tuple[tuple, Any]]:
        """Submit one task per item; yield (item, result) as tasks finish.

        A failing task cancels the rest and re-raises its exception.
        """
        import uuid

        from distributed import as_completed

        tag = uuid.uuid4().hex[:8]
        futures = {}
        for i, item in enumerate(items):
            f = self.client.submit(in_worker_process, fn, *item, key=f"{key}-{tag}-{i}",
                                   pure=False, retries=0)
            futures[f] = item
        try:
            for f in as_completed(list(futures)):
                try:
                    result = f.result()
                except Exception as exc:
                    if not self._lost(exc):
                        raise
                    raise SchedulerLost(f"lost the dask scheduler ({self.kind}): {type(exc).__name__}; "
                                        "run again to resume from the finished blocks") from None
                yield futures[f], result
                f.release()
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                self.client.cancel(pending)

    def _lost(self, exc: BaseException) -> bool:
        """Whether a task's exception says the cluster went away, not that the task failed."""
        from concurrent.futures import CancelledError

        return (isinstance(exc, CancelledError) or type(exc).__name__ == "CommClosedError"
                or getattr(self.client, "status", "running") != "running")

    def close(self) -> None:
        """Close the client and cluster this executor made (never a caller's client)."""
        if self.own:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


class SchedulerLost(SetupError):
    """The dask scheduler went away while blocks were running: every slide left
    needs it, so the run stops (run_slide names the slide)."""


def _probe(scheduler: str, timeout: float) -> None:
    """Fail at once on a TCP address that refuses or does not answer (the
    client retries for its whole timeout, 20 s, on a refused port)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(scheduler if "://" in scheduler else f"tcp://{scheduler}")
    if parts.scheme != "tcp":
        return  # tls://, inproc://, ...: left to the client
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return
    if not host or not port:
        return
    try:
        socket.create_connection((host, port), timeout=min(timeout, 5.0)).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise SetupError(f"cannot reach dask scheduler {scheduler}: {why}") from None


def torch_threads_per_worker(workers: int) -> int:
    """CPU threads for torch in each of ``workers`` local processes (>= 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


class _Borrowed:
    """An executor of the active :func:`shared_executors` scope: ``close`` leaves it running."""

    def __init__(self, executor: Any):
        self._executor = executor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._executor, name)

    def close(self) -> None:
        pass


_SCOPE: dict[tuple, Any] | None = None


@contextlib.contextmanager
def shared_executors() -> Iterator[None]:
    """Within this block, :func:`make_executor` makes each local cluster / scheduler
    client once and hands the same one to every caller (whose ``close`` then
    does nothing); all are closed when the block ends. Nested blocks share the
    outer one's executors.
    """
    global _SCOPE
    if _SCOPE is not None:
        yield
        return
    _SCOPE = {}
    try:
        yield
    finally:
        scope, _SCOPE = _SCOPE, None
        for executor in scope.values():
            with contextlib.suppress(Exception):
                executor.close()


def make_executor(workers: int = 1, scheduler: str | None = None, client: Any = None,
                  connect_timeout: float = 20.0):
    """The executor for these options (see the module docstring).

    Raises SetupError when the scheduler cannot be reached within
    ``connect_timeout`` seconds.
    """
    if client is not None:
        return DaskExecutor(client, kind="client")
    if not scheduler and workers <= 1:
        return SyncExecutor()
    if _SCOPE is None:
        return _new_executor(workers, scheduler, connect_timeout)
    key = ("scheduler", scheduler) if scheduler else ("local", int(workers))
    if key not in _SCOPE:
        _SCOPE[key] = _new_executor(workers, scheduler, connect_timeout)
    return _Borrowed(_SCOPE[key])


def _new_executor(workers: int, scheduler: str | None, connect_timeout: float):
    from her2kit.errors import SetupError

    if scheduler:
        import logging

        from distributed import Client

        _probe(scheduler, connect_timeout)
        # a scheduler lost mid-run: SchedulerLost says it in one line, not the
        # client's own log of tracebacks
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
        try:
            c = Client(scheduler, timeout=f"{connect_timeout}s")
        except Exception as exc:  # OSError / TimeoutError with a long text: its first line
            why = (str(exc).strip().splitlines() or [""])[0][:160]
            raise SetupError(f"cannot reach dask scheduler {scheduler}: {type(exc).__name__}"
                             + (f" ({why})" if why else "")) from None
        return DaskExecutor(c, kind=f"scheduler {scheduler}", own=True)
    if workers <= 1:
        return SyncExecutor()
    from distributed import Client, LocalCluster

    threads = str(torch_threads_per_worker(workers))
    from her2kit.plugins import SHOWN_ENV

    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HER2KIT_TORCH_THREADS": threads,
           SHOWN_ENV: "1"}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           # its HTTP server on a free loopback port: None meant 0.0.0.0:8787,
                           # and a warning on the user's terminal when that port was taken
                           dashboard_address="127.0.0.1:0", env=env, silence_logs=40)
    return DaskExecutor(Client(cluster), cluster, kind=f"local {workers} processes")
