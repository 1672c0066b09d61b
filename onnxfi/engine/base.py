"""The runner interface: one object per (site, path) that runs a site's experiments and holds the golden
outputs to classify them against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxfi.engine.context import Context
from onnxfi.faults import BitFlip, Fault
from onnxfi.plan import Experiment
from onnxfi.sites import Site

__all__ = ["Runner", "Result", "BIT_PROBE"]

Outputs = dict[str, np.ndarray]

# the fault used to ask which opset an activation site's bit-level fault node needs
BIT_PROBE: Fault = BitFlip((0,))


@dataclass
class Result:
    """One experiment's outputs, the golden outputs to classify them against, and how it ran: the
    runner's path, with ``+shortcut`` when an exact shortcut decided it without running the rest of the
    model, or ``+baked`` when a fed weight run was re-run with the weight baked in."""

    outputs: Outputs
    golden: Outputs
    path: str


class Runner:
    """Runs one site's experiments on one execution path.

    ``path`` names the path (stored with every row), ``reason`` says why it was chosen over the faster
    ones (empty when it is the first choice), ``golden`` holds the fault-free outputs of the same
    computation, ``golden_time`` how long computing them took, and ``cache_bytes`` what it keeps."""

    path = "runner"

    def __init__(self, ctx: Context, site: Site, reason: str = "") -> None:
        self.ctx, self.site, self.reason = ctx, site, reason
        self.golden: Outputs = {}
        self.golden_time = 0.0
        self.cache_bytes = 0

    def result(self, exp: Experiment) -> Result:
        raise NotImplementedError

    def run(self, exp: Experiment) -> Outputs:
        """The experiment's outputs (classify them with :meth:`result`, whose golden may differ)."""
        return self.result(exp).outputs

    def describe(self) -> dict[str, Any]:
        """The path, why it was chosen, and what the path is made of (for reports and tests)."""
        return {"site": self.site.name, "path": self.path, "reason": self.reason}
