"""Campaigns: plan -> executor -> store -> summary; every finished experiment is stored as soon as it is known.

Light to import (ONNX and numpy load when a campaign runs), so that a command can call
:func:`prestart_workers` before it loads them itself. With the local executor, the campaign's own process
never loads the engine or ONNX Runtime: only its workers run sessions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import re
import signal
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxfi import __version__
from onnxfi.errors import OnnxfiError

if TYPE_CHECKING:
    from onnxfi.engine import EngineConfig
    from onnxfi.plan import Plan
    from onnxfi.store import Store

__all__ = ["CampaignResult", "run_campaign", "matched_plan", "versions", "runtime_version", "prestart_workers",
           "server_import_path", "auto_workers", "usable_cores"]

# what the server of local workers imports (onnxfi.executors.local.SERVER_PRELOAD: the module a worker
# runs and the engine); importing that module here would load what the server is there to load in parallel
_SERVER_PRELOAD = ["onnxfi.executors.local", "onnxfi.engine.engine"]


def prestart_workers(executor: str = "local") -> None:
    """Start, now, the server process that the local executor forks its workers from (Linux; see
    :mod:`onnxfi.executors.local`), so that its imports (ONNX, ONNX Runtime, the engine: about a second)
    run while the caller loads the model and plans, not after. Nothing for another executor or platform,
    or when the server runs already; a campaign starts the server itself when it was not started early."""
    if executor != "local" or not sys.platform.startswith("linux"):
        return
    import multiprocessing as mp
    from multiprocessing import forkserver

    if "forkserver" not in mp.get_all_start_methods():
        return
    mp.get_context("forkserver").set_forkserver_preload(_SERVER_PRELOAD)  # as the executor sets it
    try:  # the server inherits SIGINT ignored: a Ctrl-C while it imports is the caller's alone
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: the executor starts the server when it needs it
        return
    try:
        with server_import_path():
            forkserver.ensure_running()
    except OSError:  # only a head start: the executor starts the server itself, and reports what fails
        pass
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def server_import_path() -> Iterator[None]:
    """While a worker server starts: this process's import path for it. Python 3.11's forkserver ignores
    the path multiprocessing hands it and puts its working folder first (it runs ``python -c``), so run
    from inside another checkout, the workers would import that checkout's onnxfi, not this one. So the
    server starts with ``PYTHONPATH`` = this process's ``sys.path`` (the working folder spelled out where
    it is on it) and ``PYTHONSAFEPATH=1`` (Python 3.11+: nothing in front of it). Restored after: the
    workers take the environment the campaign sends them."""
    keys = ("PYTHONPATH", "PYTHONSAFEPATH")
    old = {k: os.environ.get(k) for k in keys}
    os.environ["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) if p else os.getcwd() for p in sys.path)
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _available_memory() -> int | None:
    """Bytes of memory available for new processes (Linux ``MemAvailable``), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# at most this many workers by default (each loads the model and the data, and builds its own sessions)
MAX_AUTO_WORKERS = 8


