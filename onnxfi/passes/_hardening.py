"""Shared pieces of the hardening passes: the pass template, change/skip records, marked nodes, guarded values.

A hardening pass declares its method name, the settings it takes and what calibration it needs
(:class:`Calibration`); :class:`HardeningPass` holds the template every pass follows (find the candidates,
plan each one or say why not, rewrite the planned ones), so a pass writes only what differs.
:class:`ActivationPass` adds what the activation passes (ranger, clipact, relumax) share.

Every node a hardening pass inserts carries ``metadata_props["onnxfi.hardening"] = <method>`` (saved with
the model), so later passes, and later runs, recognise hardening nodes and leave them alone.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import ml_dtypes
import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:  # a runtime import would be circular: onnxfi.profile imports onnxfi.passes
    from onnxfi.profile import ValueRange

__all__ = [
    "HARDENING_KEY",
    "ACTIVATION_OPS",
    "FLOAT_TYPES",
    "Calibration",
    "Settings",
    "Change",
    "Skip",
    "HardeningPass",
    "Activation",
    "ActivationPass",
    "NodeBuilder",
    "hardening_method",
    "is_activation",
    "node_label",
    "graph_opset",
    "float_max",
    "numpy_dtype",
    "const_scalar",
    "clip_opset_reason",
    "where_opset_reason",
]

HARDENING_KEY = "onnxfi.hardening"

# Element-wise activations (Ranger's "activation layers"); Clip covers ReLU6.
ACTIVATION_OPS = frozenset({
    "Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "Sigmoid", "HardSigmoid",
    "Tanh", "Softplus", "Softsign", "HardSwish", "Gelu", "Mish",
})

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16})

CandidateT = TypeVar("CandidateT")
PlanT = TypeVar("PlanT")
PassT = TypeVar("PassT", bound="HardeningPass[Any, Any]")
ActivationPassT = TypeVar("ActivationPassT", bound="ActivationPass[Any]")


class Calibration(enum.Enum):
    """What a hardening method needs before it can run."""

    NONE = "none"  # the graph (and its weights) alone
    RANGES = "ranges"  # activation ranges profiled on calibration data


class Settings(Protocol):
    """The per-method settings passes are built from (:class:`onnxfi.harden.HardenOptions` has them all)."""

    @property
    def percentile(self) -> float | None: ...

    @property
    def level(self) -> int: ...

    @property
    def search(self) -> bool: ...

    @property
    def guard_points(self) -> str | None: ...


@dataclass(frozen=True)
class Change:
    """One hardening applied: the node (or weight) it targets, the value guarded, and what was done."""

    node: str
    value: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "value": self.value, "detail": self.detail}


@dataclass(frozen=True)
class Skip:
    """A candidate the pass left alone, and why."""

    node: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "reason": self.reason}


class HardeningPass(ir.passes.InPlacePass, Generic[CandidateT, PlanT]):
    """The template of a hardening pass; after ``call`` the pass holds its ``changes`` and ``skips``.

    A pass declares ``method`` (its name), ``summary`` (one line for help texts), ``options`` (the names of
    the :class:`Settings` that apply to it) and ``calibration``, and provides ``candidates`` (what it looks
    at), ``label`` (how a candidate is named in the report), ``plan`` (what it would do to a candidate, or a
    reason text when it leaves the candidate alone) and ``rewrite`` (do one plan). Every candidate is planned
    before the first rewrite, so no rewrite changes what the others see.
    """

    method: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[str, ...]] = ()
    calibration: ClassVar[Calibration] = Calibration.NONE

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[Change] = []
        self.skips: list[Skip] = []
        # only the candidates whose label this matches (``harden --layers``); None: every candidate
        self.only: re.Pattern[str] | None = None

    @classmethod
    def from_settings(cls: type[PassT], settings: Settings) -> PassT:
        """The pass configured by the settings that apply to it (``options``)."""
        raise NotImplementedError

    def report_settings(self) -> dict[str, Any]:
        """The settings to show in a report, before the pass runs."""
        return {}

    def report_results(self) -> dict[str, Any]:
        """What the last ``call`` did, beyond its changes and skips, for a report."""
        return {}

    def profile_points(self, model: ir.Model) -> list[str]:
        """The values whose ranges the pass needs profiled (for ``Calibration.RANGES``)."""
        return []

    def profile_percentiles(self) -> tuple[float, ...]:
        """The percentiles it needs of each profiled value, besides the min and max."""
        return ()

    def calibrate(self, ranges: Mapping[str, ValueRange]) -> None:
        """Take the profiled ranges (for ``Calibration.RANGES``)."""

    def candidates(self, model: ir.Model) -> Sequence[CandidateT]:
        raise NotImplementedError

    def label(self, candidate: CandidateT) -> str:
        raise NotImplementedError

    def plan(self, candidate: CandidateT) -> PlanT | str:
        """What the pass would do to ``candidate``, or why it leaves it alone."""
        raise NotImplementedError

    def rewrite(self, builder: NodeBuilder, plan: PlanT) -> Change:
        raise NotImplementedError

    def check(self, candidate: CandidateT) -> str | None:
        """Why the pass leaves ``candidate`` alone, or None when it would rewrite it."""
        plan = self.plan(candidate)
        return plan if isinstance(plan, str) else None

    def reset(self) -> None:
        """Forget the records of the previous ``call``."""
        self.changes = []
        self.skips = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reset()
        plans: list[PlanT] = []
        for candidate in self.candidates(model):
            if self.only is not None and not self.only.search(self.label(candidate)):
                self.skips.append(Skip(self.label(candidate), f"not in --layers {self.only.pattern}"))
                continue
            plan = self.plan(candidate)
            if isinstance(plan, str):
                self.skips.append(Skip(self.label(candidate), plan))
            else:
                plans.append(plan)
        builder = NodeBuilder(model.graph, self.method)
        for plan in plans:
            self.changes.append(self.rewrite(builder, plan))
        return ir.passes.PassResult(model, bool(plans))


@dataclass(frozen=True)
class Activation:
    """An activation a pass can rewrite: its node and input, and the value the rewrite takes the place of.

    ``output`` is the activation's output, or the end of ``chain`` (the ops from the activation to it);
    ``cap`` is the activation's own upper bound (6 for ReLU6 written as Clip, else infinite).
    """

    node: ir.Node
    input: ir.Value
    output: ir.Value
    chain: tuple[str, ...] = ()
    cap: float = math.inf


class ActivationPass(HardeningPass[ir.Node, PlanT]):
    """A pass over the activations of the main graph, calibrated by profiled ranges.

    Provides the candidates (every activation node), the checks every such pass makes (not an activation,
    already part of a hardening, feeding one), and the range look-up. A subclass says which activations it
    takes (``match``) and what it does with the range (``bounds``); ``profiles`` says whether it reads the
    range of the activation's input or of its (chain's) output.
    """

    calibration = Calibration.RANGES
    profiles: ClassVar[str] = "output"  # or "input"

    def __init__(self, ranges: Mapping[str, ValueRange]) -> None:
        super().__init__()
        self.ranges = ranges

    @classmethod
    def from_settings(cls: type[ActivationPassT], settings: Settings) -> ActivationPassT:
        return cls({})  # the ranges come with calibrate()

    def calibrate(self, ranges: Mapping[str, ValueRange]) -> None:
        self.ranges = ranges

    def candidates(self, model: ir.Model) -> list[ir.Node]:
        return [n for n in model.graph if is_activation(n)]

    def label(self, candidate: ir.Node) -> str:
        return node_label(candidate)

    def profiled(self, activation: Activation) -> ir.Value:
        """The value whose range the pass reads."""
        return activation.input if self.profiles == "input" else activation.output

    def profile_points(self, model: ir.Model) -> list[str]:
        out = []
        for node in self.candidates(model):
            located = self.locate(node)
            if not isinstance(located, str) and self.profiled(located).name:
                out.append(self.profiled(located).name or "")
        return out

    def locate(self, node: ir.Node) -> Activation | str:
        """The activation at ``node`` as this pass would rewrite it, or why it would not."""
        if not is_activation(node):
            return f"{node.op_type} is not an activation"
        method = hardening_method(node)
        if method:
            return f"part of the {method} hardening"
        x = node.inputs[0] if node.inputs else None
        out = node.outputs[0] if node.outputs else None
        if x is None or out is None or node.graph is None:
            return f"{node.op_type} without input or output"
        located = self.match(node, x, out)
        if isinstance(located, str):
            return located
        for consumer, _ in located.output.uses():
            method = hardening_method(consumer)
            if method:
                return f"output {located.output.name!r} already feeds the {method} hardening"
        return located

    def match(self, node: ir.Node, x: ir.Value, out: ir.Value) -> Activation | str:
        """The activation if the pass takes ``node`` (an activation of the graph, no hardening's), else why not."""
        raise NotImplementedError

    def bounds(self, activation: Activation) -> PlanT | str:
        """The plan for ``activation`` from the profiled ranges, or why there is none."""
        raise NotImplementedError

    def plan(self, candidate: ir.Node) -> PlanT | str:
        located = self.locate(candidate)
        return located if isinstance(located, str) else self.bounds(located)

    def profiled_range(self, value: ir.Value, what: str = "") -> ValueRange | str:
        """The profiled range of ``value`` (``what`` it is, for the reasons), or why there is none to use."""
        name = value.name or ""
        shown = f"{what} {name!r}" if what else repr(name)
        rng = self.ranges.get(name)
        if rng is None:
            return f"no profiled range for {'the ' if what else ''}{shown}"
        if not rng.finite:
            return f"{shown} held no finite value on the calibration data"
        return rng


def hardening_method(node: ir.Node) -> str | None:
    """The hardening method that inserted ``node``, or None for a node of the original model."""
    return node.metadata_props.get(HARDENING_KEY)


def is_activation(node: ir.Node) -> bool:
    """Whether ``node`` is an element-wise activation of the default domain."""
    return node.op_type in ACTIVATION_OPS and node.domain in ("", "ai.onnx")


def node_label(node: ir.Node) -> str:
    """A name to show for ``node``: its name, else op type and first output."""
    if node.name:
        return node.name
    out = node.outputs[0].name if node.outputs and node.outputs[0] is not None else "?"
    return f"{node.op_type}({out})"


def graph_opset(graph: ir.Graph) -> int:
    return int(graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 0)))


