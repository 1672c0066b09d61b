"""Where faults can strike: enumerate weight and activation sites of a model, and select among them.

A *weight* site is a numeric tensor the model stores (graph initializer, ``Constant`` node, either
one inside ``If``/``Loop``/``Scan`` subgraphs, possibly in external data). An *activation* site is a
numeric node output of the main graph. Tensors that only feed shapes, axes or indices are
*structure* and are left out unless asked for.

A weight site always addresses what the file stores, bit for bit. Where a uint8 tensor packs narrower
quantized values (``com.microsoft`` ``MatMulNBits``: its B and its zero points), the site is still its
bytes, and :class:`Packing` says which logical value each bit of a byte belongs to.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxfi.bits import FAULT_DTYPES, dtype_info
from onnxfi.errors import SiteError
from onnxfi.model import EXTERNAL_META

__all__ = [
    "Packing",
    "Site",
    "SiteIndex",
    "SiteKind",
    "STRUCTURAL_INPUTS",
    "enumerate_sites",
    "packed_weight_of",
    "parse_index",
]

SiteKind = Literal["weight", "activation"]

# (op_type, input slot) pairs whose tensor is a shape, axes list, index set or count, not a value.
STRUCTURAL_INPUTS: dict[str, frozenset[int]] = {
    op: frozenset(slots)
    for op, slots in {
        "Reshape": (1,), "Expand": (1,), "Tile": (1,), "Slice": (1, 2, 3, 4), "Unsqueeze": (1,),
        "Squeeze": (1,), "Pad": (1, 3), "Resize": (1, 2, 3), "Upsample": (1,), "ConstantOfShape": (0,),
        "Range": (0, 1, 2), "TopK": (1,), "Split": (1,), "ReduceSum": (1,), "ReduceMean": (1,),
        "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,),
        "ReduceLogSum": (1,), "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,), "OneHot": (1,),
        "Gather": (1,), "GatherElements": (1,), "GatherND": (1,), "ScatterND": (1,),
        "ScatterElements": (1,), "Scatter": (1,), "NonMaxSuppression": (2, 3, 4), "CumSum": (1,),
        "Trilu": (1,), "RoiAlign": (2,), "MaxUnpool": (2,), "DFT": (1, 2), "STFT": (1, 2),
        "CenterCropPad": (1,), "Col2Im": (1, 2), "Compress": (1,), "Loop": (0, 1), "If": (0,),
        "Dropout": (1, 2), "Where": (0,), "Shape": (0,), "Size": (0,), "EyeLike": (0,),
    }.items()
}


@dataclass(frozen=True)
class Packing:
    """How a uint8 tensor packs ``bits``-bit quantized values for ``MatMulNBits`` (com.microsoft).

    ``role`` is ``"weights"``: B, shape [N, k_blocks, block_size * bits / 8], row n holding column n of
    the [K, N] weight; or ``"zero points"``: N rows of ceil(k_blocks * bits / 8) bytes, one value per
    (n, block). Inside a byte the values go low bits first (bits=4: the low nibble holds the even k, or
    the even block), so bit b of byte j of row n holds bit b % bits of value j * (8 // bits) + b // bits.
    """

    op: str
    role: Literal["weights", "zero points"]
    bits: int
    n: int
    k: int
    block_size: int

    @property
    def per_byte(self) -> int:
        return 8 // self.bits

    @property
    def k_blocks(self) -> int:
        return -(-self.k // self.block_size)

    @property
    def row_bytes(self) -> int:
        if self.role == "weights":
            return self.k_blocks * self.block_size * self.bits // 8
        return -(-self.k_blocks * self.bits // 8)

    @property
    def size(self) -> int:
        """Bytes the packed tensor must have."""
        return self.n * self.row_bytes

    def locate(self, flat_index: int, bit: int) -> tuple[int, int, int] | None:
        """(n, k, bit of the quantized weight) for B, (n, block, bit of the zero point) for zero points,
        for bit ``bit`` (0..7) of byte ``flat_index``; None for a padding bit that holds no value."""
        if not 0 <= flat_index < self.size:
            raise SiteError(f"byte {flat_index} out of range ({self.size} bytes)")
        if not 0 <= bit < 8:
            raise SiteError(f"bit {bit} is outside a byte (bits 0..7)")
        n, byte = divmod(flat_index, self.row_bytes)
        slot = byte * self.per_byte + bit // self.bits
        if slot >= (self.k if self.role == "weights" else self.k_blocks):
            return None
        return n, slot, bit % self.bits

    def describe(self, flat_index: int, bit: int) -> str:
        """``"weight (n=0, k=11) bit 1 of its 4-bit value"``: the logical value behind one stored bit."""
        at = self.locate(flat_index, bit)
        if at is None:
            return "padding (no value)"
        n, slot, vbit = at
        what = f"weight (n={n}, k={slot})" if self.role == "weights" else f"zero point (n={n}, block={slot})"
        return f"{what} bit {vbit} of its {self.bits}-bit value"

    def note(self) -> str:
        """One line for listings: ``"packed 4-bit: 2 weights per byte (MatMulNBits B, N=4 K=32 block 16)"``."""
        what = "weights" if self.role == "weights" else "zero points"
        slot = "k" if self.role == "weights" else "block"
        return (f"packed {self.bits}-bit: {self.per_byte} {what} per byte, low bits = even {slot} "
                f"({self.op} {'B' if self.role == 'weights' else 'zero_points'}, "
                f"N={self.n} K={self.k} block {self.block_size})")

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "role": self.role, "bits": self.bits, "per_byte": self.per_byte, "n": self.n,
                "k": self.k, "block_size": self.block_size}


@dataclass(frozen=True)
class Site:
    """One place a fault can go. ``elements`` counts one image's elements for batched activations."""

    name: str
    kind: SiteKind
    dtype: ir.DataType
    shape: tuple[int | str | None, ...] | None
    storage: str
    ops: tuple[str, ...]
    nodes: tuple[str, ...]
    graph: str = ""
    structural: bool = False
    batched: bool = False
    external: bool = False
    tensor_name: str = ""
    packing: Packing | None = None  # uint8 storage of packed narrower values (MatMulNBits B, zero points)

    @property
    def element_shape(self) -> tuple[int | str | None, ...] | None:
        """Shape of what one fault index addresses: the per-image shape for batched activations."""
        if self.shape is None:
            return None
        return self.shape[1:] if self.batched else self.shape

    @property
    def concrete_shape(self) -> tuple[int, ...] | None:
        es = self.element_shape
        if es is None or not all(isinstance(d, int) for d in es):
            return None
        return tuple(int(d) for d in es)  # type: ignore[arg-type]

    @property
    def elements(self) -> int | None:
        cs = self.concrete_shape
        return None if cs is None else math.prod(cs)

    @property
    def bits(self) -> int:
        return dtype_info(self.dtype).bits

    @property
    def dtype_name(self) -> str:
        return dtype_info(self.dtype).name

    @property
    def fault_space(self) -> int | None:
        n = self.elements
        return None if n is None else n * self.bits

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        dims = ["?" if d is None else str(d) for d in self.shape]
        if self.batched and dims:
            dims[0] = "N"
        return "[" + ",".join(dims) + "]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "dtype": self.dtype_name,
            "shape": None if self.shape is None else list(self.shape),
            "batched": self.batched,
            "elements": self.elements,
            "bits": self.bits,
            "fault_space": self.fault_space,
            "storage": self.storage,
            "graph": self.graph or "main",
            "ops": list(self.ops),
            "nodes": list(self.nodes),
            "structural": self.structural,
            "external": self.external,
            "packed": None if self.packing is None else self.packing.to_dict(),
        }


