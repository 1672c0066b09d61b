"""User-facing error types: the CLI prints their message on one line and exits 2."""

from __future__ import annotations

__all__ = [
    "OnnxfiError",
    "ModelLoadError",
    "SiteError",
    "FaultError",
    "DataError",
    "ProviderError",
    "SessionError",
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


def first_line(e: BaseException, limit: int | None = 300) -> str:
    """The first non-empty line of an exception's message (its type name when the message is empty),
    cut to ``limit`` characters: how every error is shown in one line."""
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if limit is None else text[:limit]
