"""Load, validate and save ``.onnx`` files: bytes on disk -> a checked in-memory model (onnx-ir).

Models are untrusted input: external-data locations must stay inside the model's folder, and every
failure becomes a one-line :class:`ModelLoadError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
import onnx_ir as ir

from onnxfi.errors import ModelLoadError, OnnxfiError

__all__ = [
    "MIN_OPSET",
    "MAX_OPSET",
    "LoadedModel",
    "InputSpec",
    "load_model",
    "inferred_shapes",
    "save_model",
    "parse_input_shape",
    "iter_tensor_protos",
    "EXTERNAL_META",
]

MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()


@dataclass(frozen=True)
class InputSpec:
    """A graph input: name, element type and shape (``str`` or ``None`` for dynamic dims)."""

    name: str
    dtype: ir.DataType
    shape: tuple[int | str | None, ...] | None

    @property
    def dtype_name(self) -> str:
        """The numpy name of the element type (``float32``), as data files and the zoo registry spell it."""
        try:
            return str(np.dtype(self.dtype.numpy()).name)
        except TypeError:  # a type numpy cannot hold (UNDEFINED): its ONNX name
            return self.dtype.name.lower()

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def dynamic_dims(self) -> list[int]:
        if self.shape is None:
            return []
        return [i for i, d in enumerate(self.shape) if not isinstance(d, int)]

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass
class LoadedModel:
    """A validated model: the onnx-ir model plus where it came from and what loading noticed."""

    model: ir.Model
    path: Path
    has_external_data: bool
    warnings: list[str] = field(default_factory=list)
    # value name -> (shape with "N" for the batch dim, batched?) from shape inference at two batch sizes
    value_shapes: dict[str, tuple[tuple[int | str | None, ...], bool]] = field(default_factory=dict)

    @property
    def graph(self) -> ir.Graph:
        return self.model.graph

    @property
    def opset(self) -> int:
        return int(self.model.opset_imports.get("", self.model.opset_imports.get("ai.onnx", 0)))

    @property
    def producer(self) -> str:
        name = self.model.producer_name or "?"
        return f"{name} {self.model.producer_version}".strip() if self.model.producer_version else name

    def inputs(self) -> list[InputSpec]:
        """Real inputs: graph inputs that are not also initializers (old exporters list both)."""
        specs = []
        for v in self.graph.inputs:
            if v.name in self.graph.initializers:
                continue
            shape = None if v.shape is None else tuple(_dim(d) for d in v.shape)
            specs.append(InputSpec(v.name or "", v.dtype or ir.DataType.UNDEFINED, shape))
        return specs

    def outputs(self) -> list[InputSpec]:
        out = []
        for v in self.graph.outputs:
            shape = None if v.shape is None else tuple(_dim(d) for d in v.shape)
            out.append(InputSpec(v.name or "", v.dtype or ir.DataType.UNDEFINED, shape))
        return out

    def to_proto(self) -> onnx.ModelProto:
        return ir.to_proto(self.model)


def _dim(d: object) -> int | str | None:
    if isinstance(d, int):
        return d
    value = getattr(d, "value", None)
    if isinstance(value, int):
        return value
    return None if value is None else str(value)


_SHAPE_RE = re.compile(r"^(?P<name>.+):(?P<open>\[?)(?P<dims>(?:\d+|\?|N)(?:[x,](?:\d+|\?|N))*)(?P<close>\]?)$")
DYNAMIC_DIM = -1  # a dim that --input-shape leaves dynamic (``?`` or ``N``): the model's own dim stays


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME:1x3x224x224`` (or ``NAME:1,3,224,224``, or Polygraphy's ``NAME:[1,3,224,224]``).

    ``?`` or ``N`` leaves a dim as the model has it (``x:Nx3x48x192``: any batch); it comes back as
    :data:`DYNAMIC_DIM` (-1), the value ONNX exporters write for a dynamic dim."""
    m = _SHAPE_RE.match(text.strip())
    if not m or bool(m.group("open")) != bool(m.group("close")):
        raise OnnxfiError(f"bad --input-shape {text!r}: use NAME:1x3x224x224 (? or N leaves a dim dynamic)")
    dims = tuple(DYNAMIC_DIM if d in ("?", "N") else int(d) for d in re.split(r"[x,]", m.group("dims")))
    if any(d == 0 for d in dims):
        raise OnnxfiError(f"bad --input-shape {text!r}: a dim of size 0 (use ? or N to leave it dynamic)")
    return m.group("name"), dims


