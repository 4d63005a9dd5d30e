"""--scheduler: what is refused, and how, before anything is written.

A wrong address (an HTTP server, dask's dashboard port, a worker's port), a scheme poppyscan
cannot connect with (tls://, inproc://) and a local cluster far larger than the machine are a
user's error: one line, exit 2, no output folder, within the connect timeout. Each call that
could hang runs in a thread given a deadline, so a regression fails instead of hanging.
"""
from __future__ import annotations

import http.server
import os
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import run as cli
from pipeline import scheduler
from pipeline.errors import PoppyscanError
from pipeline.scheduler import open_runner, parse_spec, run_tiles

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 2.0       # the connect timeout the tests set (the default is 10 s)
DEADLINE_S = 30.0     # any call: finished by then, or it hangs


def _within(fn: Callable[[], Any], seconds: float = DEADLINE_S) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def go() -> None:
        t0 = time.perf_counter()
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc
        box["seconds"] = time.perf_counter() - t0
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still running after {seconds} s (hangs)"
    return box


def _open(spec: str) -> None:
    with open_runner(spec):
        pass


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False


class _HttpAtOnce(socketserver.BaseRequestHandler):
    """Answers HTTP before being asked, as a proxy or a firewall page can: dask read its first
    8 bytes ("HTTP/1.1") as a frame length and tried to allocate 3.07 EiB."""

    def handle(self) -> None:
        self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        while self.request.recv(65536):
            pass


def _serve(handler: Any) -> Iterator[str]:
    srv = _Server(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"tcp://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def http_server() -> Iterator[str]:
    yield from _serve(_Quiet)


@pytest.fixture
def http_at_once() -> Iterator[str]:
    yield from _serve(_HttpAtOnce)


@pytest.fixture
def short_timeout(monkeypatch) -> None:
    monkeypatch.setattr(scheduler, "CONNECT_TIMEOUT_S", TIMEOUT_S, raising=False)


@pytest.mark.parametrize("server", ["http_server", "http_at_once"])
def test_an_http_server_is_not_taken_for_a_scheduler(request, server, short_timeout):
    address = request.getfixturevalue(server)
    got = _within(lambda: _open(address))
    assert isinstance(got.get("error"), PoppyscanError), got
    msg = str(got["error"])
    assert msg.startswith(f"no dask scheduler answered at {address} within 2 s"), msg
    assert "8786" in msg and "8787 is its dashboard" in msg and "\n" not in msg
    assert got["seconds"] < 3 * TIMEOUT_S + 2


def test_a_closed_port_is_one_line_within_the_timeout(short_timeout):
    import socket
    with socket.socket() as s:          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = _within(lambda: _open(f"tcp://127.0.0.1:{port}"))
    assert isinstance(got.get("error"), PoppyscanError), got
    assert str(got["error"]).startswith(f"cannot reach the dask scheduler at tcp://127.0.0.1:"
                                        f"{port}")
    assert got["seconds"] < 2 * TIMEOUT_S + 2


def _detect_argv(tmp_path: Path, spec: str) -> list[str]:
    """detect checks --scheduler before reading the model or the images: these need not
    exist for the refusal."""
    return ["detect", "--images", str(tmp_path / "S2_20240420.tif"), "--model",
            str(tmp_path / "model"), "--config", str(ROOT / "configs" / "survey-sentinel2.yaml"),
            "--out", str(tmp_path / "out"), "--scheduler", spec]


def _cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    got = _within(lambda: cli.main(argv))
    if "error" in got:
        raise got["error"]
    return got["value"], capsys.readouterr().err.splitlines()


def test_detect_with_an_http_server_as_scheduler_exits_2_with_one_line(
        tmp_path, capsys, http_server, short_timeout):
    rc, err = _cli(_detect_argv(tmp_path, http_server), capsys)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(
        f"poppyscan: error: no dask scheduler answered at {http_server} within 2 s"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", ["tls://127.0.0.1:18786", "inproc://x", "ucx://host:13337",
                                  "ws://host:8786", "TCP://host:8786"])
def test_schemes_other_than_tcp_are_refused_up_front(spec):
    with pytest.raises(PoppyscanError, match="plain tcp only.*tcp://host:8786"):
        parse_spec(spec)


@pytest.mark.parametrize("spec", ["tcp://127.0.0.1", "tcp://host:", "tcp://host:99999",
                                  "tcp://", "host:0"])
