"""The runner interface: one object per (site, path) that runs a site's experiments and holds the golden
outputs to classify them against; and which exceptions are runtime failures (a ``crash`` outcome)."""

from __future__ import annotations

import inspect
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from onnxfi.engine.context import Context
from onnxfi.errors import SessionError
from onnxfi.faults import BitFlip, Fault
from onnxfi.plan import Experiment
from onnxfi.sites import Site

__all__ = ["Runner", "Result", "BIT_PROBE", "ORT_ERRORS", "is_runtime_failure"]

Outputs = dict[str, np.ndarray]

# the fault used to ask which opset an activation site's bit-level fault node needs
BIT_PROBE: Fault = BitFlip((0,))


# ONNX Runtime's own exception types (Fail, InvalidArgument, RuntimeException, NotImplemented, ...)
ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    t for t in vars(_ort_state).values() if inspect.isclass(t) and issubclass(t, Exception)
)
_ORT_DIR = Path(onnxruntime.__file__).resolve().parent


def is_runtime_failure(e: BaseException) -> bool:
    """Whether ``e``, raised while building or running a session for an experiment, is a runtime failure
    of the faulty model (stored as ``crash``) rather than an error in onnxfi or in the user's input:

    - one of ONNX Runtime's exception types (:data:`ORT_ERRORS`), or :class:`onnxfi.errors.SessionError`
      (onnxfi's one-line wrapping of them);
    - a ``RuntimeError`` raised inside ONNX Runtime (its innermost Python frame is in the onnxruntime
      package: the C++ layer raises plain ``RuntimeError`` for some failures, e.g. an output type it cannot
      return);
    - ``MemoryError``: the faulty model's run needs more memory than there is (what an OOM kill of the
      worker, also a ``crash``, would record).

    Anything else (``ValueError``, ``TypeError``, ``AssertionError``, ... from onnxfi's own code, or from
    onnxruntime's Python layer rejecting how onnxfi called it) is not an outcome."""
    if isinstance(e, (*ORT_ERRORS, SessionError, MemoryError)):
        return True
    if isinstance(e, RuntimeError) and e.__traceback__ is not None:
        frames = traceback.extract_tb(e.__traceback__)
        return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(_ORT_DIR)
    return False


@dataclass
class Result:
    """One experiment's outputs, the golden outputs to classify them against, and how it ran: the
    runner's path, with ``+shortcut`` when an exact shortcut decided it without running the rest of the
    model, or ``+baked`` when a fed weight run was re-run with the weight baked in."""

    outputs: Outputs
    golden: Outputs
    path: str
    extra: dict[str, float] = field(default_factory=dict)  # figures of the experiment, kept in its metrics


class Runner:
    """Runs one site's experiments on one execution path.

    ``path`` names the path (stored with every row), ``reason`` says why it was chosen over the faster
    ones (empty when it is the first choice), ``golden`` holds the fault-free outputs of the same
    computation, ``golden_time`` how long computing them took, ``cache_bytes`` what it keeps (beyond what the context shares),
    and ``sessions`` how many ONNX Runtime sessions it keeps open."""

    path = "runner"

    def __init__(self, ctx: Context, site: Site, reason: str = "") -> None:
        self.ctx, self.site, self.reason = ctx, site, reason
        self.golden: Outputs = {}
        self.golden_time = 0.0
        self.cache_bytes = 0
        self.sessions = 1  # ONNX Runtime sessions it keeps open

    def result(self, exp: Experiment) -> Result:
        raise NotImplementedError

    def run(self, exp: Experiment) -> Outputs:
        """The experiment's outputs (classify them with :meth:`result`, whose golden may differ)."""
        return self.result(exp).outputs

    def describe(self) -> dict[str, Any]:
        """The path, why it was chosen, and what the path is made of (for reports and tests)."""
        return {"site": self.site.name, "path": self.path, "reason": self.reason}
