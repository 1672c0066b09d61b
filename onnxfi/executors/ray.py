"""Run experiments on Ray actors (one machine or a cluster): plan experiments in, stored rows out.

Same interface and rows as :class:`onnxfi.executors.local.LocalExecutor`. Each actor builds an
:class:`onnxfi.engine.Engine` once and takes whole site groups, so its site sessions stay warm; an
idle actor takes half of the busiest actor's unsent work. Results come back one experiment at a
time to the driver, which stores them.

Failures: an actor that dies (a fault that kills ONNX Runtime, a lost node, ``ray.kill``) is
replaced, and the experiments it held go back to the queue. Actor calls run in submission order,
so only the oldest unfinished experiment of a dead actor can have killed it: that one is charged the
death, the others go back free. The retry rule and the time limit are the local executor's
(:mod:`onnxfi.executors._common`): a charged experiment runs again on a fresh actor, and is stored as
``crash`` when it has killed ``max_attempts`` of them; an experiment that overruns its time budget is a
``crash`` at once (a hang repeats). Every experiment is yielded exactly once. An error that is not the
faulty model's (a user error, a bug in onnxfi) comes back as a reply and :meth:`RayExecutor.run` raises
it, as the local executor does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray

from onnxfi import plan
from onnxfi.engine import Engine, EngineConfig
from onnxfi.errors import InternalError, OnnxfiError, first_line
from onnxfi.executors import _common as common
from onnxfi.outcomes import crash_row
from onnxfi.plan import Experiment

__all__ = ["RayExecutor", "check_reachable", "COPIES_DIR"]

# Experiment calls queued on one actor beyond the one it runs: hides the driver round trip.
WINDOW = 3
# An idle actor steals from another's unsent work only when there is this much (a site session costs).
STEAL_MIN = 4
# Files up to this size are compared by hash on the worker's node; larger ones by size only.
HASH_LIMIT = 256 << 20
# Refuse to ship more than this through the object store: put the files on shared storage instead.
SHIP_LIMIT = 2 << 30
# A node whose files differ from the driver's (by size, or by SHA-256 up to HASH_LIMIT) keeps shipped
# copies under $TMPDIR/COPIES_DIR/<key of the files' descriptions>/ and runs on them.
COPIES_DIR = "onnxfi-ray-files"


@dataclass(frozen=True)
class _File:
    path: str  # as the driver names it (absolute)
    size: int
    sha256: str | None


def _describe(path: str) -> _File:
    p = Path(path).resolve()
    size = p.stat().st_size
    return _File(str(p), size, plan.file_sha256(p) if size <= HASH_LIMIT else None)


def _same(f: _File) -> bool:
    p = Path(f.path)
    if not p.is_file() or p.stat().st_size != f.size:
        return False
    return f.sha256 is None or plan.file_sha256(p) == f.sha256


def _external_files(model_path: str) -> list[str]:
    """Absolute paths of the external-data files a model names (relative to its folder)."""
    import onnx

    from onnxfi.model import iter_tensor_protos

    try:
        proto = onnx.load_model(model_path, load_external_data=False)
    except Exception:
        return []  # the engine reports a bad model with its own message
    base = Path(model_path).resolve().parent
    found: dict[str, None] = {}
    for t in iter_tensor_protos(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location")
            if loc and (base / loc).is_file():
                found[str((base / loc).resolve())] = None
    return list(found)


def _copy_paths(cfg: EngineConfig, files: list[_File]) -> dict[str, Path]:
    """Where a node keeps its copies of the campaign files: ``$TMPDIR/onnxfi-ray-files/<key>/`` (see
    :data:`COPIES_DIR`), the model's folder layout kept (external data), the data file beside it."""
    key = hashlib.sha256(repr(files).encode()).hexdigest()[:16]
    root = Path(tempfile.gettempdir()) / COPIES_DIR / key
    base = Path(cfg.model_path).resolve().parent
    out: dict[str, Path] = {}
    for f in files:
        rel = os.path.relpath(f.path, base)
        out[f.path] = root / "model" / rel if not rel.startswith("..") else root / "data" / Path(f.path).name
    return out


