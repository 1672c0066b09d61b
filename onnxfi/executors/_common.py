"""What every executor shares: plan experiments -> site chunks, a worker's golden time -> its time limit,
a dead worker -> retry or ``crash`` (the one retry rule), and an experiment -> its row in a worker.

The retry rule: a worker that dies charges the experiment it was on (a local worker's current one, read
or not; a Ray actor's oldest unfinished call). A charged experiment goes back to the queue and runs again
on a fresh worker until it has been charged ``MAX_ATTEMPTS`` deaths; then it is stored as ``crash``. A
fault that kills ONNX Runtime kills every worker it runs on, so it ends as one crash row; a worker lost for
another reason (a node lost, an OOM kill of a neighbour's doing) costs its experiment nothing but a rerun.
Experiments a dead worker only held (queued behind the one it was on) go back uncharged. A timeout is a
``crash`` at once: a hang repeats, and waiting for it twice doubles the cost.

Errors are not outcomes: in a worker, an experiment is a ``crash`` row only when ONNX Runtime fails on the
faulty model (:func:`onnxfi.engine.base.is_runtime_failure`). Any other exception becomes a reply the
parent raises (:func:`unwrap`), which stops the campaign; rows already stored stay, so ``--resume``
continues it: a user error (:class:`onnxfi.errors.OnnxfiError`, e.g. a custom ``--metric`` that raises,
:class:`onnxfi.errors.MetricError`) as its one line, anything else (a bug in onnxfi) as
:class:`onnxfi.errors.InternalError` carrying the worker's traceback. A site runner that cannot be built
is never a crash either: the chooser already fell back to slower paths, so what is left is an error.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from onnxfi.errors import InternalError, OnnxfiError, first_line
from onnxfi.outcomes import crash_row, experiment_row
from onnxfi.plan import Experiment

if TYPE_CHECKING:
    from onnxfi.engine import Engine

__all__ = [
    "MAX_ATTEMPTS", "HINTS", "hints", "Attempts", "chunk_by_site", "time_limit", "timeout_reason", "error_text", "run_one",
    "build_runner", "startup_error", "unwrap", "Reply", "RESULT", "PATH", "USER_ERROR", "INTERNAL_ERROR",
]

# runs of an experiment whose worker died under it, the last one included
MAX_ATTEMPTS = 2
# transient experiments sent along with one (the worker packs them into shared runs)
HINTS = 255

# What a worker answers, as (kind, value): RESULT with a stored row, PATH with the execution path of a
# site runner it built, USER_ERROR with a one-line message, INTERNAL_ERROR with (summary, traceback).
Reply = tuple[str, Any]
RESULT, PATH, USER_ERROR, INTERNAL_ERROR = "result", "path", "user-error", "internal-error"


def chunk_by_site(experiments: Iterable[Experiment]) -> deque[deque[Experiment]]:
    """Consecutive experiments of one site and round, as one chunk: a worker takes a whole chunk, so it
    builds the site's sessions once; rounds stay apart, so an early stop sees every site's early rows."""
    chunks: deque[deque[Experiment]] = deque()
    for e in experiments:
        if chunks and chunks[-1][0].site == e.site and chunks[-1][0].round == e.round:
            chunks[-1].append(e)
        else:
            chunks.append(deque([e]))
    return chunks


def time_limit(golden_time_s: float, timeout_factor: float, min_timeout_s: float) -> float:
    """Seconds one experiment may run: ``timeout_factor`` times the fault-free run, at least ``min_timeout_s``."""
    return max(min_timeout_s, timeout_factor * golden_time_s)


def timeout_reason(limit_s: float, timeout_factor: float) -> str:
    return f"timeout: over {limit_s:.1f} s ({timeout_factor:g}x golden)"


class Attempts:
    """The retry rule (see the module docstring): which experiment a dead worker charged, and how often."""

    def __init__(self, max_attempts: int = MAX_ATTEMPTS) -> None:
        self.max_attempts = max(1, max_attempts)
        self._deaths: dict[int, int] = {}

    def charge(self, exp: Experiment) -> int:
        """Charge ``exp`` one worker death; returns how many it has been charged."""
        n = self._deaths[exp.id] = self._deaths.get(exp.id, 0) + 1
        return n

    def charged(self, exp: Experiment) -> bool:
        """Whether a worker died under ``exp`` before."""
        return exp.id in self._deaths

    def retry(self, n: int) -> bool:
        """Whether an experiment charged ``n`` deaths runs again (else it is stored as ``crash``)."""
        return n < self.max_attempts

    @staticmethod
    def reason(n: int, detail: str) -> str:
        """The crash row's error for an experiment whose workers died ``n`` times."""
        return f"worker died ({detail}; on {n} attempt{'s' if n != 1 else ''})"


def error_text(e: BaseException) -> str:
    """A crash row's error for an exception raised in a worker: its type and first line."""
    return f"{type(e).__name__}: {first_line(e)}"


