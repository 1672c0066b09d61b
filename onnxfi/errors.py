"""Error types: user errors (:class:`OnnxfiError`: one line, exit 2) and internal errors
(:class:`InternalError`: a bug in onnxfi, shown with its traceback, exit 70).

A campaign stores ``crash`` only for runtime failures of the faulty model (ONNX Runtime raising while
building or running it, a dead worker, a hang). A user error or an internal error raised while running an
experiment is never an outcome: it stops the campaign (rows already stored stay, so ``--resume`` works).
"""

from __future__ import annotations

__all__ = [
    "OnnxfiError",
    "ModelLoadError",
    "SiteError",
    "FaultError",
    "DataError",
    "ProviderError",
    "SessionError",
    "MetricError",
    "InternalError",
    "first_line",
]


class OnnxfiError(Exception):
    """An error caused by the user's input (bad file, bad option): no traceback, exit code 2."""

    exit_code = 2


class ModelLoadError(OnnxfiError):
    """The model file cannot be read, is not ONNX, is invalid, or has unsafe external data."""


class SiteError(OnnxfiError):
    """Unknown fault site, index out of range, or a site that cannot take the fault."""


class FaultError(OnnxfiError):
    """A fault description that does not fit the target (bit outside the dtype, bad value)."""


class DataError(OnnxfiError):
    """An input data file that does not match the model's inputs or is unsafe to load."""


class ProviderError(OnnxfiError):
    """An execution provider that is unknown or not available in this install."""


class SessionError(OnnxfiError):
    """ONNX Runtime cannot load or run the model (IR version, operator or type it does not support)."""


class MetricError(OnnxfiError):
    """A custom ``--metric`` function raised: the user's code, so the campaign stops with one line naming
    the metric (its outcome would otherwise be counted as a fault's)."""


class InternalError(Exception):
    """A bug in onnxfi (a broken invariant, an unexpected exception in onnxfi's own code, in this process or
    in a worker). Deliberately not an :class:`OnnxfiError`: the CLI prints the traceback (``detail`` holds a
    worker's formatted traceback) and asks for a report; exit code 70 (``EX_SOFTWARE``)."""

    exit_code = 70

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        if not self.detail:
            return self.message
        return f"{self.message}\n--- traceback in the worker ---\n{self.detail.rstrip()}"


def first_line(e: BaseException, limit: int | None = 300) -> str:
    """The first non-empty line of an exception's message (its type name when the message is empty),
    cut to ``limit`` characters: how every error is shown in one line."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if limit is None else text[:limit]
