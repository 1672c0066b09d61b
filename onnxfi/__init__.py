"""onnxfi: fault injection and hardening for any ONNX model.

The Python API (docs/python-api.md): :func:`analyze` (a fault campaign), :func:`sites`, :func:`inject`,
:func:`harden`, :func:`gate` and :func:`compare`, from :mod:`onnxfi.api`. Every exported name loads on first
use, so ``import onnxfi`` stays light (the engine, ONNX and ONNX Runtime load with the first call).

``onnxfi.inject``, ``onnxfi.harden``, ``onnxfi.gate``, ``onnxfi.compare`` and ``onnxfi.sites`` are the API
functions, although library modules of the same names exist: importing such a module (``from onnxfi.harden
import HardenOptions``) leaves the package attribute the function.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from onnxfi.errors import OnnxfiError

__version__ = "0.1.0"

# exported name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("analyze", "sites", "inject", "harden", "gate", "compare", "CampaignReport",
                     "InjectionResult", "HardeningReport", "ModelLike", "DataLike"), "onnxfi.api"),
    **dict.fromkeys(("BitFlip", "BurstFlip", "Fault", "RandomValue", "SetValue", "StuckAt", "Zero", "parse_fault"),
                    "onnxfi.faults"),
    **dict.fromkeys(("LoadedModel", "load_model", "save_model"), "onnxfi.model"),
    **dict.fromkeys(("Site", "SiteIndex", "enumerate_sites"), "onnxfi.sites"),
    **dict.fromkeys(("Plan", "Experiment"), "onnxfi.plan"),
    "Rate": "onnxfi.stats",
    "GateConfig": "onnxfi.gate",
    "GateResult": "onnxfi.gate",
    "CompareResult": "onnxfi.compare",
}
# API functions named like a library module: the function stays the package attribute when the module loads
_SHADOWED = frozenset({"sites", "inject", "harden", "gate", "compare"})

__all__ = ["OnnxfiError", "__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:
    from onnxfi.api import CampaignReport as CampaignReport
    from onnxfi.api import DataLike as DataLike
    from onnxfi.api import HardeningReport as HardeningReport
    from onnxfi.api import InjectionResult as InjectionResult
    from onnxfi.api import ModelLike as ModelLike
    from onnxfi.api import analyze as analyze
    from onnxfi.api import compare as compare
    from onnxfi.api import gate as gate
    from onnxfi.api import harden as harden
    from onnxfi.api import inject as inject
    from onnxfi.api import sites as sites
    from onnxfi.compare import CompareResult as CompareResult
    from onnxfi.faults import BitFlip as BitFlip
    from onnxfi.faults import BurstFlip as BurstFlip
    from onnxfi.faults import Fault as Fault
    from onnxfi.faults import RandomValue as RandomValue
    from onnxfi.faults import SetValue as SetValue
    from onnxfi.faults import StuckAt as StuckAt
    from onnxfi.faults import Zero as Zero
    from onnxfi.faults import parse_fault as parse_fault
    from onnxfi.gate import GateConfig as GateConfig
    from onnxfi.gate import GateResult as GateResult
    from onnxfi.model import LoadedModel as LoadedModel
    from onnxfi.model import load_model as load_model
    from onnxfi.model import save_model as save_model
    from onnxfi.plan import Experiment as Experiment
    from onnxfi.plan import Plan as Plan
    from onnxfi.sites import Site as Site
    from onnxfi.sites import SiteIndex as SiteIndex
    from onnxfi.sites import enumerate_sites as enumerate_sites
    from onnxfi.stats import Rate as Rate


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxfi' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """The package module: importing a library module named like an API function keeps the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # the import system binds a loaded submodule on its package; sys.modules still holds it
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package



class _Deferred(types.ModuleType):
    """A module that stands in for another until its first attribute access (see :func:`_defer_import`)."""

    def __getattr__(self, attr: str) -> Any:
        real = self.__dict__.get("_deferred_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
            self.__dict__["_deferred_real"] = real
        return getattr(real, attr)


def _defer_import(name: str) -> None:
    """Make ``import name`` give a stand-in that loads the module on its first attribute access.

    For SymPy: onnx_ir imports it at the top (and its expression parser reads a few SymPy functions when
    it loads) but uses it only for symbolic dimension arithmetic, which onnxfi never does; loading SymPy
    costs about 0.3 s in every process onnxfi starts (measured on 2 cores). importlib's LazyLoader would
    load at the ``import`` statement itself, which reads ``__spec__``; the stand-in's is None, which the
    import system reads as "loaded". Nothing when the module is loaded already; any use of it loads it
    whole, as usual (a module that is not installed then raises ImportError there)."""
    if name not in sys.modules:
        sys.modules[name] = _Deferred(name)


if importlib.util.find_spec("sympy") is not None:
    _defer_import("sympy")
    _defer_import("onnx_ir._symbolic_shapes")