class _EngineActor:
    """What one Ray actor runs (wrapped with ``ray.remote`` by the executor)."""

    def __init__(self, cfg: EngineConfig, wid: int, sys_path: list[str]) -> None:
        self.cfg, self.wid = cfg, wid
        self.engine: Engine | None = None
        # Like a spawned local worker, see the driver's import paths (custom --metric modules).
        sys.path[:0] = [p for p in sys_path if p not in sys.path and os.path.isdir(p)]

    def setup(self, files: list[_File], shipped: list[Any] | None) -> tuple[Any, ...]:
        """("missing",) when this node lacks the campaign files, an error reply
        (:func:`onnxfi.executors._common.startup_error`) when the engine cannot start, else
        ("ready", clean summary, pid, node id)."""
        cfg = self.cfg
        if not all(_same(f) for f in files):
            # This node's files differ: use (or make) a copy under a folder named after their contents.
            copies = _copy_paths(cfg, files)
            if not all(_same(replace(f, path=str(copies[f.path]))) for f in files):
                if not shipped:
                    return ("missing",)
                contents: dict[str, bytes] = ray.get(shipped[0])
                for path, blob in contents.items():
                    target = copies[path]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    partial = target.with_name(f".{target.name}.{os.getpid()}")  # actors on one node may race
                    partial.write_bytes(blob)
                    os.replace(partial, target)
            model = copies.get(str(Path(cfg.model_path).resolve()))
            data = copies.get(str(Path(cfg.data_path).resolve())) if cfg.data_path else None
            cfg = replace(cfg, model_path=str(model) if model else cfg.model_path,
                          data_path=str(data) if data else cfg.data_path)
        try:
            self.engine = Engine(cfg)
            clean = self.engine.clean_summary(fresh=False)
        except Exception as e:  # reported to the driver, which raises it
            return common.startup_error(e)
        return ("ready", clean, os.getpid(), ray.get_runtime_context().get_node_id())

    def _engine(self) -> Engine:
        if self.engine is None:
            raise InternalError("a Ray worker was given work before its setup succeeded")
        return self.engine

    def prepare(self, site: str, needs_bits: bool, needs_values: bool, transient: bool = False) -> common.Reply:
        """Build the site's session (not timed: the next experiments are): (PATH, its path) or an error."""
        return common.build_runner(self._engine(), site, needs_bits, needs_values, transient)

    def run(self, exp_dict: dict[str, Any], needs_bits: bool, needs_values: bool,
            ahead: list[dict[str, Any]] | None = None) -> common.Reply:
        return common.run_one(self._engine(), Experiment(**exp_dict), needs_bits, needs_values, self.wid,
                              [Experiment(**d) for d in ahead or []])

    def pid(self) -> int:
        return os.getpid()


@dataclass
class _Slot:
    """One actor and the work it holds: ``queue`` not yet sent, ``inflight`` sent (oldest first)."""

    wid: int
    actor: Any
    setup_ref: Any = None
    ready: bool = False
    golden_time: float = 0.0
    pid: int | None = None
    node: str | None = None
    queue: deque[Experiment] = field(default_factory=deque)
    inflight: deque[tuple[Any, Experiment | None]] = field(default_factory=deque)  # None: a prepare call
    head_since: float = 0.0
    site_key: tuple[str, bool, bool, bool] | None = None
    paths: dict[str, str] = field(default_factory=dict)  # site -> execution path, as prepare reported it
    preparing: dict[Any, str] = field(default_factory=dict)  # prepare call -> its site
    hinted: set[int] = field(default_factory=set)  # experiments sent to this actor as hints (computed ahead)


