"""onnxfi: fault injection and hardening for any ONNX model."""

from __future__ import annotations

from onnxfi.errors import OnnxfiError
from onnxfi.faults import BitFlip, BurstFlip, Fault, RandomValue, SetValue, StuckAt, Zero, parse_fault
from onnxfi.model import LoadedModel, load_model, save_model
from onnxfi.sites import Site, SiteIndex, enumerate_sites

__version__ = "0.1.0"

__all__ = [
    "BitFlip",
    "BurstFlip",
    "Fault",
    "LoadedModel",
    "OnnxfiError",
    "RandomValue",
    "SetValue",
    "Site",
    "SiteIndex",
    "StuckAt",
    "Zero",
    "__version__",
    "enumerate_sites",
    "load_model",
    "parse_fault",
    "save_model",
]
