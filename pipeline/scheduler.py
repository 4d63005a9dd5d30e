"""Where the graph runs: ``--scheduler threads | processes | local:N | ADDRESS``.

``threads`` (default) and ``processes`` use dask's local schedulers; ``local:N`` starts a
``dask.distributed.LocalCluster`` of N workers; anything else is taken as the address of an
existing ``dask.distributed`` scheduler (``tcp://host:8786``). The run is split into tiles
and ``run_tiles`` keeps a bounded number of them in flight, handing each finished tile to a
callback in the main process, so memory stays flat whatever the scene size.
"""
from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask

from pipeline.errors import PoppyscanError

log = logging.getLogger(__name__)


@dataclass
class Runner:
    spec: str
    client: Any = None          # dask.distributed.Client or None
    workers: int = 2

    @property
    def dashboard(self) -> str | None:
        return getattr(self.client, "dashboard_link", None) if self.client else None


def parse_spec(spec: str) -> tuple[str, int | str | None]:
    if spec in ("threads", "processes", "sync"):
        return spec, None
    m = re.fullmatch(r"local:(\d+)", spec)
    if m:
        n = int(m[1])
        if n < 1:
            raise PoppyscanError("--scheduler local:N needs N >= 1")
        return "local", n
    if re.fullmatch(r"(tcp|tls|inproc|ucx)://\S+|\S+:\d+", spec):
        return "address", spec
    raise PoppyscanError(f"--scheduler '{spec}' is not one of threads, processes, local:N or "
                         "a scheduler address such as tcp://host:8786")


@contextlib.contextmanager
def open_runner(spec: str, *, memory_per_worker: str = "3GB") -> Iterator[Runner]:
    kind, arg = parse_spec(spec)
    if kind in ("threads", "processes", "sync"):
        import os
        yield Runner(spec, None, workers=max(1, min(os.cpu_count() or 1, 8)))
        return
    from dask.distributed import Client, LocalCluster
    with _quiet_distributed():
        with _distributed(spec, kind, arg, memory_per_worker, Client, LocalCluster) as runner:
            yield runner


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """dask.distributed logs every scheduler, nanny and connection event at INFO; keep them
    to errors while a run lasts (unless poppyscan's own log is at DEBUG)."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
               if n == "distributed" or n.startswith("distributed.")]
    loggers.append(logging.getLogger("distributed"))
    saved = [(lg, lg.level) for lg in loggers]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


@contextlib.contextmanager
def _distributed(spec: str, kind: str, arg: Any, memory_per_worker: str, Client: Any,
                 LocalCluster: Any) -> Iterator[Runner]:
    if kind == "local":
        # a task's error reaches the client and is reported there (one line for a user
        # error); the worker's own "Compute Failed" block would print a traceback before it
        quiet = logging.ERROR if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL
        cluster = LocalCluster(n_workers=int(arg), threads_per_worker=1,  # type: ignore[arg-type]
                               memory_limit=memory_per_worker, processes=True,
                               dashboard_address=":0", silence_logs=quiet)
        client = Client(cluster)
        try:
            yield Runner(spec, client, workers=int(arg))  # type: ignore[arg-type]
        finally:
            client.close()
            cluster.close()
        return
    try:
        client = Client(str(arg), timeout="10s")
    except OSError as exc:
        raise PoppyscanError(f"cannot reach the dask scheduler at {arg} ({exc}); start it or "
                             "use --scheduler threads") from None
    try:
        yield Runner(spec, client, workers=max(1, len(client.scheduler_info()["workers"])))
    finally:
        client.close()


def run_tiles(runner: Runner, tasks: Sequence[tuple[Any, Any]],
              on_result: Callable[[Any, Any], None], *, in_flight: int | None = None,
              progress: Callable[[int], None] | None = None) -> None:
    """Compute ``(key, delayed)`` tasks, at most ``in_flight`` at a time, calling
    ``on_result(key, value)`` in the main process as each finishes."""
    in_flight = in_flight or max(2, 2 * runner.workers)
    if runner.client is not None:
        from dask.distributed import as_completed
        pending = list(tasks)
        futs = {}
        ac = as_completed()
        while pending and len(futs) < in_flight:
            key, task = pending.pop(0)
            f = runner.client.compute(task)
            futs[f] = key
            ac.add(f)
        for fut in ac:
            key = futs.pop(fut)
            on_result(key, fut.result())
            fut.release()
            if progress:
                progress(1)
            if pending:
                nkey, task = pending.pop(0)
                f = runner.client.compute(task)
                futs[f] = nkey
                ac.add(f)
        return
    if runner.spec == "sync":
        for key, task in tasks:
            on_result(key, _compute_sync(task))
            if progress:
                progress(1)
        return
    _run_pool(runner, tasks, on_result, in_flight, progress)


def _compute_sync(task: Any) -> Any:
    """One tile computed start to end in the calling thread or process."""
    return dask.compute(task, scheduler="sync")[0]


def _run_pool(runner: Runner, tasks: Sequence[tuple[Any, Any]],
              on_result: Callable[[Any, Any], None], in_flight: int,
              progress: Callable[[int], None] | None) -> None:
    """Tiles on a pool of ``runner.workers`` threads or processes, each tile handed to
    ``on_result`` as soon as it is done (not when a whole batch is): a crash or Ctrl-C loses
    only the tiles in flight, and a slow tile does not hold the others back."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
    if runner.spec == "processes":
        import multiprocessing as mp
        pool: Any = ProcessPoolExecutor(runner.workers, mp_context=mp.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(runner.workers, thread_name_prefix="poppyscan-tile")
    pending = list(tasks)
    futs: dict[Any, Any] = {}
    try:
        while pending or futs:
            while pending and len(futs) < in_flight:
                key, task = pending.pop(0)
                futs[pool.submit(_compute_sync, task)] = key
            done, _ = wait(futs, return_when=FIRST_COMPLETED)
            for fut in done:
                key = futs.pop(fut)
                on_result(key, fut.result())
                if progress:
                    progress(1)
    finally:
        # on an error or Ctrl-C: queued tiles are dropped, running ones end on their own
        pool.shutdown(wait=not futs, cancel_futures=True)
