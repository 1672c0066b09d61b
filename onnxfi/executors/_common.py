"""What every executor shares: plan experiments -> site chunks, a worker's golden time -> its time limit,
a dead worker -> retry or ``crash`` (the one retry rule), and an experiment -> its row in a worker.

The retry rule: a worker that dies charges the experiment it was on (a local worker's current one, read
or not; a Ray actor's oldest unfinished call). A charged experiment goes back to the queue and runs again
on a fresh worker until it has been charged ``MAX_ATTEMPTS`` deaths; then it is stored as ``crash``. A
fault that kills ONNX Runtime kills every worker it runs on, so it ends as one crash row; a worker lost for
another reason (a node lost, an OOM kill of a neighbour's doing) costs its experiment nothing but a rerun.
Experiments a dead worker only held (queued behind the one it was on) go back uncharged. A timeout is a
``crash`` at once: a hang repeats, and waiting for it twice doubles the cost.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from onnxfi.errors import first_line
from onnxfi.outcomes import crash_row, experiment_row
from onnxfi.plan import Experiment

if TYPE_CHECKING:
    from onnxfi.engine import Engine

__all__ = ["MAX_ATTEMPTS", "Attempts", "chunk_by_site", "time_limit", "timeout_reason", "error_text", "run_one"]

# runs of an experiment whose worker died under it, the last one included
MAX_ATTEMPTS = 2


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


def run_one(engine: Engine, exp: Experiment, needs_bits: bool, needs_values: bool, worker: int) -> dict[str, Any]:
    """One experiment in a worker: its row, or a ``crash`` row when the engine raises (an ORT error for this
    fault, or a custom metric's), after which the worker goes on."""
    try:
        t0 = time.perf_counter()
        result = engine.run(exp, needs_bits, needs_values)
        return experiment_row(exp, result, time_s=time.perf_counter() - t0, worker=worker)
    except Exception as e:  # an error of this fault: a crash outcome, the worker goes on
        return crash_row(exp, error_text(e), worker)
