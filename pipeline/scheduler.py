"""Where the graph runs: ``--scheduler threads | processes | local:N | ADDRESS``.

``threads`` (default) and ``processes`` use dask's local schedulers; ``local:N`` starts a
``dask.distributed.LocalCluster`` of N workers (at most :data:`LOCAL_WORKERS_PER_CPU` per CPU
of the machine); anything else is taken as the address of an existing ``dask.distributed``
scheduler, over plain TCP (``tcp://host:8786`` or ``host:8786``: poppyscan takes no TLS
settings). Before a client is made the address must answer as a dask scheduler within
:data:`CONNECT_TIMEOUT_S` (an HTTP server, such as the scheduler's dashboard on 8787, would
leave dask's handshake waiting for ever). The run is split into tiles and ``run_tiles`` keeps a
bounded number of them in flight, handing each finished tile to a callback in the main process,
so memory stays flat whatever the scene size.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dask

from pipeline.errors import PoppyscanError, StoppedMidRun

log = logging.getLogger(__name__)

#: seconds a scheduler address has to accept a connection, and then again to answer dask's
#: handshake as a scheduler; also the dask client's own connect timeout
#: (run.py's --help and docs/design.md state it)
CONNECT_TIMEOUT_S = 10.0
#: ``local:N`` starts N worker processes of one thread each: beyond this many per CPU they only
#: queue for the cores (each holding its own ``run.memory_per_worker``), and a typo such as
#: local:100000 would start workers until the machine gives out
#: (run.py's --help and docs/design.md state it)
LOCAL_WORKERS_PER_CPU = 4
#: how to connect instead, in the messages
_USE = "give the scheduler's address, e.g. tcp://host:8786, or use --scheduler threads"


@dataclass
class Runner:
    spec: str
    client: Any = None          # dask.distributed.Client or None
    workers: int = 2

    @property
    def dashboard(self) -> str | None:
        return getattr(self.client, "dashboard_link", None) if self.client else None


def parse_spec(spec: str) -> tuple[str, int | str | None]:
    """The kind of runner a ``--scheduler`` value names, by its form alone (the same on any
    machine, so a config loads anywhere; :func:`check_runner` adds what depends on this one)."""
    if spec in ("threads", "processes", "sync"):
        return spec, None
    m = re.fullmatch(r"local:(\d+)", spec)
    if m:
        n = int(m[1])
        if n < 1:
            raise PoppyscanError("--scheduler local:N needs N >= 1")
        return "local", n
    m = re.fullmatch(r"([A-Za-z][\w+.-]*)://.*", spec)
    if m and m[1] != "tcp":
        raise PoppyscanError(f"--scheduler '{spec}': poppyscan connects to a dask scheduler "
                             "over plain tcp only (it takes no TLS or other comm settings); "
                             "give tcp://host:8786")
    m = re.fullmatch(r"(?:tcp://)?(?:\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})", spec)
    if m and 1 <= int(m[1]) <= 65535:
        return "address", spec
    raise PoppyscanError(f"--scheduler '{spec}' is not one of threads, processes, local:N or "
                         "a scheduler address such as tcp://host:8786")


def max_local_workers() -> int:
    """The largest N ``local:N`` takes on this machine."""
    return LOCAL_WORKERS_PER_CPU * (os.cpu_count() or 1)


def check_runner(spec: str) -> None:
    """Refuse, before anything is written, what :func:`open_runner` could not start: local:N
    above :func:`max_local_workers`, an address where no dask scheduler answers."""
    kind, arg = parse_spec(spec)
    if kind == "local" and int(arg) > max_local_workers():  # type: ignore[arg-type]
        cpus = os.cpu_count() or 1
        raise PoppyscanError(
            f"--scheduler {spec}: at most {max_local_workers()} workers on this machine "
            f"({LOCAL_WORKERS_PER_CPU} per CPU, {cpus} CPUs); each worker is a process with "
            f"its own memory limit, and one per CPU (local:{cpus}) is usually fastest")
    if kind == "address":
        _ask_scheduler(str(arg))


def _ask_scheduler(address: str) -> int:
    """Connect to ``address`` and ask it who it is, each step within CONNECT_TIMEOUT_S; the
    number of workers the scheduler has. Anything but a dask scheduler answering is a
    PoppyscanError: dask's own client waits for ever on a server that does not answer its
    handshake (an HTTP server waits for the end of a request that never comes), or reads an
    HTTP reply's first bytes as a frame size (exabytes)."""
    timeout = float(CONNECT_TIMEOUT_S)
    state: dict[str, Any] = {"step": "connect"}
    # its own thread and event loop: bounded whatever happens inside (a DNS lookup cannot be
    # cancelled), and usable from a program whose own event loop runs
    t = threading.Thread(target=_ask_in_loop, args=(address, timeout, state),
                         name="poppyscan-scheduler-probe", daemon=True)
    t.start()
    t.join(2 * timeout + 5)
    step, error = state["step"], state.get("error")
    if step == "connect":
        if isinstance(error, socket.gaierror):
            why = f"its host name does not resolve: {error.strerror or error}"
        elif isinstance(error, ConnectionRefusedError):
            why = f"connection refused: nothing listened on that port for {timeout:g} s"
        elif isinstance(error, OSError) and not isinstance(error, TimeoutError):
            why = _one_line(error)
        else:
            why = f"nothing accepted a connection within {timeout:g} s"
        raise PoppyscanError(f"cannot reach the dask scheduler at {address} ({why}); start it, "
                             "check the host and port, or use --scheduler threads")
    if step == "answer":
        raise PoppyscanError(
            f"no dask scheduler answered at {address} within {timeout:g} s (something listens "
            "there but does not speak dask's protocol; the scheduler listens on 8786 by "
            f"default, 8787 is its dashboard); {_USE}")
    reply = state.get("reply")
    if not isinstance(reply, dict) or "n_workers" not in reply:
        what = reply.get("type") if isinstance(reply, dict) else None
        raise PoppyscanError(f"a dask {what or 'server'} listens at {address}, not the "
                             f"scheduler; {_USE}")
    return int(reply["n_workers"])


