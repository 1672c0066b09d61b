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