def packed_weight_of(site: Site, flat_index: int, bit: int) -> tuple[int, int, int] | None:
    """Which logical value bit ``bit`` of byte ``flat_index`` of a packed site belongs to: (n, k, bit of the
    quantized weight) for MatMulNBits B, (n, block, bit) for its zero points; None for a padding bit."""
    if site.packing is None:
        raise SiteError(f"{site.name} is not a packed weight (only MatMulNBits B and zero points are)")
    return site.packing.locate(flat_index, bit)


def parse_index(text: str | int, shape: tuple[int, ...]) -> int:
    """A flat (C order) index from ``"7"`` or a multi-index ``"3,0,1,1"``; range-checked."""
    size = math.prod(shape)
    if isinstance(text, int):
        parts = [text]
    else:
        try:
            parts = [int(p) for p in str(text).replace(" ", "").split(",") if p != ""]
        except ValueError:
            raise SiteError(f"bad index {text!r}: use a flat index or a multi-index like 3,0,1,1") from None
    if not parts:
        raise SiteError("empty index")
    if len(parts) == 1:
        flat = parts[0]
        if not 0 <= flat < size:
            raise SiteError(f"index {flat} out of range: the site has {size} elements (0..{size - 1})")
        return flat
    if len(parts) != len(shape):
        raise SiteError(f"index {text!r} has {len(parts)} coordinates but the site has rank {len(shape)}")
    for axis, (i, n) in enumerate(zip(parts, shape)):
        if not 0 <= i < n:
            raise SiteError(f"index {text!r} out of range on axis {axis} (size {n})")
    return int(np.ravel_multi_index(tuple(parts), shape))


