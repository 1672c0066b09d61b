"""One exact fault into a loaded model: a weight element rewritten, or a fault node after an activation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfi.bits import dtype_info
from onnxfi.errors import SiteError
from onnxfi.faults import BitFault, Fault
from onnxfi.model import LoadedModel
from onnxfi.passes import InjectWeightFault, InsertActivationFault, required_opset, upgrade_opset
from onnxfi.sites import Site, SiteIndex, parse_index

__all__ = ["Injection", "inject", "stored_bits"]


@dataclass
class Injection:
    """What ``inject`` did: the faulty model and a record of the change."""

    model: ir.Model
    site: Site
    flat_index: int
    coords: tuple[int, ...]
    fault: Fault
    image: int | None
    old_value: Any = None
    new_value: Any = None
    opset_from: int | None = None
    opset_to: int | None = None
    stored: list[dict[str, Any]] | None = None  # weight bit faults: where each bit is stored (see stored_bits)

    def to_dict(self) -> dict[str, Any]:
        def scalar(v: Any) -> Any:
            if v is None:
                return None
            f = float(v)
            return f if np.isfinite(f) else str(f)

        return {
            "site": self.site.name,
            "kind": self.site.kind,
            "dtype": self.site.dtype_name,
            "index": self.flat_index,
            "coords": list(self.coords),
            "fault": self.fault.to_dict() | {"spec": self.fault.spec()},
            "image": self.image,
            "old_value": scalar(self.old_value),
            "new_value": scalar(self.new_value),
            "opset_from": self.opset_from,
            "opset_to": self.opset_to,
            "stored": self.stored,
        }


def stored_bits(site: Site, flat_index: int, fault: Fault, old_value: Any = None,
                new_value: Any = None) -> list[dict[str, Any]] | None:
    """For a bit fault in a weight: each target bit's byte and bit in the serialized tensor (int4: element i
    bit b is byte i // 2 bit (i % 2) * 4 + b) and, in a packed site (MatMulNBits B, zero points), the logical
    value it belongs to, with that value before and after when ``old_value``/``new_value`` (the bytes) are given.
    None for other faults and for activations."""
    if site.kind != "weight" or not isinstance(fault, BitFault):
        return None
    info = dtype_info(site.dtype)
    out: list[dict[str, Any]] = []
    for bit in fault.target_bits():
        byte, byte_bit = info.storage_bit(flat_index, bit)
        rec: dict[str, Any] = {"bit": bit, "byte": byte, "byte_bit": byte_bit}
        packing = site.packing
        if packing is not None:
            at = packing.locate(flat_index, bit)
            rec["means"] = packing.describe(flat_index, bit)
            if at is None:
                rec["packed"] = None
            else:
                n, slot, vbit = at
                rec["packed"] = {"n": n, "k" if packing.role == "weights" else "block": slot, "bit": vbit}
                shift, mask = bit // packing.bits * packing.bits, (1 << packing.bits) - 1
                if old_value is not None and new_value is not None:
                    rec["packed"] |= {"old": int(old_value) >> shift & mask, "new": int(new_value) >> shift & mask}
        out.append(rec)
    return out


def inject(
    loaded: LoadedModel,
    sites: SiteIndex,
    site_name: str,
    index: str | int,
    fault: Fault,
    image: int | None = None,
    rng: np.random.Generator | None = None,
) -> Injection:
    """Apply ``fault`` at ``site_name[index]`` of ``loaded`` (modified in place for weights)."""
    site = sites.get(site_name)
    shape = site.concrete_shape
    if shape is None:
        raise SiteError(
            f"the shape of {site.name} is not known statically; give --input-shape for every dynamic input"
        )
    flat = parse_index(index, shape)
    coords = tuple(flat // int(np.prod(shape[i + 1:], dtype=object)) % d for i, d in enumerate(shape)) if shape else ()
    if site.kind == "weight":
        if image is not None:
            raise SiteError("--image applies to activation sites only; a weight fault hits every image")
        wpass = InjectWeightFault(sites, site, flat, fault, rng)
        wpass(loaded.model)
        return Injection(loaded.model, site, flat, coords, fault, None, wpass.old_value, wpass.new_value,
                         stored=stored_bits(site, flat, fault, wpass.old_value, wpass.new_value))
    apass = InsertActivationFault(site, flat, fault, image, rng)
    before = int(loaded.model.opset_imports.get("", 0))
    model = upgrade_opset(loaded.model, required_opset(site, apass.fault))
    apass(model)
    after = int(model.opset_imports.get("", 0))
    return Injection(
        model, site, flat, coords, apass.fault, image,
        opset_from=before if after != before else None, opset_to=after if after != before else None,
    )
