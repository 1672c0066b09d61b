"""Where experiments run: worker processes on this machine (crash-isolated), or Ray actors on a cluster."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from onnxfi.engine import EngineConfig
from onnxfi.errors import OnnxfiError
from onnxfi.executors.local import LocalExecutor
from onnxfi.plan import Experiment

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "make_executor"]

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """Runs experiments somewhere and yields one stored row per experiment.

    Every executor applies the same chunking, time limit and retry rule (:mod:`onnxfi.executors._common`),
    so an experiment's outcome does not depend on where it ran; what may differ between executors and
    runs is ``time_s``, ``worker``, the order of the rows, and which experiments crash when a timeout or a
    worker death is not the experiment's own doing (a loaded machine, a lost node).
    """

    def start(self) -> dict[str, Any]:
        """Start the workers; returns the clean (fault-free) summary."""
        ...

    def run(
        self, experiments: Sequence[Experiment], flags: Callable[[str], tuple[bool, bool]]
    ) -> Iterator[dict[str, Any]]:
        """Yield one row per experiment, each exactly once, in no fixed order."""
        ...

    def close(self) -> None: ...


def make_executor(
    name: str,
    cfg: EngineConfig,
    workers: int = 1,
    address: str | None = None,
    timeout_factor: float = 10.0,
    min_timeout_s: float = 30.0,
    max_attempts: int | None = None,
) -> Executor:
    """``local``: worker processes here; ``ray``: Ray actors (``address`` of a cluster, else a local one).

    Ray is imported only for ``ray`` (the optional extra ``onnxfi[ray]``). ``max_attempts``: how many
    worker deaths an experiment may be charged before it is stored as ``crash`` (default
    :data:`onnxfi.executors._common.MAX_ATTEMPTS`)."""
    retry = {} if max_attempts is None else {"max_attempts": max_attempts}
    if name == "local":
        if address:
            raise OnnxfiError("--address needs --executor ray")
        return LocalExecutor(cfg, workers=workers, timeout_factor=timeout_factor, min_timeout_s=min_timeout_s,
                             **retry)
    if name == "ray":
        if importlib.util.find_spec("ray") is None:
            raise OnnxfiError("--executor ray needs Ray: pip install 'onnxfi[ray]'")
        from onnxfi.executors.ray import RayExecutor

        return RayExecutor(cfg, workers=workers, address=address, timeout_factor=timeout_factor,
                           min_timeout_s=min_timeout_s, **retry)
    raise OnnxfiError(f"unknown executor {name!r} (available: {', '.join(EXECUTORS)})")