def iter_tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto stored in a graph: initializers, Constant/attribute tensors, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            if attr.HasField("g"):
                yield from iter_tensor_protos(attr.g)
            for g in attr.graphs:
                yield from iter_tensor_protos(g)


def _all_tensor_protos(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from iter_tensor_protos(model.graph)
    for fn in model.functions:
        for node in fn.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                if attr.HasField("g"):
                    yield from iter_tensor_protos(attr.g)


def _check_external_data(model: onnx.ModelProto, base_dir: Path) -> bool:
    """Refuse external-data locations outside ``base_dir``; return whether any tensor is external."""
    base = base_dir.resolve()
    found = False
    for t in _all_tensor_protos(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if not location:
            raise ModelLoadError(f"tensor {t.name!r} is external but names no data file")
        if "\x00" in location:
            raise ModelLoadError(f"tensor {t.name!r} names an external data file with a NUL byte ({location!r})")
        if os.path.isabs(location) or Path(location).drive or ".." in Path(location).parts:
            raise ModelLoadError(
                f"tensor {t.name!r} points outside the model's folder ({location!r}); refused"
            )
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise ModelLoadError(
                f"tensor {t.name!r} points outside the model's folder ({location!r}); refused"
            )
        if not target.is_file():
            raise ModelLoadError(f"external data file {location!r} for tensor {t.name!r} is missing")
        size = target.stat().st_size
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info.get("length", "0") or 0)
        except ValueError:
            raise ModelLoadError(f"tensor {t.name!r}: external data offset/length are not integers "
                                 f"({info.get('offset')!r}, {info.get('length')!r})") from None
        if offset < 0 or length < 0:
            raise ModelLoadError(f"tensor {t.name!r}: negative external data offset/length ({offset}, {length})")
        if offset + length > size:
            raise ModelLoadError(
                f"external data for tensor {t.name!r} reads past the end of {location!r} (truncated?)"
            )
    return found


EXTERNAL_META = "onnxfi.external"


def _external_names(graph: onnx.GraphProto, out: set[str]) -> set[str]:
    """Names of initializers and Constant outputs (any graph) whose data lives in an external file."""
    for t in graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.add(t.name)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.HasField("t") and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                out.update(node.output)
            if attr.HasField("g"):
                _external_names(attr.g, out)
            for g in attr.graphs:
                _external_names(g, out)
    return out


def _mark_external(model: ir.Model, names: set[str]) -> None:
    """Tag (``meta[EXTERNAL_META]``) the tensors that were read from external data into memory."""
    for g in (model.graph, *model.graph.subgraphs()):
        for name, v in g.initializers.items():
            if name in names and v.const_value is not None:
                v.const_value.meta[EXTERNAL_META] = True
    for node in model.graph.all_nodes():
        attr = node.attributes.get("value")
        if node.op_type == "Constant" and attr is not None and node.outputs[0].name in names:
            attr.value.meta[EXTERNAL_META] = True


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("==>"):
            return line[:300]
    return type(e).__name__


def _not_onnx_reason(path: Path, e: BaseException) -> str:
    """Why a file did not parse as an ONNX ModelProto, in a few words (the parser's own text is long)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError:
        head = b""
    if not head:
        return "empty file"
    kind = "looks like JSON; " if head[:1] in (b"{", b"[") else ""
    return f"{kind}{type(e).__name__}: {_first_line(e)[:160]}"


def _dynamic_placeholders(proto: onnx.ModelProto) -> None:
    """Input and output dims written as -1 or 0 (PaddlePaddle and some TensorFlow exports) mean "any
    size": make them symbolic (``NAME_dI``) so shape overrides, batch detection and data see them as the
    dynamic dims they are."""
    for vi in [*proto.graph.input, *proto.graph.output]:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.ClearField("dim_value")
                d.dim_param = f"{vi.name}_d{i}"


def _apply_input_shapes(proto: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> None:
    init_names = {t.name for t in proto.graph.initializer}
    by_name = {i.name: i for i in proto.graph.input if i.name not in init_names}
    for name, dims in shapes.items():
        if name not in by_name:
            raise OnnxfiError(
                f"--input-shape names unknown input {name!r}; inputs are: {', '.join(by_name) or 'none'}"
            )
        tt = by_name[name].type.tensor_type
        if tt.HasField("shape") and len(tt.shape.dim) != len(dims):
            raise OnnxfiError(
                f"--input-shape {name}: gives {len(dims)} dims but the input has rank {len(tt.shape.dim)}"
            )
        if tt.HasField("shape"):
            for i, (d, want) in enumerate(zip(tt.shape.dim, dims)):
                if want < 0:  # ? or N (parse_input_shape's DYNAMIC_DIM): the model's dim stays as it is
                    continue
                if d.HasField("dim_value") and d.dim_value != want:
                    raise OnnxfiError(
                        f"--input-shape {name}: dim {i} is fixed to {d.dim_value} in the model, not {want}"
                    )
                d.dim_value = want  # dim_value and dim_param are one oneof: setting it drops the symbol
        else:
            for i, want in enumerate(dims):
                d = tt.shape.dim.add()
                if want > 0:
                    d.dim_value = want
                else:
                    d.dim_param = f"{name}_d{i}"


_PROBE_BATCHES = (7, 11)


def inferred_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int | str | None, ...]]:
    """The shape of every value ``proto`` declares (value_info, outputs, inputs): ints, names or None."""
    out: dict[str, tuple[int | str | None, ...]] = {}
    for vi in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        out[vi.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        )
    return out


def _known(vi: onnx.ValueInfoProto, dims: bool) -> bool:
    """A declared type and shape (``dims``: and every dim a number)."""
    tt = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not tt.elem_type or not tt.HasField("shape"):
        return False
    return not dims or all(d.HasField("dim_value") for d in tt.shape.dim)


def _with_runtime_shapes(proto: onnx.ModelProto, dims: bool = False) -> onnx.ModelProto:
    """``proto`` with the types and shapes ONNX Runtime's symbolic shape inference finds for the node outputs
    of the main graph that ONNX's own inference left unknown (typically outputs of ``com.microsoft`` ops such
    as ``MatMulNBits``, which it does not know; ``dims``: also values with a dim it could not tell, where the
    inputs are fixed, as in a probe); unchanged when there are none or the tool fails."""
    if all(n.domain in ("", "ai.onnx", "ai.onnx.ml") for n in proto.graph.node):
        # ONNX knows every op (what it leaves unknown, e.g. a ZipMap's sequence of maps, the runtime's tool does
        # not find either); that tool costs seconds on large graphs (15 s on PP-OCRv4 det, 0.4 s on a
        # scikit-learn MLP, whose SymPy import it pays too)
        return proto
    declared = {vi.name: vi for vi in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]}
    missing = {o for n in proto.graph.node for o in n.output
               if o and (o not in declared or not _known(declared[o], dims))}
    if not missing:
        return proto
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        found = SymbolicShapeInference.infer_shapes(proto, auto_merge=True, guess_output_rank=True)
    except Exception:  # a tool of the runtime; many models it cannot read: keep what ONNX inferred
        return proto
    if found is None:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    entries = {vi.name: vi for vi in out.graph.value_info}
    for vi in found.graph.value_info:
        if vi.name not in missing or not _known(vi, dims):
            continue
        if vi.name in entries:
            entries[vi.name].CopyFrom(vi)  # ONNX's partial entry, completed
        elif vi.name in declared:
            continue  # a graph output ONNX declared partly: left as the model says
        else:
            out.graph.value_info.append(vi)
    return out


def _batch_probe_shapes(proto: onnx.ModelProto) -> dict[str, tuple[tuple[int | str | None, ...], bool]]:
    """Shapes of every value with the batch dim told apart: infer at two batch sizes and compare.

    A value is batched when its first dim follows the inputs' dynamic first dim (7 in one inference,
    11 in the other). Skipped (empty result) when no input has a dynamic first dim.
    """
    init_names = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init_names]
    dyn = [
        i for i in inputs
        if i.type.HasField("tensor_type") and len(i.type.tensor_type.shape.dim) > 0
        and not i.type.tensor_type.shape.dim[0].HasField("dim_value")
    ]
    if not dyn:
        return {}
    results = []
    for batch in _PROBE_BATCHES:
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)
        pinit = {t.name for t in probe.graph.initializer}
        for i in probe.graph.input:
            if i.name in pinit or not i.type.HasField("tensor_type"):
                continue
            dims = i.type.tensor_type.shape.dim
            if len(dims) > 0 and not dims[0].HasField("dim_value"):
                dims[0].dim_value = batch
        del probe.graph.value_info[:]
        try:
            probe = onnx.shape_inference.infer_shapes(probe, check_type=False, strict_mode=False, data_prop=True)
        except Exception:
            return {}
        results.append(inferred_shapes(_with_runtime_shapes(probe, dims=True)))
    a, b = results
    out: dict[str, tuple[tuple[int | str | None, ...], bool]] = {}
    for name, sa in a.items():
        sb = b.get(name)
        if sb is None or len(sa) != len(sb):
            continue
        batched = len(sa) > 0 and sa[0] == _PROBE_BATCHES[0] and sb[0] == _PROBE_BATCHES[1]
        merged: list[int | str | None] = []
        for i, (x, y) in enumerate(zip(sa, sb)):
            if i == 0 and batched:
                merged.append("N")
            elif x == y and isinstance(x, int) and x > 0:
                merged.append(x)
            else:
                merged.append(None)
        out[name] = (tuple(merged), batched)
    return out


def load_model(
    path: str | os.PathLike[str],
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    check: bool = True,
) -> LoadedModel:
    """Read, validate and shape-infer a model file.

    ``input_shapes`` fixes dynamic input dims (``{"input": (1, 3, 224, 224)}``). With ``check``,
    the ONNX checker must accept the model; shape inference problems are kept as warnings since
    runtimes often run models that the static inference cannot fully type.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelLoadError(f"not a file: {p}")
    try:
        # onnx picks the format from the suffix (.json, .onnxtxt, .textproto: text formats; else binary)
        proto = onnx.load_model(str(p), load_external_data=False)
    except OSError as e:
        raise ModelLoadError(f"{p}: cannot read ({e.strerror or e})") from None
    except Exception as e:  # protobuf DecodeError, json_format/text_format ParseError, ...
        raise ModelLoadError(f"{p} is not an ONNX model ({_not_onnx_reason(p, e)})") from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        what = "empty file" if p.stat().st_size == 0 else "no graph; truncated or another file type?"
        raise ModelLoadError(f"{p} is not an ONNX model ({what})")
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    if "ai.onnx" in opsets:
        v = opsets["ai.onnx"]
        if not MIN_OPSET <= v <= MAX_OPSET:
            raise ModelLoadError(
                f"{p}: unsupported opset {v} (onnxfi supports ai.onnx opsets {MIN_OPSET}..{MAX_OPSET})"
            )
    has_external = _check_external_data(proto, p.parent)
    external = _external_names(proto.graph, set()) if has_external else set()
    if has_external:
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(p.parent))
        except Exception as e:  # the onnx helper raises several types for bad files
            raise ModelLoadError(f"{p}: cannot load external data ({_first_line(e)})") from None
    _dynamic_placeholders(proto)
    if input_shapes:
        _apply_input_shapes(proto, input_shapes)
    warnings: list[str] = []
    if check:
        try:
            onnx.checker.check_model(proto)
        except onnx.checker.ValidationError as e:
            raise ModelLoadError(f"{p}: invalid model: {_first_line(e)} (use --no-check to skip)") from None
        except ValueError as e:  # e.g. >2GB protos
            warnings.append(f"checker skipped: {_first_line(e)}")
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as e:  # shape inference raises many types on odd models
        warnings.append(f"shape inference incomplete: {_first_line(e)}")
    proto = _with_runtime_shapes(proto)  # contrib ops' outputs (MatMulNBits, Attention, ...) get their types
    value_shapes = _batch_probe_shapes(proto)
    try:
        model = ir.from_proto(proto)
    except Exception as e:
        raise ModelLoadError(f"{p}: cannot read the graph ({_first_line(e)})") from None
    _mark_external(model, external)
    return LoadedModel(model, p, has_external, warnings, value_shapes)


def save_model(model: ir.Model, path: str | os.PathLike[str], external_data: bool = False) -> list[Path]:
    """Write ``model``; with ``external_data`` large tensors go to ``<name>.data`` beside it.

    Returns the files written.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        data_name = out.name + ".data"
        data_path = out.parent / data_name
        if data_path.exists():
            data_path.unlink()
        ir.save(model, out, external_data=data_name)
        if data_path.exists() and data_path.stat().st_size == 0:  # every tensor was small enough to stay inline
            data_path.unlink()
        return [out, data_path] if data_path.exists() else [out]
    ir.save(model, out)
    return [out]