def _dims(shape: ir.Shape | None) -> tuple[int | str | None, ...] | None:
    if shape is None:
        return None
    out: list[int | str | None] = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        else:
            v = getattr(d, "value", None)
            out.append(v if isinstance(v, int) else (None if v is None else str(v)))
    return tuple(out)


def _is_external(t: object) -> bool:
    """Stored in an external data file: still lazy, or read in by ``load_model`` (which tags it)."""
    if isinstance(t, ir.ExternalTensor) or type(t).__name__ == "ExternalTensor":
        return True
    meta = getattr(t, "meta", None)
    return bool(meta is not None and meta.get(EXTERNAL_META))


def _structural_values(graphs: list[ir.Graph]) -> set[int]:
    """ids of values that only flow into shape/axes/index inputs (directly or through other nodes)."""
    structural: set[int] = set()

    def is_structural(v: ir.Value) -> bool:
        if v.is_graph_output():
            return False
        uses = list(v.uses())
        if not uses:
            return False
        for node, slot in uses:
            if slot in STRUCTURAL_INPUTS.get(node.op_type, ()):
                continue
            outs = [o for o in node.outputs if o is not None]
            if node.op_type in ("Shape", "Size"):
                continue
            if outs and all(id(o) in structural for o in outs):
                continue
            return False
        return True

    # Consumers before producers: walk each graph's nodes in reverse; two sweeps cover subgraph edges.
    for _ in range(2):
        changed = False
        for g in graphs:
            for node in reversed(list(g)):
                for v in node.outputs:
                    if v is not None and id(v) not in structural and is_structural(v):
                        structural.add(id(v))
                        changed = True
            for v in g.initializers.values():
                if id(v) not in structural and is_structural(v):
                    structural.add(id(v))
                    changed = True
        if not changed:
            break
    return structural


def _subgraphs(graph: ir.Graph, path: str) -> Iterator[tuple[ir.Graph, str]]:
    yield graph, path
    for node in graph:
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                sub = f"{path}/{node.name or node.op_type}.{attr.name}".lstrip("/")
                yield from _subgraphs(attr.value, sub)
            elif attr.type == ir.AttributeType.GRAPHS:
                for i, g in enumerate(attr.value):
                    sub = f"{path}/{node.name or node.op_type}.{attr.name}[{i}]".lstrip("/")
                    yield from _subgraphs(g, sub)


_CONST_ATTRS = {
    "value": None,
    "value_float": ir.DataType.FLOAT,
    "value_floats": ir.DataType.FLOAT,
    "value_int": ir.DataType.INT64,
    "value_ints": ir.DataType.INT64,
}


def _constant_tensor(node: ir.Node) -> tuple[str, ir.DataType, tuple[int, ...], object] | None:
    for key, dt in _CONST_ATTRS.items():
        attr = node.attributes.get(key)
        if attr is None:
            continue
        if key == "value":
            t = attr.value
            return key, t.dtype, tuple(int(d) for d in t.shape.numpy()), t
        arr = np.asarray(attr.value)
        return key, dt or ir.DataType.FLOAT, tuple(arr.shape), None
    return None


# com.microsoft MatMulNBits inputs that hold packed values, by input slot
_PACKED_SLOTS: dict[int, Literal["weights", "zero points"]] = {1: "weights", 3: "zero points"}


def _int_attr(node: ir.Node, name: str, default: int | None = None) -> int | None:
    attr = node.attributes.get(name)
    return default if attr is None or attr.type != ir.AttributeType.INT else int(attr.value)