def numpy_dtype(dtype: ir.DataType) -> np.dtype:
    if dtype == ir.DataType.BFLOAT16:
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dtype.numpy())


def float_max(dtype: ir.DataType) -> float:
    """The largest finite value of a float element type."""
    if dtype == ir.DataType.BFLOAT16:
        return float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    return float(np.finfo(numpy_dtype(dtype)).max)


def const_scalar(value: float, dtype: ir.DataType, direction: int = 0) -> np.ndarray:
    """``value`` as a 0-d array of ``dtype``; ``direction`` +1/-1 rounds up/down so bounds never shrink."""
    np_t = numpy_dtype(dtype)
    with np.errstate(over="ignore"):
        arr = np.array(value, dtype=np.float64).astype(np_t)
    if direction and np.isfinite(arr):
        wide = float(arr)
        if (direction > 0 and wide < value) or (direction < 0 and wide > value):
            arr = np.array(np.nextafter(arr, np.array(direction * np.inf, dtype=np_t)), dtype=np_t)
    return arr


class NodeBuilder:
    """Edits one graph for one hardening pass: new nodes and scalar initializers (unique names, every node
    marked), values taken over in place so that downstream names stay."""

    def __init__(self, graph: ir.Graph, method: str) -> None:
        self.graph = graph
        self.method = method
        self.prefix = "onnxfi_" + method.replace("-", "_")
        self._names: set[str] = set(graph.initializers)
        for v in graph.inputs:
            self._names.add(v.name or "")
        for node in graph:
            self._names.add(node.name or "")
            for o in node.outputs:
                if o is not None and o.name:
                    self._names.add(o.name)
        self._count = 0

    def unique(self, base: str) -> str:
        name = base
        while name in self._names:
            self._count += 1
            name = f"{base}_{self._count}"
        self._names.add(name)
        return name

    def const(self, tag: str, array: np.ndarray, dtype: ir.DataType) -> ir.Value:
        """A registered initializer holding ``array`` (as ``dtype``)."""
        name = self.unique(f"{self.prefix}_{tag}")
        tensor = ir.Tensor(np.array(array, order="C"), dtype=dtype, name=name)  # keeps 0-d
        value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(dtype), const_value=tensor)
        self.graph.register_initializer(value)
        return value

    def node(
        self,
        op: str,
        inputs: Sequence[ir.Value | None],
        dtype: ir.DataType,
        shape: ir.Shape | None,
        out: ir.Value | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> tuple[ir.Node, ir.Value]:
        """A new marked node with one output (``out`` or a fresh value of ``dtype``/``shape``)."""
        name = self.unique(f"{self.prefix}_{op}")
        if out is None:
            out = ir.Value(name=self.unique(f"{name}_out"), shape=shape, type=ir.TensorType(dtype))
        node = ir.node(op, list(inputs), attributes=attributes, outputs=[out], name=name,
                       metadata_props={HARDENING_KEY: self.method})
        return node, out

    @property
    def opset(self) -> int:
        return graph_opset(self.graph)

    def zero(self, dtype: ir.DataType) -> ir.Value:
        """A scalar 0 initializer of ``dtype``."""
        return self.const("zero", np.zeros((), dtype=numpy_dtype(dtype)), dtype)

    def mark(self, node: ir.Node) -> None:
        """Mark a node of the original model as part of this hardening (it stays, later passes leave it alone)."""
        node.metadata_props[HARDENING_KEY] = self.method

    def take_place_of(self, x: ir.Value) -> ir.Value:
        """A new value that takes ``x``'s name, consumers and graph-output slots; ``x`` is renamed.

        The caller then builds nodes from ``x`` to the returned value, so downstream names stay as they were.
        """
        name = x.name or self.unique(f"{self.prefix}_value")
        x.name = self.unique(f"{name}__pre_{self.prefix}")
        y = ir.Value(name=name, shape=x.shape, type=x.type)
        x.replace_all_uses_with(y, replace_graph_outputs=True)
        return y

    def insert_after(self, anchor: ir.Node | None, nodes: Iterable[ir.Node]) -> None:
        """Insert ``nodes`` right after ``anchor`` (or at the start of the graph when ``anchor`` is None)."""
        nodes = list(nodes)
        if anchor is not None:
            self.graph.insert_after(anchor, nodes)
        elif len(self.graph) > 0:
            self.graph.insert_before(next(iter(self.graph)), nodes)
        else:
            self.graph.extend(nodes)

    def clip(self, x: ir.Value, lo: float, hi: float, out: ir.Value | None = None) -> tuple[ir.Node, ir.Value]:
        """``Clip(x, lo, hi)``: bound inputs from opset 11, ``min``/``max`` attributes before."""
        dtype = x.dtype or ir.DataType.FLOAT
        if self.opset >= 11:
            lo_v = self.const("lo", const_scalar(lo, dtype, -1), dtype)
            hi_v = self.const("hi", const_scalar(hi, dtype, +1), dtype)
            return self.node("Clip", [x, lo_v, hi_v], dtype, x.shape, out)
        return self.node("Clip", [x], dtype, x.shape, out, attributes={"min": float(lo), "max": float(hi)})


def clip_opset_reason(dtype: ir.DataType, opset: int) -> str | None:
    """Why Clip cannot take ``dtype`` at ``opset``, or None when it can."""
    if dtype not in FLOAT_TYPES:
        return f"value is {dtype.name}, not a float type"
    if dtype == ir.DataType.BFLOAT16 and opset < 13:
        return f"Clip takes bfloat16 from opset 13; the model has opset {opset}"
    if dtype == ir.DataType.DOUBLE and opset < 11:
        return f"Clip bounds are float attributes before opset 11 (model opset {opset}); double not supported"
    return None


def where_opset_reason(dtype: ir.DataType, opset: int) -> str | None:
    """Why ``Where``/comparisons cannot take ``dtype`` at ``opset``, or None."""
    if dtype not in FLOAT_TYPES:
        return f"value is {dtype.name}, not a float type"
    if opset < 9:
        return f"Where needs opset 9; the model has opset {opset}"
    if dtype == ir.DataType.BFLOAT16 and opset < 16:
        return f"Where takes bfloat16 from opset 16; the model has opset {opset}"
    return None
