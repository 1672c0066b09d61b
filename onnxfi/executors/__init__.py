"""Where experiments run: worker processes on this machine (crash-isolated)."""

from __future__ import annotations

from onnxfi.executors.local import LocalExecutor

__all__ = ["LocalExecutor"]