def _packing(v: ir.Value, dtype: ir.DataType, size: int) -> Packing | None:
    """The packing of a uint8 tensor that only feeds MatMulNBits' B or zero points, when its attributes and
    size agree (the same for every use); None otherwise: then its bytes are only bytes."""
    if dtype != ir.DataType.UINT8:
        return None
    found: set[Packing] = set()
    for node, slot in v.uses():
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft" or slot not in _PACKED_SLOTS:
            return None
        k, n, bs = _int_attr(node, "K"), _int_attr(node, "N"), _int_attr(node, "block_size")
        bits = _int_attr(node, "bits", 4)
        if k is None or n is None or bs is None or bits not in (2, 4, 8) or k < 1 or n < 1 or bs < 1:
            return None
        found.add(Packing(node.op_type, _PACKED_SLOTS[slot], bits, n, k, bs))  # type: ignore[arg-type]
    if len(found) != 1:
        return None
    packing = found.pop()
    return packing if packing.size == size else None


@dataclass
class SiteIndex:
    """All sites of one loaded model, by name, with the objects that hold each weight."""

    sites: list[Site]
    _weights: dict[str, tuple[str, Any]] = field(default_factory=dict, repr=False)
    skipped: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Site]:
        return iter(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def get(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        close = self.suggest(name)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run `onnxfi inspect` to list sites"
        raise SiteError(f"unknown site {name!r}{hint}")

    def suggest(self, text: str, n: int = 3) -> list[str]:
        """Site names close to ``text`` (a mistyped name or pattern): names that contain it, then the
        closest spellings (difflib), best first."""
        names = [s.name for s in self.sites]
        low = text.lower()
        out = [m for m in names if low and low in m.lower()][:n]
        by_lower = {m.lower(): m for m in names}
        for m in difflib.get_close_matches(low, list(by_lower), n=n, cutoff=0.6):
            if by_lower[m] not in out:
                out.append(by_lower[m])
        return out[:n]

    def pattern_hint(self, pattern: str | None) -> str:
        """``""`` when the site pattern matches some site name; otherwise ``"; --sites 'X' matches no
        site name; did you mean ...?"`` to append to a "nothing selected" error."""
        if not pattern:
            return ""
        try:
            if any(re.search(pattern, s.name) for s in self.sites):
                return ""
        except re.error:
            return ""
        close = self.suggest(re.sub(r"\\(.)", r"\1", pattern).strip("^$"))  # a typed name, regex-escaped or not
        tail = f"did you mean {', '.join(close)}?" if close else "run `onnxfi inspect` to list sites"
        return f"; --sites '{pattern}' matches no site name; {tail}"

    def select(
        self,
        kind: str = "all",
        pattern: str | None = None,
        ops: Iterable[str] | None = None,
        include_structure: bool = False,
        layers: str | None = None,
    ) -> list[Site]:
        """Sites of ``kind`` (weights/activations/all) whose name matches ``pattern`` (regex search),
        used or produced by one of ``ops``, and by a node whose name matches ``layers`` (regex search)."""
        def compile_(what: str, text: str | None) -> re.Pattern[str] | None:
            try:
                return re.compile(text) if text else None
            except re.error as e:
                raise SiteError(f"bad {what} pattern {text!r}: {e}") from None

        rx, lx = compile_("site", pattern), compile_("layer", layers)
        op_set = {o.lower() for o in ops} if ops else None
        want = {"weights": "weight", "weight": "weight", "activations": "activation",
                "activation": "activation"}.get(kind)
        out = []
        for s in self.sites:
            if want and s.kind != want:
                continue
            if s.structural and not include_structure:
                continue
            if rx and not rx.search(s.name):
                continue
            if op_set and not op_set & {o.lower() for o in s.ops}:
                continue
            if lx and not any(lx.search(n) for n in s.nodes):
                continue
            out.append(s)
        return out

    def constant_node(self, site: Site) -> ir.Node | None:
        """The ``Constant`` node that holds a weight site, or None (an initializer, or not a weight)."""
        where, obj = self._weights.get(site.name, ("", None))
        return obj[0] if where == "constant" else None

    def weight_array(self, site: Site) -> np.ndarray:
        """The stored values of a weight site (a read-only view is fine; callers copy)."""
        where, obj = self._weights[site.name]
        if where == "initializer":
            return np.asarray(obj.const_value.numpy())
        key = obj[1]
        node: ir.Node = obj[0]
        attr = node.attributes[key]
        if key == "value":
            return np.asarray(attr.value.numpy())
        dt = np.float32 if key.startswith("value_float") else np.int64
        return np.asarray(attr.value, dtype=dt)

    def set_weight_array(self, site: Site, array: np.ndarray) -> None:
        """Replace a weight's stored values in the in-memory model (same name, dtype and shape)."""
        where, obj = self._weights[site.name]
        old = self.weight_array(site)
        if array.dtype != old.dtype or array.shape != old.shape:
            raise SiteError(f"replacement for {site.name} must keep dtype {old.dtype} and shape {old.shape}")
        if where == "initializer":
            value: ir.Value = obj
            value.const_value = ir.Tensor(np.require(array, requirements="C"), dtype=site.dtype, name=value.name)
            return
        node = obj[0]
        tensor = ir.Tensor(np.require(array, requirements="C"), dtype=site.dtype, name=site.tensor_name)
        for k in list(node.attributes):
            if k in _CONST_ATTRS:
                del node.attributes[k]
        node.attributes["value"] = ir.AttrTensor("value", tensor)
        self._weights[site.name] = ("constant", (node, "value"))


def _batch_dim(model: ir.Model) -> int | str | None:
    inits = set(model.graph.initializers)
    for v in model.graph.inputs:
        if v.name in inits or v.shape is None or len(v.shape) == 0:
            continue
        return _dims(v.shape)[0]  # type: ignore[index]
    return None


def enumerate_sites(
    model: ir.Model, value_shapes: Mapping[str, tuple[tuple[int | str | None, ...], bool]] | None = None
) -> SiteIndex:
    """Every weight and activation site of ``model`` (structure included, flagged).

    ``value_shapes`` (from :class:`onnxfi.model.LoadedModel`) tells batched activations apart; without
    it an activation is batched when its first dim is the first input's first dim.
    """
    graphs = list(_subgraphs(model.graph, ""))
    structural = _structural_values([g for g, _ in graphs])
    sites: list[Site] = []
    weights: dict[str, tuple[str, Any]] = {}
    skipped: list[str] = []
    seen: dict[str, int] = {}

    def unique(name: str, path: str) -> str:
        key = name if name not in seen else f"{path or 'main'}::{name}"
        seen[key] = seen.get(key, 0) + 1
        return key

    def consumers(v: ir.Value) -> tuple[tuple[str, ...], tuple[str, ...]]:
        uses = list(v.uses())
        ops = tuple(dict.fromkeys(n.op_type for n, _ in uses))
        nodes = tuple(dict.fromkeys(n.name or n.op_type for n, _ in uses))
        return ops, nodes

    for g, path in graphs:
        for name, v in g.initializers.items():
            t = v.const_value
            dt = v.dtype if v.dtype is not None else (t.dtype if t is not None else None)
            if t is None or dt not in FAULT_DTYPES:
                skipped.append(f"{name} ({dt.name if dt else 'unknown type'})")
                continue
            ops, nodes = consumers(v)
            sname = unique(name, path)
            wshape = tuple(int(d) for d in t.shape.numpy())
            sites.append(Site(
                sname, "weight", dt, wshape, "initializer", ops, nodes, path,
                id(v) in structural, False, _is_external(t), name, _packing(v, dt, math.prod(wshape)),
            ))
            weights[sname] = ("initializer", v)
        for node in g:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            ct = _constant_tensor(node)
            out = node.outputs[0]
            if ct is None:
                continue
            key, dt, cshape, tensor = ct
            if dt not in FAULT_DTYPES:
                skipped.append(f"{out.name} ({dt.name})")
                continue
            ops, nodes = consumers(out)
            sname = unique(out.name or node.name or "constant", path)
            sites.append(Site(
                sname, "weight", dt, cshape, "constant", ops, nodes, path, id(out) in structural,
                False, _is_external(tensor), out.name or "", _packing(out, dt, math.prod(cshape)),
            ))
            weights[sname] = ("constant", (node, key))

    batch = _batch_dim(model)
    for node in model.graph:
        if node.op_type == "Constant":
            continue
        for out in node.outputs:
            if out is None or not out.name or out.dtype not in FAULT_DTYPES:
                continue
            if dtype_info(out.dtype).per_byte > 1:  # int4/uint4: no ONNX bitwise op takes them, so no fault node
                continue
            shape: tuple[int | str | None, ...] | None
            if value_shapes and out.name in value_shapes:
                shape, batched = value_shapes[out.name]
            else:
                shape = _dims(out.shape)
                batched = bool(shape) and batch is not None and shape[0] == batch  # type: ignore[index]
            sname = unique(out.name, "")
            sites.append(Site(
                sname, "activation", out.dtype, shape, "node output", (node.op_type,),
                (node.name or node.op_type,), "", id(out) in structural, batched, False, out.name,
            ))
    return SiteIndex(sites, weights, skipped)
