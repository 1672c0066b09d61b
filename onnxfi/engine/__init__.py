"""Execute experiments: per site the fastest path that computes what a rebuilt model would (see
:mod:`onnxfi.engine.chooser`), a golden run on that same path, and each fault's outputs classified
against it (:func:`onnxfi.outcomes.classify`).

Modules: ``config`` (EngineConfig), ``context`` (model, data, shared fault-free runs), ``base`` (the
runner interface), ``naive``/``port``/``cone`` (one runner per path), ``rounding`` (pure rules for
rounding noise), ``chooser`` (path per site), ``engine`` (the runner cache and classification).

:class:`Engine` loads on first use (ONNX Runtime with it): a process that only configures and plans
(``onnxfi analyze``'s own, whose workers run the engine) imports ``EngineConfig`` without it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from onnxfi.engine.config import MODES, EngineConfig

if TYPE_CHECKING:
    from onnxfi.engine.engine import Engine as Engine

__all__ = ["Engine", "EngineConfig", "MODES"]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from onnxfi.engine.engine import Engine

        globals()["Engine"] = Engine
        return Engine
    raise AttributeError(f"module 'onnxfi.engine' has no attribute {name!r}")
