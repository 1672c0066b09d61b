"""Custom metrics for the executor tests: kill the worker the first time the planted experiment runs, or
every time. They run inside the workers (``--metric executor_helpers:NAME``); the first-time marker is a
file in the folder ``$ONNXFI_TEST_MARKERS`` names, which the workers inherit."""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path

import numpy as np

MARKERS_ENV = "ONNXFI_TEST_MARKERS"


def planted(faulty: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray]) -> bool:
    """The planted experiment of the known-answer model: only output y[0, 0] changed, to minus itself."""
    f, g = faulty["y"], golden["y"]
    return bool(f[0, 0] == -g[0, 0] and g[0, 0] != 0 and np.array_equal(f[:, 1:], g[:, 1:]))


def kill_once(faulty: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray],
              labels: np.ndarray | None) -> float:
    """SIGKILL the worker on the planted experiment's first run only (a worker lost by bad luck); else 0."""
    if planted(faulty, golden):
        marker = Path(os.environ[MARKERS_ENV]) / "killed"
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    return 0.0


def kill_always(faulty: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray],
                labels: np.ndarray | None) -> float:
    """SIGKILL the worker on every run of the planted experiment (a fault that kills the runtime); else 0."""
    if planted(faulty, golden):
        with (Path(os.environ[MARKERS_ENV]) / "deaths").open("a") as f:
            f.write("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return 0.0