def auto_workers(cfg: EngineConfig, executor: str = "local", workers: int | None = None) -> tuple[int, int | None]:
    """Worker processes and ONNX Runtime intra-op threads per worker for a campaign: ``(workers, threads)``.

    ``workers`` None (the default of every command): on the local executor with the CPU provider, one
    worker per usable core with one thread each (``cfg.threads`` given: cores // threads workers), fewer
    where half the available memory does not hold each worker's model (counted five times: the loaded
    model, its sessions, the cone sessions, and ORT's optimized model that the ``opt-cut`` path reads, once
    as a graph and once serialized) and cache (``cfg.cache_mb``); one worker for a GPU provider (one
    device) and for Ray (its actors are its own resources). Measured on 2 cores (bench/RESULTS.md): a
    campaign's per-fault work is mostly single-threaded (session builds, Python), so two one-thread workers
    ran a 400-fault campaign on a PaddleOCR classifier in 6.4 s against 9.0 s for one two-thread worker,
    and the same time on compute-bound ResNet-18. Explicit ``workers`` keep their count; without
    ``cfg.threads`` the cores are then shared between them rather than oversubscribed.

    Rows do not depend on the count (a site's path is chosen from the plan, never from timing)."""
    cores = usable_cores()
    if workers is not None:
        return workers, cfg.threads if cfg.threads or workers == 1 else max(1, cores // workers)
    if executor != "local" or (cfg.provider or "cpu").lower() not in ("cpu", "cpuexecutionprovider"):
        return 1, cfg.threads
    n = max(1, cores // cfg.threads) if cfg.threads else cores
    n = min(n, MAX_AUTO_WORKERS)
    avail = _available_memory()
    try:
        model_bytes = os.path.getsize(cfg.model_path)
    except OSError:
        model_bytes = 0
    need = 5 * model_bytes + int(cfg.cache_mb * 2**20)
    if avail is None:
        n = 1
    elif need > 0:
        n = max(1, min(n, (avail // 2) // need))
    return n, cfg.threads if cfg.threads else max(1, cores // n)


def versions() -> dict[str, str]:
    """The versions a campaign stores with its plan; ONNX Runtime's read without loading it
    (:func:`runtime_version`)."""
    import numpy as np
    import onnx

    return {
        "onnxfi": __version__, "onnx": onnx.__version__, "onnxruntime": runtime_version(),
        "numpy": np.__version__, "python": platform.python_version(), "machine": platform.machine(),
    }


def runtime_version() -> str:
    """``onnxruntime.__version__`` without importing ONNX Runtime where it is not loaded yet: a campaign's
    own process plans and stores, its workers run the sessions, and the import would cost it 0.04 s (on an
    idle machine; more on a busy one) for this one string. The package takes its version from its build-info module
    (``onnxruntime/capi/build_and_package_info.py``: ``package_name = ...``, ``__version__ = ...``), read here
    as text; where that file is missing or names no version, the package is imported."""
    if "onnxruntime" not in sys.modules:
        spec = importlib.util.find_spec("onnxruntime")
        if spec is not None and spec.origin:
            info = Path(spec.origin).parent / "capi" / "build_and_package_info.py"
            try:
                found = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", info.read_text(encoding="utf-8"),
                                  re.MULTILINE)
            except (OSError, UnicodeDecodeError):
                found = None
            if found:
                return found.group(1)
    import onnxruntime

    return str(onnxruntime.__version__)


@dataclass
class CampaignResult:
    plan: Plan
    clean: dict[str, Any]
    summary: dict[str, Any]
    interrupted: bool = False
    early_stopped: bool = False
    executed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def planned_faults(plan: Plan) -> dict[str, int]:
    """Persistent faults per site of a plan whose experiments are all known up front (the chooser's cost
    model, :attr:`onnxfi.engine.EngineConfig.site_faults`); empty for an adaptive plan, which grows where
    the rates vary (its first rounds say little about how many faults a site will get, and a site's path
    must not change as it grows): the cost model then compares the paths' cost per fault alone."""
    if plan.design == "adaptive":
        return {}
    counts: dict[str, int] = defaultdict(int)
    for e in plan.experiments:
        if e.image is None:
            counts[e.site] += 1
    return dict(counts)


def _site_flags(plan: Plan) -> Callable[[str], tuple[bool, bool]]:
    from onnxfi.faults import BitFault

    flags: dict[str, list[bool]] = defaultdict(lambda: [False, False])
    for e in plan.experiments:
        f = flags[e.site]
        if e.fault.get("kind") == "ber" or isinstance(e.fault_obj(), BitFault):
            f[0] = True
        else:
            f[1] = True
    return lambda site: (flags[site][0], flags[site][1])


def matched_plan(plan: Plan, other_path: str, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Plan:
    """``plan`` for another model (e.g. a hardened copy): the same experiments, matched by site name.

    Every site of the plan must exist in the other model with the same kind, element type and number of
    elements, otherwise the comparison would not be like for like.
    """
    from onnxfi.model import load_model
    from onnxfi.plan import Plan, file_sha256
    from onnxfi.sites import enumerate_sites

    loaded = load_model(other_path, input_shapes or {}, check=False)
    index = {s.name: s for s in enumerate_sites(loaded.model, loaded.value_shapes)}
    mine = load_model(plan.model, input_shapes or {}, check=False)
    my_index = {s.name: s for s in enumerate_sites(mine.model, mine.value_shapes)}
    bad = []
    names = {e.site for e in plan.experiments if e.fault.get("kind") != "ber"}
    names.update(n for e in plan.experiments if e.fault.get("kind") == "ber" for n in e.fault.get("sites", []))
    for name in sorted(names):
        a, b = my_index.get(name), index.get(name)
        if b is None:
            bad.append(f"{name} (missing)")
        elif a is not None and (a.kind, a.dtype, a.elements) != (b.kind, b.dtype, b.elements):
            bad.append(f"{name} ({a.kind} {a.dtype.name} x{a.elements} vs {b.kind} {b.dtype.name} x{b.elements})")
    if bad:
        raise OnnxfiError(f"{other_path}: {len(bad)} fault sites do not match: " + ", ".join(bad[:5])
                          + (" ..." if len(bad) > 5 else ""))
    d = plan.to_dict()
    d["model"] = other_path
    d["model_sha256"] = file_sha256(other_path)
    return Plan.from_dict(d)


def _half_width(r: dict[str, Any]) -> float:
    lo, hi = float(r["lo"]), float(r["hi"])
    return (hi - lo) / 2.0


def run_campaign(
    plan: Plan,
    cfg: EngineConfig,
    store: Store,
    workers: int | None = None,
    resume: bool = False,
    early_stop: bool = False,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    timeout_factor: float = 10.0,
    min_timeout_s: float = 30.0,
    executor: str = "local",
    address: str | None = None,
    max_attempts: int | None = None,
) -> CampaignResult:
    """Run (or finish) ``plan``; every finished experiment is stored as soon as it is known.

    ``workers`` None: as many as :func:`auto_workers` says (one per core on the CPU); the count used is
    ``result.extra["workers"]`` (with ``["threads"]``, ONNX Runtime threads per worker, None: its default).

    Experiments run round by round (each round a sample of the whole fault space in the design's
    proportions), so whatever stops the campaign, the complete rounds are a sample of the model.
    With ``early_stop`` the campaign stops after the first round at whose end the headline SDC-1
    interval is within the plan's margin. An ``adaptive`` plan grows a round at a time
    (:func:`onnxfi.plan.extend_plan`) until its margin is reached; the grown plan is stored as it grows.

    ``progress(done, planned, live)`` gets ``live["sdc1"]``, the raw SDC-1 count so far, and
    ``live["headline"]``, the headline SDC-1 estimate as of the last complete round (None before one).

    The store's writer lock (:meth:`onnxfi.store.Store.lock_for_writing`) is held from before the first
    write to the end, unless the caller holds it already: a second campaign on the same database is refused.
    """
    with store.lock_for_writing():
        return _run_campaign(plan, cfg, store, workers, resume, early_stop, progress, timeout_factor,
                             min_timeout_s, executor, address, max_attempts)


def _run_campaign(
    plan: Plan, cfg: EngineConfig, store: Store, workers: int | None, resume: bool, early_stop: bool,
    progress: Callable[[int, int, dict[str, Any]], None] | None, timeout_factor: float, min_timeout_s: float,
    executor: str, address: str | None, max_attempts: int | None,
) -> CampaignResult:
    from onnxfi.executors import make_executor
    from onnxfi.plan import extend_plan
    from onnxfi.summary import aggregate, headline

    workers, threads = auto_workers(cfg, executor, workers)
    if resume:
        stored = store.plan()  # a stored value that is not a plan is the store's damage, named as such
        if stored is None:
            raise OnnxfiError(f"{store.path}: nothing to resume (no campaign in it)")
        plan = stored
    elif store.has_campaign() and store.count():
        raise OnnxfiError(f"{store.path} already holds a campaign; use --resume to continue it or another --db")
    else:
        # one transaction: a kill leaves all three or none
        store.set_metas({"plan": plan.to_dict(), "config": dict(cfg.__dict__), "versions": versions()})
    runner = make_executor(executor, replace(cfg, threads=threads, site_faults=planned_faults(plan)), workers=workers,
                           address=address, timeout_factor=timeout_factor, min_timeout_s=min_timeout_s,
                           max_attempts=max_attempts)
    result = CampaignResult(plan, {}, {}, extra={"workers": workers, "threads": threads})
    buffer: list[dict[str, Any]] = []
    live: dict[str, Any] = {"sdc1": 0, "headline": None}

    def flush() -> None:
        if buffer:
            store.add(buffer)
            buffer.clear()

    def margin_met() -> bool:
        """At a round's end: the headline SDC-1 estimate (complete rounds only) and whether it is within margin."""
        flush()
        if plan.fault_model == "ber":  # no single rate: the summary is per bit error rate
            return False
        h = headline(plan, store.rows())
        live["headline"] = h
        return plan.margin is not None and h["n"] > 0 and _half_width(h) <= plan.margin

    try:
        clean = runner.start()
        result.clean = clean
        store.set_meta("clean", clean)
        while True:
            done = store.done_ids()
            todo = [e for e in plan.experiments if e.id not in done]
            live["sdc1"] = sum(1 for r in store.rows() if r["sdc1"]) if done else 0
            finished = len(done)
            per_round: dict[int, int] = defaultdict(int)
            rounds_done: dict[int, int] = defaultdict(int)
            round_of = {e.id: e.round for e in plan.experiments}
            for e in plan.experiments:
                per_round[e.round] += 1
                if e.id in done:
                    rounds_done[e.round] += 1
            for row in runner.run(todo, _site_flags(plan)):
                buffer.append(row)
                finished += 1
                result.executed += 1
                live["sdc1"] += bool(row["sdc1"])
                if len(buffer) >= 16:
                    flush()
                r = round_of.get(row["id"], 0)
                rounds_done[r] += 1
                if rounds_done[r] == per_round[r]:  # a round just completed
                    if margin_met() and early_stop:
                        result.early_stopped = True
                if progress:
                    progress(finished, len(plan.experiments), live)
                if result.early_stopped:
                    break
            flush()
            if result.early_stopped or plan.design != "adaptive":
                break
            grown = extend_plan(plan, store.rows())
            if grown is None:
                break
            plan = result.plan = grown
            store.set_meta("plan", plan.to_dict())
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        flush()
        runner.close()
    if not result.clean:
        result.clean = store.meta("clean", {})
    result.summary = aggregate(plan, store.rows())
    store.set_meta("summary_experiments", result.summary["experiments"])
    return result