def _describe(exp: Experiment) -> str:
    bit = f" bit {exp.bit}" if exp.bit is not None else ""
    return f"experiment {exp.id} ({exp.site}[{exp.index}]{bit}, {exp.fault_obj().spec()})"


def _error_reply(e: BaseException, where: str) -> Reply:
    """The reply for an exception that is not a runtime failure of the faulty model."""
    if isinstance(e, OnnxfiError):  # written for the user: whole (its end often says what to do)
        return (USER_ERROR, f"{where}: {first_line(e, limit=None)}")
    text = "".join(traceback.format_exception(e))
    return (INTERNAL_ERROR, (f"{where} (worker pid {os.getpid()}): {type(e).__name__}: {first_line(e)}", text))


def startup_error(e: BaseException) -> Reply:
    """The reply of a worker whose engine cannot start: the user's input (an OnnxfiError, or ONNX Runtime
    refusing the fault-free model or data) is a user error, anything else a bug."""
    from onnxfi.engine.base import is_runtime_failure  # a worker's: ONNX Runtime is loaded there

    if isinstance(e, OnnxfiError):  # the user's input, said whole as the parent would say it
        return (USER_ERROR, first_line(e, limit=None))
    if is_runtime_failure(e):
        return (USER_ERROR, f"ONNX Runtime cannot run the fault-free model on this data: {first_line(e)}")
    return _error_reply(e, "starting a worker")


def hints(queue: Iterable[Experiment], exp: Experiment, attempts: Attempts | None = None,
          hinted: set[int] | None = None) -> list[Experiment]:
    """The experiments after ``exp`` in a worker's ``queue`` that the worker may compute together with it
    (transient faults at the same site, at most :data:`HINTS`); none for an experiment whose worker died
    under it before (it then runs alone, so a second death is its own). ``hinted``: the ids this worker was
    already given as hints (kept up to date here); an experiment among them gets none (the worker computed
    it ahead), so a packed group is sent once, not once per experiment."""
    if hinted is not None and exp.id in hinted:
        hinted.discard(exp.id)
        return []
    if exp.image is None or (attempts is not None and attempts.charged(exp)):
        return []
    out: list[Experiment] = []
    for e in queue:
        if e.site != exp.site or e.image is None or len(out) >= HINTS:
            break
        out.append(e)
    if hinted is not None:
        hinted.update(e.id for e in out)
    return out


def build_runner(engine: Engine, site: str, needs_bits: bool, needs_values: bool, transient: bool = False) -> Reply:
    """Build (or find) a site's runner: ``(PATH, its path)``, else the error reply (never a crash: the
    runner holds only fault-free sessions, and the chooser has already fallen back where ORT refused one)."""
    try:
        return (PATH, engine.runner(site, needs_bits, needs_values, transient).path)
    except Exception as e:
        return _error_reply(e, f"building the runner of site {site}")


def run_one(engine: Engine, exp: Experiment, needs_bits: bool, needs_values: bool, worker: int,
            ahead: Sequence[Experiment] = ()) -> Reply:
    """One experiment in a worker: ``(RESULT, its row)``, a ``crash`` row (with the runner's path) when ONNX
    Runtime fails on the faulty model; any other exception is an error reply (see the module docstring)
    and the campaign stops. ``ahead``: experiments the worker gets next (:func:`hints`), computed now
    where they run together with ``exp`` (:meth:`Engine.prefetch`)."""
    from onnxfi.engine.base import is_runtime_failure  # a worker's: ONNX Runtime is loaded there

    built = build_runner(engine, exp.site, needs_bits, needs_values, exp.image is not None)
    if built[0] != PATH:
        return built
    try:
        t0 = time.perf_counter()
        if ahead:
            engine.prefetch([exp, *ahead], needs_bits, needs_values)
        result = engine.run(exp, needs_bits, needs_values)
        return (RESULT, experiment_row(exp, result, time_s=time.perf_counter() - t0, worker=worker))
    except Exception as e:
        if is_runtime_failure(e):  # ORT failed on this fault: a crash outcome, the worker goes on
            return (RESULT, crash_row(exp, error_text(e), worker, path=built[1]))
        return _error_reply(e, _describe(exp))


def unwrap(reply: Reply) -> Any:
    """A worker's reply in the parent: the value of a RESULT or PATH reply; raises OnnxfiError for a user
    error and InternalError (with the worker's traceback) for anything else."""
    kind, value = reply
    if kind in (RESULT, PATH):
        return value
    if kind == USER_ERROR:
        raise OnnxfiError(str(value))
    if kind == INTERNAL_ERROR:
        summary, detail = value
        raise InternalError(f"onnxfi failed in a worker: {summary}", detail=detail)
    raise InternalError(f"unknown reply from a worker: {kind!r}")
