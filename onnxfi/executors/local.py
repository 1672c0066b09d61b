"""Run experiments in worker processes: a fault that crashes or hangs ONNX Runtime kills only its worker.

Each worker builds an :class:`onnxfi.engine.Engine` once and keeps its site sessions warm; it takes
experiments grouped by site. A worker that dies or overruns its time budget is replaced. The experiment
it was on is retried or recorded as ``crash`` by the rule every executor shares
(:mod:`onnxfi.executors._common`): a death is retried on a fresh worker, a second death or a timeout is
a ``crash`` row with the reason (and the execution path, once the worker had built the site's runner).
An error that is not the faulty model's (a user error, a bug in onnxfi) stops the run: the worker sends
it, :meth:`LocalExecutor.run` raises it.

Where the platform has it (Linux), workers are forked from a server process that imported this module and
the engine (ONNX, ONNX Runtime) once: multiprocessing's "forkserver". A worker, a dead one's replacement
included, then starts without the second those imports take in a spawned one, and a crash still kills only
its worker. :func:`onnxfi.campaign.prestart_workers` starts the server early, so that its imports overlap the
caller's own. Elsewhere workers are spawned. The caller (the campaign's own process) never imports the
engine: ONNX Runtime loads in the server and the workers only.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from onnxfi.campaign import server_import_path
from onnxfi.engine import EngineConfig
from onnxfi.errors import InternalError
from onnxfi.executors import _common as common
from onnxfi.outcomes import crash_row
from onnxfi.plan import Experiment

__all__ = ["LocalExecutor", "default_workers", "worker_context", "FORKSERVER", "SERVER_PRELOAD"]

# Fork workers from a server process (see the module docstring) on Linux; macOS forks badly once system
# frameworks are loaded (spawn is its default for that reason), Windows cannot fork.
# onnxfi.campaign.prestart_workers makes the same choice without importing this module.
FORKSERVER = sys.platform.startswith("linux") and "forkserver" in mp.get_all_start_methods()
# What the server imports before it forks a worker: this module and the engine, which only a worker
# imports (the parent, which plans and stores, runs without ONNX Runtime). prestart_workers sets the same.
SERVER_PRELOAD = [__name__, "onnxfi.engine.engine"]


def worker_context() -> mp.context.SpawnContext | mp.context.ForkServerContext:
    """The multiprocessing context workers start in: "forkserver" with this module preloaded, else "spawn"."""
    if not FORKSERVER:
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(SERVER_PRELOAD)  # applies when the server starts (once per process)
    return ctx


def _worker_main(conn: Connection, cfg: EngineConfig, worker_id: int, env: dict[str, str] | None = None) -> None:
    # Ctrl-C reaches the whole process group: the parent handles it (stores what finished, stops the
    # workers); a worker ignores it, so it prints no KeyboardInterrupt traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if env is not None and env != os.environ:
        # a forked worker has the server's environment, from when the server started: take the parent's
        # of now, as a spawned worker would (a variable a custom metric or ONNXFI_MEMORY_MB reads)
        os.environ.clear()
        os.environ.update(env)
    try:
        from onnxfi.engine.engine import Engine  # the server's import, or a spawned worker's own

        engine = Engine(cfg)
        conn.send(("ready", engine.clean_summary(fresh=False)))  # the run its loading made: no second one
    except Exception as e:  # report, then exit: the parent raises it
        conn.send(common.startup_error(e))
        return
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        _, exp_dict, needs_bits, needs_values, ahead = msg
        exp = Experiment(**exp_dict)
        conn.send(("got", exp.id))  # from here on a hang is this experiment's (or its site's)
        built = common.build_runner(engine, exp.site, needs_bits, needs_values, exp.image is not None)
        if built[0] != common.PATH:  # not an outcome: the parent raises it
            conn.send(built)
            continue
        conn.send(("begin", exp.id, built[1]))
        conn.send(common.run_one(engine, exp, needs_bits, needs_values, worker_id,
                                 [Experiment(**d) for d in ahead]))


@dataclass
class _Worker:
    wid: int
    proc: Any
    conn: Connection
    queue: deque[Experiment] = field(default_factory=deque)
    current: Experiment | None = None
    started: float = 0.0
    running: bool = False
    received: bool = False
    golden_time: float = 0.0
    path: str | None = None  # the execution path of the current experiment's site, once its runner is built
    hinted: set[int] = field(default_factory=set)  # experiments this worker was sent as hints (computed ahead)
    sites: set[str] = field(default_factory=set)  # sites it was given (it may still hold their runners)


class LocalExecutor:
    """Runs experiments on ``workers`` processes; yields rows as they finish (in no fixed order)."""

    def __init__(
        self,
        cfg: EngineConfig,
        workers: int = 1,
        timeout_factor: float = 10.0,
        min_timeout_s: float = 30.0,
        build_timeout_s: float = 600.0,
        max_attempts: int = common.MAX_ATTEMPTS,
    ) -> None:
        self.cfg = cfg
        self.build_timeout_s = build_timeout_s  # building one site's sessions (prefix, cone, shortcut)
        self.max_attempts = max_attempts
        self._attempts: common.Attempts | None = None
        self.n_workers = max(1, workers)
        self.timeout_factor = timeout_factor
        self.min_timeout_s = min_timeout_s
        self.ctx = worker_context()
        self.clean: dict[str, Any] | None = None
        self._workers: list[_Worker] = []
        self._next_id = 0

    def _launch(self) -> tuple[int, Any, Connection]:
        """Start a worker process (it then loads its engine): ``(worker id, process, parent's end of its pipe)``."""
        parent, child = self.ctx.Pipe()
        wid = self._next_id
        self._next_id += 1
        proc = self.ctx.Process(target=_worker_main, args=(child, self.cfg, wid, dict(os.environ)), daemon=True)
        # the child (and a fork server this starts) inherits it: a Ctrl-C while it imports is the parent's alone
        with _sigint_ignored(), server_import_path():  # (the server, where this starts it, imports this onnxfi)
            proc.start()
        child.close()
        return wid, proc, parent

    def _ready(self, wid: int, proc: Any, parent: Connection) -> _Worker:
        """Wait for a launched worker's engine; raises what kept it from starting (the process killed)."""
        try:
            msg: Any = parent.recv() if parent.poll(600) else (common.USER_ERROR, "worker did not start in 600 s")
        except EOFError:
            proc.join(timeout=5)
            msg = (common.USER_ERROR, f"worker died while starting (exit code {proc.exitcode})")
        if msg[0] != "ready":
            proc.kill()
            common.unwrap(msg)  # raises OnnxfiError or InternalError
        w = _Worker(wid, proc, parent)
        w.golden_time = float(msg[1].get("golden_time_s", 0.0))
        if self.clean is None:
            self.clean = msg[1]
        return w

    def _spawn(self) -> _Worker:
        return self._ready(*self._launch())

    def start(self) -> dict[str, Any]:
        """Start the workers; returns the clean (fault-free) summary measured by the first one.

        Every worker is launched before the first is waited for: their engines (model, data, fault-free
        run) load side by side, not one after another. Should one fail to start, all are stopped."""
        if not self._workers:
            launched = [self._launch() for _ in range(self.n_workers)]
            try:
                self._workers = [self._ready(*one) for one in launched]
            except BaseException:  # one could not start (or Ctrl-C): none is left running
                for _, proc, _ in launched:
                    if proc.is_alive():
                        proc.kill()
                raise
        assert self.clean is not None
        return self.clean

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
        for w in self._workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.proc.kill()
        self._workers = []

    def _send_next(self, w: _Worker, flags: Callable[[str], tuple[bool, bool]]) -> None:
        if not w.queue:
            w.current = None
            return
        exp = w.queue.popleft()
        w.current, w.started, w.running, w.received, w.path = exp, time.monotonic(), False, False, None
        bits, values = flags(exp.site)
        ahead = [e.__dict__ for e in common.hints(w.queue, exp, self._attempts, w.hinted)]
        try:
            w.conn.send(("run", exp.__dict__, bits, values, ahead))
        except OSError:  # BrokenPipeError: the worker died after its last result; handled as a death
            pass

    def _replace(self, w: _Worker) -> _Worker:
        try:
            w.proc.kill()
            w.proc.join(timeout=5)
        except Exception:
            pass
        new = self._spawn()
        new.queue = w.queue
        return new

    def run(
        self, experiments: Sequence[Experiment], flags: Callable[[str], tuple[bool, bool]]
    ) -> Iterator[dict[str, Any]]:
        """Yield one row per experiment. ``flags(site)`` says which fault ports the site needs."""
        self.start()
        chunks = common.chunk_by_site(experiments)
        attempts = self._attempts = common.Attempts(self.max_attempts)
        for w in self._workers:
            if chunks:
                w.queue = _take_chunk(chunks, w)
                self._send_next(w, flags)
        while any(w.current is not None for w in self._workers):
            conns = {w.conn: w for w in self._workers if w.current is not None}
            sentinels = {w.proc.sentinel: w for w in self._workers if w.current is not None}
            ready = wait(list(conns) + list(sentinels), timeout=0.5)
            now = time.monotonic()
            for i, w in enumerate(list(self._workers)):
                if w.current is None:
                    continue
                # Read what the worker sent before judging it: a dead worker's pipe polls readable (EOF).
                broken = False
                while w.current is not None and w.conn.poll():
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        broken = True
                        break
                    if msg[0] == "got":
                        w.received, w.started = True, time.monotonic()
                    elif msg[0] == "begin":
                        w.running, w.started, w.path = True, time.monotonic(), msg[2]
                    elif msg[0] == common.RESULT:
                        yield msg[1]
                        if not w.queue and chunks:
                            w.queue = _take_chunk(chunks, w)
                        self._send_next(w, flags)
                    else:  # an error that is not an outcome: stop (the rows yielded so far are kept)
                        common.unwrap(msg)
                if w.current is None:
                    continue
                dead = broken or w.proc.sentinel in ready or not w.proc.is_alive()
                if dead:
                    w.proc.join(timeout=5)
                limit = common.time_limit(w.golden_time, self.timeout_factor, self.min_timeout_s)
                timed_out = not dead and w.running and now - w.started > limit
                build_hang = not dead and w.received and not w.running and now - w.started > self.build_timeout_s
                if dead or timed_out or build_hang:
                    exp = w.current
                    if exp is None:
                        raise InternalError("local executor: a worker failed with no experiment on it")
                    if dead:
                        # the experiment it was on pays, read or not (it may have died just after a result)
                        n = attempts.charge(exp)
                        if attempts.retry(n):
                            w.queue.appendleft(exp)
                        else:
                            yield crash_row(exp, attempts.reason(n, f"exit code {w.proc.exitcode}"), w.wid,
                                            path=w.path)
                    else:
                        reason = (common.timeout_reason(limit, self.timeout_factor) if timed_out
                                  else f"timeout: building the site's sessions took over {self.build_timeout_s:g} s")
                        yield crash_row(exp, reason, w.wid, path=w.path)
                    self._workers[i] = w = self._replace(w)
                    if not w.queue and chunks:
                        w.queue = _take_chunk(chunks, w)
                    self._send_next(w, flags)


def _take_chunk(chunks: deque[deque[Experiment]], w: _Worker) -> deque[Experiment]:
    """The next chunk for worker ``w``: the first of the current round (that of the first chunk left) at a
    site it was given before, else the first chunk. A site's runner (its sessions, its optimized cone, its
    fault-free reference) is then built in one worker, not again in each worker a later round's chunk of it
    lands on; rounds stay in order, so an early stop still sees whole rounds as soon as before."""
    head = chunks[0][0].round
    for j, c in enumerate(chunks):
        if c[0].round != head:
            break
        if c[0].site in w.sites:
            del chunks[j]
            return c
    c = chunks.popleft()
    w.sites.add(c[0].site)
    return c


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a worker process starts (a spawned Python keeps an inherited "ignore" until
    :func:`_worker_main` sets it for good). Only the main thread may set handlers; elsewhere, no change."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def default_workers() -> int:
    return 1 if (os.cpu_count() or 1) <= 2 else max(1, (os.cpu_count() or 2) // 2)