def test_an_address_needs_a_port(spec):
    with pytest.raises(PoppyscanError, match="not one of .* tcp://host:8786"):
        parse_spec(spec)


@pytest.mark.parametrize("spec", ["tcp://127.0.0.1:8786", "127.0.0.1:8786", "sched.lan:8786",
                                  "tcp://[::1]:8786", "[::1]:8786"])
def test_tcp_addresses_are_taken(spec):
    assert parse_spec(spec) == ("address", spec)


def test_detect_refuses_tls_with_one_line_and_writes_nothing(tmp_path, capsys):
    rc, err = _cli(_detect_argv(tmp_path, "tls://127.0.0.1:18786"), capsys)
    assert rc == 2 and len(err) == 1 and "plain tcp only" in err[0], err
    assert not (tmp_path / "out").exists()


def test_local_n_above_the_cap_is_refused(tmp_path, capsys):
    cap = 4 * (os.cpu_count() or 1)
    assert scheduler.max_local_workers() == cap
    scheduler.check_runner(f"local:{cap}")         # the cap itself is fine
    with pytest.raises(PoppyscanError, match=f"local:{cap + 1}: at most {cap} workers"):
        scheduler.check_runner(f"local:{cap + 1}")
    rc, err = _cli(_detect_argv(tmp_path, "local:100000"), capsys)
    assert rc == 2 and len(err) == 1 and f"at most {cap} workers" in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_local_n_config_loads_on_any_machine():
    """The cap depends on the machine, so it is checked where the run starts, not when a
    config (or a model's training config) is loaded."""
    from pipeline.config import load_config, with_overrides
    cfg = with_overrides(load_config(), **{"run.scheduler": "local:100000"})
    assert cfg.run.scheduler == "local:100000"


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=":0") as c:
        yield c


def test_a_real_scheduler_runs_the_tiles(cluster):
    import dask
    got: list = []

    def go() -> int:
        with open_runner(cluster.scheduler_address) as runner:
            tasks = [(k, dask.delayed(lambda v: v + 1)(k)) for k in range(4)]
            run_tiles(runner, tasks, lambda k, v: got.append((k, v)))
            return runner.workers
    res = _within(go)
    assert res.get("value") == 1, res
    assert sorted(got) == [(k, k + 1) for k in range(4)]


def test_a_worker_address_is_not_taken_for_the_scheduler(cluster, short_timeout):
    worker = next(iter(cluster.scheduler_info["workers"]))
    got = _within(lambda: _open(worker))
    assert isinstance(got.get("error"), PoppyscanError), got
    assert str(got["error"]).startswith(f"a dask Worker listens at {worker}, not the "
                                        "scheduler"), got["error"]


def test_a_local_cluster_that_cannot_start_is_one_line(monkeypatch):
    """Whatever stops LocalCluster (process limits, a port) ends the run with one line."""
    import dask.distributed

    from pipeline.errors import PoppyscanError
    from pipeline.scheduler import open_runner

    def refuse(*a, **k):
        raise OSError("[Errno 11] Resource temporarily unavailable")
    monkeypatch.setattr(dask.distributed, "LocalCluster", refuse)
    with pytest.raises(PoppyscanError, match=r"could not start a local dask cluster of 1 "
                                             r"worker\(s\) \(.*Resource temporarily"), \
            open_runner("local:1"):
        pass


def test_a_worker_killed_for_memory_is_one_line_and_keeps_the_tiles(cluster):
    """dask's KilledWorker (a worker over run.memory_per_worker) was a 25-line traceback,
    exit 1; now a StoppedMidRun naming the settings (run.py keeps the finished tiles)."""
    from types import SimpleNamespace

    import dask
    from distributed.scheduler import KilledWorker

    from pipeline.errors import StoppedMidRun

    def boom(v: int) -> int:
        if v == 2:
            raise KilledWorker("tile-2", SimpleNamespace(address="tcp://10.0.0.9:40001"), 3)
        return v

    got: list = []

    def go() -> None:
        with open_runner(cluster.scheduler_address) as runner:
            run_tiles(runner, [(k, dask.delayed(boom)(k)) for k in range(4)],
                      lambda k, v: got.append(k), in_flight=1)
    res = _within(go)
    err = res.get("error")
    assert isinstance(err, StoppedMidRun), res
    assert "run.memory_per_worker" in str(err) and "tile 2" in str(err)
    assert got == [0, 1]                         # the tiles before it were handed over