def _ask_in_loop(address: str, timeout: float, state: dict[str, Any]) -> None:
    """The steps of :func:`_ask_scheduler`, recorded in ``state`` as they pass: ``step`` is
    "connect" until a TCP connection is made, "answer" until the peer answered dask's
    handshake and an identity request, then "answered" (with the ``reply``)."""
    import asyncio

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    async def reach() -> None:
        """A TCP connection, retried until the timeout (a scheduler may be starting; a host
        name that does not resolve is a typo more often than a passing DNS failure)."""
        host, port = parse_host_port(parse_address(address)[1])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                   max(0.01, deadline - loop.time()))
                writer.close()
                return
            except OSError as exc:       # TimeoutError included
                state["error"] = exc
                if isinstance(exc, socket.gaierror) or loop.time() + 0.2 >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def identity() -> Any:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def main() -> None:
        await reach()
        state["step"], state["error"] = "answer", None
        state["reply"] = await asyncio.wait_for(identity(), timeout)
        state["step"] = "answered"

    try:
        asyncio.run(main())
    except Exception as exc:  # noqa: BLE001  (anything but an answer: a MemoryError for a
        # frame size read from an HTTP reply, a closed comm, a timeout)
        if state.get("error") is None:
            state["error"] = exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


@contextlib.contextmanager
def open_runner(spec: str, *, memory_per_worker: str = "3GB") -> Iterator[Runner]:
    kind, arg = parse_spec(spec)
    if kind in ("threads", "processes", "sync"):
        yield Runner(spec, None, workers=max(1, min(os.cpu_count() or 1, 8)))
        return
    check_runner(spec)
    from dask.distributed import Client, LocalCluster
    with _quiet_distributed():
        with _distributed(spec, kind, arg, memory_per_worker, Client, LocalCluster) as runner:
            yield runner


