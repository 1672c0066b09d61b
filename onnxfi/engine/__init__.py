"""Execute experiments: per site the fastest path that computes what a rebuilt model would (see
:mod:`onnxfi.engine.chooser`), a golden run on that same path, and each fault's outputs classified
against it (:func:`onnxfi.outcomes.classify`).

Modules: ``config`` (EngineConfig), ``context`` (model, data, shared fault-free runs), ``base`` (the
runner interface), ``naive``/``port``/``cone`` (one runner per path), ``rounding`` (pure rules for
rounding noise), ``chooser`` (path per site), ``engine`` (the runner cache and classification)."""

from __future__ import annotations

from onnxfi.engine.config import MODES, EngineConfig
from onnxfi.engine.engine import Engine

__all__ = ["Engine", "EngineConfig", "MODES"]