def test_a_run_stopped_mid_way_keeps_its_output_folder(tmp_path, monkeypatch, capsys):
    import run as cli
    from pipeline.errors import StoppedMidRun

    out = tmp_path / "out"

    def stopped(args):
        (out / ".poppyscan" / "tiles").mkdir(parents=True)
        raise StoppedMidRun("a dask worker died computing tile 3")
    monkeypatch.setattr(cli, "_dispatch", stopped)
    rc, lines = _cli(_detect_argv(tmp_path, "threads"), capsys)
    assert rc == 2 and lines == ["poppyscan: error: a dask worker died computing tile 3"]
    assert (out / ".poppyscan" / "tiles").is_dir()        # the finished tiles, for the rerun


def _worker_alive(p) -> bool:
    """A pool worker still running (not ended, a zombie, or multiprocessing's resource
    tracker); a process that ends while it is asked counts as ended."""
    import psutil
    try:
        return (p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                and "resource_tracker" not in " ".join(p.cmdline()))
    except psutil.Error:
        return False


def test_an_error_in_a_processes_run_stops_the_other_workers():
    """A tile that fails ends the run at once, and the worker processes still computing other
    tiles are stopped (left running, the interpreter's exit waited for them: a long tile
    held a SIGTERM for minutes)."""
    import operator

    import dask
    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    tasks = [(0, dask.delayed(time.sleep)(120)), (1, dask.delayed(operator.truediv)(1, 0))]

    def go() -> None:
        with open_runner("processes") as runner:
            run_tiles(runner, tasks, lambda k, v: None, in_flight=2)
    res = _within(go, 60)
    assert isinstance(res.get("error"), ZeroDivisionError), res
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = [p for p in me.children(recursive=True)
                 if p.pid not in before and _worker_alive(p)]
        if not alive:
            break
        time.sleep(0.2)
    assert not alive, f"worker processes still running: {[p.pid for p in alive]}"


def test_a_scheduler_lost_mid_run_is_one_line_and_keeps_the_tiles(cluster):
    """A scheduler that restarts, crashes or becomes unreachable cancels the run's futures
    ('scheduler-connection-lost'): it was a 60-line traceback, exit 1."""
    import dask
    from distributed.client import FutureCancelledError

    from pipeline.errors import StoppedMidRun

    def cut(v: int) -> int:
        if v == 2:
            raise FutureCancelledError(f"tile-{v}", "scheduler-connection-lost")
        return v

    got: list = []

    def go() -> None:
        with open_runner(cluster.scheduler_address) as runner:
            run_tiles(runner, [(k, dask.delayed(cut)(k)) for k in range(4)],
                      lambda k, v: got.append(k), in_flight=1)
    res = _within(go)
    err = res.get("error")
    assert isinstance(err, StoppedMidRun), res
    assert "scheduler was lost while tile 2" in str(err) and "rerun the same command" in str(err)
    assert got == [0, 1]


def test_an_interrupt_swallowed_on_the_way_still_stops_a_distributed_run(cluster):
    """Under local:N a Ctrl-C was at times lost in the client's machinery: the run went on to
    exit 0, or (its workers gone with the Ctrl-C) waited for ever. An interrupt the run
    received is raised again by its loop, here after code on the way swallowed it."""
    import signal as sig

    import dask
    got: list = []

    def on_result(k, v):
        got.append(k)
        if k == 0:
            try:                       # what some library code on the way did
                os.kill(os.getpid(), sig.SIGINT)
                time.sleep(1)
            except KeyboardInterrupt:
                pass

    def go() -> None:
        with open_runner(cluster.scheduler_address) as runner:
            run_tiles(runner, [(k, dask.delayed(time.sleep)(0.2)) for k in range(8)],
                      on_result, in_flight=1)
    assert threading.current_thread() is threading.main_thread()
    # Ctrl-C's usual handler, also where the suite was started in the background of a
    # non-interactive shell, which leaves SIGINT ignored (the kill above would do nothing)
    before = sig.signal(sig.SIGINT, sig.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            go()
    finally:
        sig.signal(sig.SIGINT, before)
    assert got == [0]