def _close_quickly(client: Any, cluster: Any, timeout: float = 5.0) -> None:
    """Close an interrupted local cluster within about ``timeout`` seconds each step."""
    import multiprocessing
    kids = multiprocessing.active_children()          # the nannies
    for close in (lambda: client.close(timeout=timeout),
                  lambda: cluster.close(timeout=timeout)):
        with contextlib.suppress(BaseException):
            close()
    for p in kids:                    # those that did not go (their workers go with them)
        with contextlib.suppress(Exception):
            p.kill()


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
        try:
            cluster = LocalCluster(n_workers=int(arg), threads_per_worker=1,  # type: ignore
                                   memory_limit=memory_per_worker, processes=True,
                                   dashboard_address=":0", silence_logs=quiet)
        except Exception as exc:  # noqa: BLE001  (whatever it is, the run cannot start)
            raise PoppyscanError(f"could not start a local dask cluster of {arg} worker(s) "
                                 f"({_one_line(exc)}); try fewer (local:N) or --scheduler "
                                 "threads") from None
        client = Client(cluster)
        try:
            yield Runner(spec, client, workers=int(arg))  # type: ignore[arg-type]
        except BaseException:
            # Ctrl-C reaches the nannies and workers too (one process group): closing them
            # gracefully could wait for ever on processes already going (a first Ctrl-C hung
            # the run in an outside audit); a bounded close, then whatever is left is killed
            _close_quickly(client, cluster)
            raise
        else:
            client.close()
            cluster.close()
        return
    # check_runner has seen a scheduler answer; whatever still goes wrong making the client
    # (the scheduler gone since, a version mismatch it refuses) is one line too
    client = None
    try:
        client = Client(str(arg), timeout=f"{CONNECT_TIMEOUT_S:g}s")
        workers = len(client.scheduler_info()["workers"])
    except Exception as exc:  # noqa: BLE001  (whatever it is, the run cannot start)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        raise PoppyscanError(f"cannot connect to the dask scheduler at {arg} "
                             f"({_one_line(exc)}); {_USE}") from None
    if not workers:
        log.warning("the dask scheduler at %s has no workers yet: the tiles wait until one "
                    "joins", arg)
    try:
        yield Runner(spec, client, workers=max(1, workers))
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
        with _signals_kept() as caught:
            while pending and len(futs) < in_flight:
                key, task = pending.pop(0)
                f = runner.client.compute(task)
                futs[f] = key
                ac.add(f)
            _run_client_loop(runner, ac, futs, pending, on_result, progress, caught)
        return
    if runner.spec == "sync":
        for key, task in tasks:
            on_result(key, _compute_sync(task))
            if progress:
                progress(1)
        return
    _run_pool(runner, tasks, on_result, in_flight, progress)


def _run_client_loop(runner: Runner, ac: Any, futs: dict, pending: list,
                     on_result: Callable[[Any, Any], None],
                     progress: Callable[[int], None] | None, caught: list) -> None:
    """The tiles of a dask.distributed run as they finish. The wait is a poll that looks at
    ``caught`` (the interrupts this run received): under local:N a Ctrl-C was at times lost
    in the client's machinery, and the run went on to the end (exit 0) or, its workers gone
    with the same Ctrl-C, waited for ever."""
    from concurrent.futures import CancelledError

    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    def lost(key: Any, exc: BaseException) -> StoppedMidRun:
        # the scheduler restarted, crashed or became unreachable: its futures are cancelled
        # ('scheduler-connection-lost'); it was a 60-line traceback, exit 1
        return StoppedMidRun(
            f"the dask scheduler was lost while tile {key} was computed ({_one_line(exc)}); "
            "finished tiles are kept: check the scheduler and its workers and rerun the same "
            "command")
    while futs:
        if caught:      # an interrupt that did not end the run: raised again here
            signal.raise_signal(caught[0])
            raise KeyboardInterrupt   # (a handler that returns: stop all the same)
        done = ac.next_batch(block=False)
        if not done:
            time.sleep(0.1)
            continue
        for fut in done:
            key = futs.pop(fut)
            try:
                value = fut.result()
            except (CancelledError, CommClosedError) as exc:
                raise lost(key, exc) from None
            except KilledWorker:
                raise StoppedMidRun(
                    f"a dask worker died computing tile {key} (most often out of memory: "
                    "its run.memory_per_worker is too small for run.chunk_size); finished "
                    "tiles are kept: raise run.memory_per_worker or lower run.chunk_size in "
                    "the config and rerun the same command") from None
            on_result(key, value)
            fut.release()
            if progress:
                progress(1)
            if pending:
                nkey, task = pending.pop(0)
                try:
                    f = runner.client.compute(task)
                except (CancelledError, CommClosedError) as exc:
                    raise lost(nkey, exc) from None
                futs[f] = nkey
                ac.add(f)


@contextlib.contextmanager
def _signals_kept() -> Iterator[list[int]]:
    """The SIGINT and SIGTERM a run receives, noted before the handlers in place (Ctrl-C's
    KeyboardInterrupt, run.py's SIGTERM) are called, so that a loop can raise them again if
    they were swallowed on the way. Main thread only (elsewhere: nothing noted)."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        before = signal.getsignal(sig)
        if not callable(before):
            continue

        def noted(signum: int, frame: Any, _before: Any = before) -> None:
            caught.append(signum)
            _before(signum, frame)
        previous[sig] = before
        signal.signal(sig, noted)
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
        # on an error or Ctrl-C: queued tiles are dropped; threads end their running tile on
        # their own, worker processes are stopped (their tiles are lost anyway, and a worker
        # interrupted while it was being started could hold the exit for minutes: the pool
        # joins its workers when the interpreter exits)
        # (the worker list is taken first: shutdown() forgets it)
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=not futs, cancel_futures=True)
        if futs and runner.spec == "processes":
            for proc in procs:
                with contextlib.suppress(Exception):
                    proc.terminate()