class RayExecutor:
    """Runs experiments on ``workers`` Ray actors; yields rows as they finish (in no fixed order).

    ``address``: a running cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); default
    ``$RAY_ADDRESS``, else a private Ray instance on this machine. When Ray is already initialised in
    this process, that connection is used (and left open by :meth:`close`).
    """

    def __init__(
        self,
        cfg: EngineConfig,
        workers: int = 1,
        address: str | None = None,
        timeout_factor: float = 10.0,
        min_timeout_s: float = 30.0,
        max_attempts: int = common.MAX_ATTEMPTS,
        start_timeout_s: float = 600.0,
    ) -> None:
        # Actors do not share the driver's working directory: give them absolute paths.
        self.cfg = replace(cfg, model_path=os.path.abspath(cfg.model_path),
                           data_path=os.path.abspath(cfg.data_path) if cfg.data_path else None)
        self.n_workers = max(1, workers)
        self.address = address
        self.timeout_factor = timeout_factor
        self.min_timeout_s = min_timeout_s
        self.max_attempts = max_attempts
        self._attempts: common.Attempts | None = None
        self.start_timeout_s = start_timeout_s
        self.clean: dict[str, Any] | None = None
        self.cpus_per_worker = max(1, cfg.threads or 1)
        self._owns_ray = False
        self._tag = uuid.uuid4().hex[:8]
        self._slots: list[_Slot] = []
        self._next_id = 0
        self._files: list[_File] = []
        self._shipped: list[Any] | None = None
        self._actor_cls: Any = None
        self._failed_starts = 0

    # ------------------------------------------------------------------ actors

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        addr = self.address or os.environ.get("RAY_ADDRESS") or "local"
        check_reachable(addr)
        kwargs: dict[str, Any] = {}
        if addr == "local":
            kwargs["num_cpus"] = max(os.cpu_count() or 1, self.n_workers * self.cpus_per_worker)
        try:
            ray.init(address=addr, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False, **kwargs)
        except (ConnectionError, ValueError, RuntimeError) as e:
            first = first_line(e, limit=None)
            hint = "" if addr == "local" else (
                "; a cluster with token authentication also needs RAY_AUTH_MODE=token and its token here")
            raise OnnxfiError(f"cannot start or reach Ray at {addr!r}: {first}{hint}") from None
        self._owns_ray = True

    def _spawn(self) -> _Slot:
        wid = self._next_id
        self._next_id += 1
        actor = self._actor_cls.options(
            num_cpus=self.cpus_per_worker, name=f"onnxfi-worker-{self._tag}-{wid}", max_restarts=0,
        ).remote(self.cfg, wid, [os.path.abspath(p or ".") for p in sys.path])
        slot = _Slot(wid, actor)
        slot.setup_ref = actor.setup.remote(self._files, self._shipped)
        return slot

    def _ship(self) -> list[Any]:
        if self._shipped is None:
            total = sum(f.size for f in self._files)
            if total > SHIP_LIMIT:
                raise OnnxfiError(
                    f"a Ray node lacks the campaign files ({total / 2**30:.1f} GiB, too large to ship): "
                    f"put {self.cfg.model_path} and its data at the same path on every node")
            self._shipped = [ray.put({f.path: Path(f.path).read_bytes() for f in self._files})]
        return self._shipped

    def _on_setup(self, slot: _Slot) -> None:
        """Handle a finished setup call (raises OnnxfiError when the engine cannot start)."""
        try:
            msg = ray.get(slot.setup_ref)
        except ray.exceptions.RayError as e:
            self._failed_starts += 1
            if self._failed_starts > 3 * self.n_workers and not any(s.ready for s in self._slots):
                raise OnnxfiError(f"Ray workers keep dying at start-up: {common.error_text(e)}") from None
            self._replace(slot)
            return
        if msg[0] == "missing":
            slot.setup_ref = slot.actor.setup.remote(self._files, self._ship())
            return
        if msg[0] != "ready":
            common.unwrap(msg)  # raises OnnxfiError or InternalError
        _, clean, slot.pid, slot.node = msg
        slot.setup_ref, slot.ready = None, True
        slot.golden_time = float(clean.get("golden_time_s", 0.0))
        if self.clean is None:
            self.clean = clean

    def _replace(self, slot: _Slot) -> None:
        try:
            ray.kill(slot.actor, no_restart=True)
        except Exception:
            pass  # already gone
        self._slots[self._slots.index(slot)] = self._spawn()

    def start(self) -> dict[str, Any]:
        """Start the actors; returns the clean (fault-free) summary measured by the first one ready.

        The others join when they are ready: a cluster short of CPUs still runs the campaign."""
        if self.clean is not None:
            return self.clean
        self._connect()
        self._actor_cls = ray.remote(_EngineActor)
        self._files = [_describe(self.cfg.model_path)] if Path(self.cfg.model_path).is_file() else []
        if self._files:
            self._files += [_describe(p) for p in _external_files(self.cfg.model_path)]
        if self.cfg.data_path and Path(self.cfg.data_path).is_file():
            self._files.append(_describe(self.cfg.data_path))
        self._slots = [self._spawn() for _ in range(self.n_workers)]
        deadline = time.monotonic() + self.start_timeout_s
        while self.clean is None:
            pending = {s.setup_ref: s for s in self._slots if s.setup_ref is not None}
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                cpus = ray.cluster_resources().get("CPU", 0)
                raise OnnxfiError(f"no Ray worker started in {self.start_timeout_s:g} s (the cluster has "
                                  f"{cpus:g} CPUs; each worker asks for {self.cpus_per_worker})")
            for ref in done:
                self._on_setup(pending[ref])
        return self.clean

    def close(self) -> None:
        for s in self._slots:
            try:
                ray.kill(s.actor, no_restart=True)
            except Exception:
                pass
        self._slots = []
        self._shipped = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    # --------------------------------------------------------------------- run

    def run(
        self, experiments: Sequence[Experiment], flags: Callable[[str], tuple[bool, bool]]
    ) -> Iterator[dict[str, Any]]:
        """Yield one row per experiment. ``flags(site)`` says which fault ports the site needs."""
        self.start()
        chunks = common.chunk_by_site(experiments)
        remaining = {e.id for e in experiments}
        attempts = self._attempts = common.Attempts(self.max_attempts)
        last_progress = time.monotonic()
        while remaining:
            for slot in list(self._slots):
                if slot.ready:
                    self._feed(slot, chunks, flags)
            refs: dict[Any, _Slot] = {}
            for s in self._slots:
                if s.setup_ref is not None:
                    refs[s.setup_ref] = s
                elif s.inflight:
                    refs[s.inflight[0][0]] = s  # results come in order: only the oldest matters
            if not any(s.inflight for s in self._slots) and not chunks:
                raise InternalError(f"Ray executor lost track of {len(remaining)} experiments")
            stalled = time.monotonic() - last_progress > self.start_timeout_s
            if stalled and not any(s.ready for s in self._slots):
                raise OnnxfiError(f"no Ray worker came back in {self.start_timeout_s:g} s after losing them "
                                  f"all ({len(remaining)} experiments left; continue later with --resume)")
            done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            if done:
                done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
            for ref in done:
                slot = refs[ref]
                if ref == slot.setup_ref:
                    self._on_setup(slot)
                    last_progress = time.monotonic()
                    continue
                last_progress = time.monotonic()
                yield from self._collect(slot, remaining, attempts, chunks)
            now = time.monotonic()
            for slot in list(self._slots):
                head = slot.inflight[0][1] if slot.inflight else None
                limit = common.time_limit(slot.golden_time, self.timeout_factor, self.min_timeout_s)
                if head is not None and now - slot.head_since > limit:
                    slot.inflight.popleft()
                    remaining.discard(head.id)
                    yield crash_row(head, common.timeout_reason(limit, self.timeout_factor), slot.wid,
                                    path=slot.paths.get(head.site))
                    self._requeue(slot, chunks)
                    self._replace(slot)

    def _feed(self, slot: _Slot, chunks: deque[deque[Experiment]],
              flags: Callable[[str], tuple[bool, bool]]) -> None:
        while sum(1 for _, e in slot.inflight if e is not None) < WINDOW:
            if not slot.queue:
                if chunks:
                    slot.queue = chunks.popleft()
                else:
                    donor = max(self._slots, key=lambda s: len(s.queue))
                    if len(donor.queue) < STEAL_MIN:
                        return
                    half = len(donor.queue) // 2
                    slot.queue = deque(donor.queue.pop() for _ in range(half))
                    slot.queue.reverse()
            exp = slot.queue.popleft()
            bits, values = flags(exp.site)
            if not slot.inflight:
                slot.head_since = time.monotonic()
            transient = exp.image is not None
            if slot.site_key != (exp.site, bits, values, transient):
                slot.site_key = (exp.site, bits, values, transient)
                ref = slot.actor.prepare.remote(exp.site, bits, values, transient)
                slot.preparing[ref] = exp.site
                slot.inflight.append((ref, None))
            ahead = [e.__dict__ for e in common.hints(slot.queue, exp, self._attempts, slot.hinted)]
            slot.inflight.append((slot.actor.run.remote(exp.__dict__, bits, values, ahead), exp))

    def _collect(self, slot: _Slot, remaining: set[int], attempts: common.Attempts,
                 chunks: deque[deque[Experiment]]) -> Iterator[dict[str, Any]]:
        """Take the finished results at the front of ``slot``; on a dead actor, requeue and replace."""
        while slot.inflight:
            ref, exp = slot.inflight[0]
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                return
            try:
                reply = ray.get(ref)
            except ray.exceptions.RayError as e:
                yield from self._lost(slot, e, remaining, attempts, chunks)
                return
            slot.inflight.popleft()
            slot.head_since = time.monotonic()
            value = common.unwrap(reply)  # an error that is not an outcome stops the run here
            if exp is None:  # a prepare call: the site's execution path
                site = slot.preparing.pop(ref, None)
                if site is not None:
                    slot.paths[site] = value
                continue
            if exp.id in remaining:  # never twice
                remaining.discard(exp.id)
                yield value

    def _lost(self, slot: _Slot, err: Exception, remaining: set[int], attempts: common.Attempts,
              chunks: deque[deque[Experiment]]) -> Iterator[dict[str, Any]]:
        culprit = next((e for _, e in slot.inflight if e is not None), None)
        if culprit is not None:
            n = attempts.charge(culprit)
            if not attempts.retry(n):
                slot.inflight = deque(x for x in slot.inflight if x[1] is not culprit)
                remaining.discard(culprit.id)
                yield crash_row(culprit, attempts.reason(n, common.error_text(err)), slot.wid,
                                path=slot.paths.get(culprit.site))
        self._requeue(slot, chunks)
        self._replace(slot)

    @staticmethod
    def _requeue(slot: _Slot, chunks: deque[deque[Experiment]]) -> None:
        back = deque(e for _, e in slot.inflight if e is not None)
        back.extend(slot.queue)
        slot.inflight.clear()
        slot.queue = deque()
        slot.hinted.clear()  # a new actor has computed nothing ahead
        if back:
            chunks.appendleft(back)


def check_reachable(addr: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    hostport = addr.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "local", "auto": Ray resolves them itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise OnnxfiError(f"cannot reach a Ray cluster at {addr} ({e.strerror or e}); start one with "
                          f"`ray start --head` or check --address") from None
