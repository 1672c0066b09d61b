"""Insert a fault node after an activation: the faulted element is recomputed at run time, every run.

Bit faults reinterpret the tensor as unsigned words and apply ``((w & AND) | OR) ^ XOR``:
``BitCast`` (opset 26) for float types, the ``Bitwise*`` ops (opset 18) directly for integers.
Value faults use ``Where``/``ScatterND`` and need no new opset. For a batched activation the fault
hits the same per-image element of every image, or only image ``K`` when ``image`` is given.

``identity=True`` inserts the same nodes doing nothing (masks ``AND`` all ones, ``OR``/``XOR`` zero, a
``Where`` that selects no element, a ``ScatterND`` with no index): the golden of a faulty run must come
from this graph, because a fault node stops ONNX Runtime fusing its producer with its consumers (Conv +
Relu, ...) and the fused and unfused graphs round differently.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxfi.bits import DTypeInfo, dtype_info
from onnxfi.errors import SiteError
from onnxfi.faults import BitFault, BitMasks, Fault, RandomValue, SetValue
from onnxfi.memory import check_bytes
from onnxfi.passes._intercept import intercept
from onnxfi.passes.opset import model_opset
from onnxfi.sites import Site

__all__ = ["InsertActivationFault", "required_opset"]

_BITCAST_OPSET = 26
_BITWISE_OPSET = 18
_PREFIX = "onnxfi_fault"


def required_opset(site: Site, fault: Fault) -> int:
    """The lowest ai.onnx opset the fault node for ``fault`` at ``site`` needs."""
    if isinstance(fault, BitFault):
        return _BITCAST_OPSET if dtype_info(site.dtype).is_float else _BITWISE_OPSET
    return 11  # ScatterND / Where


def _const(name: str, array: np.ndarray, dtype: ir.DataType | None = None) -> ir.Value:
    tensor = ir.Tensor(np.require(array, requirements="C"), dtype=dtype, name=name)
    return ir.val(name, tensor.dtype, tensor.shape, const_value=tensor)


class InsertActivationFault(ir.passes.InPlacePass):
    """Rewrite ``x -> consumers`` into ``x -> fault node -> consumers`` for activation ``site``.

    ``flat_index`` addresses one image's tensor for batched sites (the whole tensor otherwise). The
    faulted value keeps the original name, so graph outputs and their names stay as they were.

    With ``identity`` the pass inserts the nodes of ``fault`` but makes them leave every bit unchanged.
    ``structure`` is the same for every fault that inserts the same node sequence at a site, so one
    identity model per (site, image, structure) is the golden of all of them.
    """

    def __init__(
        self,
        site: Site,
        flat_index: int,
        fault: Fault,
        image: int | None = None,
        rng: np.random.Generator | None = None,
        identity: bool = False,
    ) -> None:
        super().__init__()
        if site.kind != "activation":
            raise SiteError(f"{site.name} is a weight, not an activation")
        shape = site.concrete_shape
        if shape is None:
            raise SiteError(
                f"the shape of activation {site.name} is not known statically; "
                "give --input-shape for every dynamic input"
            )
        size = int(np.prod(shape))
        if not 0 <= flat_index < size:
            raise SiteError(f"index {flat_index} out of range for {site.name} ({size} elements per image)")
        if image is not None and not site.batched:
            raise SiteError(f"{site.name} has no batch dimension; --image does not apply")
        if image is not None and image < 0:
            raise SiteError("--image must be >= 0")
        batch = site.shape[0] if site.batched and site.shape else None
        if image is not None and isinstance(batch, int) and image >= batch:
            raise SiteError(f"--image {image} is outside the static batch of {batch} image(s) of {site.name}")
        self.info: DTypeInfo = dtype_info(site.dtype)
        fault.check(self.info)
        if isinstance(fault, RandomValue):  # draw once, now: the node then applies a fixed value
            fault = SetValue(float(fault.draw(rng or np.random.default_rng(0), (1,), self.info.numpy)[0]))
        self.site, self.flat_index, self.fault, self.image = site, flat_index, fault, image
        self.shape, self.identity = shape, identity
        self.structure: tuple[str, ...] = ("value",)
        if isinstance(fault, BitFault):
            m = fault.masks(self.info)
            self.structure = tuple(op for op, on in [
                ("and", m.and_mask != (1 << self.info.bits) - 1), ("or", m.or_mask != 0), ("xor", m.xor_mask != 0)
            ] if on)

    def _coords(self) -> np.ndarray:
        coords: list[int] = [int(c) for c in np.unravel_index(self.flat_index, self.shape)] if self.shape else []
        if self.site.batched:
            coords = [self.image or 0, *coords]
        return np.array([coords], dtype=np.int64)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        need = required_opset(self.site, self.fault)
        if model_opset(model) < need:
            raise SiteError(f"this fault needs opset {need}; upgrade the model first (upgrade_opset)")
        graph = model.graph
        x, faulty = intercept(graph, self.site.tensor_name, _PREFIX)
        name = faulty.name or ""

        nodes: list[ir.Node] = []
        per_image = self.site.batched and self.image is None
        p = f"{_PREFIX}_{name}"

        def node(op: str, inputs: list[ir.Value], out: ir.Value | None = None, **attrs: int) -> ir.Value:
            outputs = [out] if out is not None else [ir.Value(name=f"{p}_{len(nodes)}_{op}")]
            nodes.append(ir.node(op, inputs, attributes=attrs or None, outputs=outputs, name=f"{p}_{len(nodes)}"))
            return outputs[0]

        info = self.info
        if isinstance(self.fault, BitFault):
            m: BitMasks = self.fault.masks(info)
            is_float = info.is_float
            word_t = ir.DataType.from_numpy(info.word) if is_float else self.site.dtype
            word_np = info.word if is_float else info.numpy
            words = node("BitCast", [x], to=word_t.value) if is_float else x
            full = (1 << info.bits) - 1

            def masks_const(tag: str, value: int, identity: int) -> ir.Value:
                word = np.array(identity if self.identity else value, dtype=info.word).view(word_np)
                if per_image:
                    check_bytes(f"the per-image fault mask of {self.site.name} {[1, *self.shape]}",
                                int(np.prod(self.shape, dtype=np.float64)) * np.dtype(info.word).itemsize)
                    arr = np.full((1, *self.shape), identity, dtype=info.word).view(word_np)
                    arr.reshape(-1)[self.flat_index] = word
                else:
                    arr = np.array([word], dtype=word_np)
                return _const(f"{p}_{tag}", arr, word_t)

            if per_image:
                target = words
            else:
                coords = _const(f"{p}_coords", self._coords())
                target = node("GatherND", [words, coords])
            cur = target
            mask_and_identity = {"and": (m.and_mask, full), "or": (m.or_mask, 0), "xor": (m.xor_mask, 0)}
            for tag in self.structure:
                op = f"Bitwise{tag.capitalize()}"
                cur = node(op, [cur, masks_const(tag, *mask_and_identity[tag])])
            if not per_image:
                cur = node("ScatterND", [words, coords, cur])
            if is_float:
                node("BitCast", [cur], out=faulty, to=self.site.dtype.value)
            else:
                node("Identity", [cur], out=faulty)
        else:
            assert isinstance(self.fault, SetValue)
            value = self.fault.apply(np.zeros(1, dtype=info.numpy))
            if per_image:
                where = np.zeros((1, *self.shape), dtype=bool)
                where.reshape(-1)[self.flat_index] = not self.identity
                node("Where", [_const(f"{p}_where", where), _const(f"{p}_value", value.reshape(()),
                               self.site.dtype), x], out=faulty)
            else:
                coords_np = self._coords()
                if self.identity:  # no index: ScatterND writes nothing
                    coords_np, value = coords_np[:0], value[:0]
                coords = _const(f"{p}_coords", coords_np)
                node("ScatterND", [x, coords, _const(f"{p}_value", value, self.site.dtype)], out=faulty)

        for n in nodes:
            for v in n.inputs:
                if v is not None and v.const_value is not None and v.name not in graph.initializers:
                    graph.register_initializer(v)
        producer = x.producer()
        assert producer is not None
        graph.insert_after(producer, nodes)
        return ir.passes.PassResult(model, True)
