"""``onnxfi inject``: write a copy of a model with one exact fault in a weight or an activation, or with every
bit flip of one fault-rate experiment of a plan."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxfi.commands._common import (
    add_allow_cast_arg,
    add_model_args,
    fmt_value,
    input_shapes_from_args,
    load_from_args,
    stdout,
)
from onnxfi.commands._json import SCHEMAS, add_json_arg, check_model_output, json_command, write_json
from onnxfi.errors import OnnxfiError

if TYPE_CHECKING:  # ONNX, ONNX Runtime and numpy load when the command runs, not with the parser (--help)
    from onnxfi.inject import Injection
    from onnxfi.model import LoadedModel
    from onnxfi.plan import Experiment, Plan
    from onnxfi.sites import SiteIndex

__all__ = ["register", "run"]

# flips of a bit error rate experiment listed on the terminal and in the JSON record
_FLIPS_SHOWN = 10
_FLIPS_JSON = 100

_EXAMPLES = """examples:
  onnxfi inject model.onnx --site conv1.weight --index 3,0,1,1 --bit 30 -o faulty.onnx
  onnxfi inject model.onnx --site conv1.weight --index 17 --bit 23 --bit 24 --fault stuck-1 -o f.onnx
  onnxfi inject model.onnx --site relu_out --index 0,5,5 --bit 30 --image 2 -o f.onnx
  onnxfi inject model.onnx --site fc.bias --index 0 --fault value:1e9 -o f.onnx
  onnxfi inject model.onnx --from-plan run.db --experiment 42 -o exp42.onnx
  (a bit error rate experiment: every bit flip of its draw is written into the weights)
  onnxfi inject model.onnx --from-plan model.worst-case.plan.json --experiment 2 -o worst.onnx
  (the first 3 flips of `onnxfi worst-case`: its plan lists them)

faults: flip (default), burst:K (K adjacent bits from --bit), stuck-0, stuck-1, value:V,
        random:LO,HI (seeded by --seed), zero.  Bit 0 is the least significant bit;
        float32 bit 31 is the sign and bits 30..23 the exponent.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inject", help="write a copy of the model with one exact fault", epilog=_EXAMPLES,
        description="Weight site: OUT is the same model with exactly that element changed. Activation "
        "site: OUT has a fault node after the activation that applies the fault at run time "
        "(to every image, or to image K with --image).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    p.add_argument("--site", help="site name (see `onnxfi inspect`)")
    p.add_argument("--index", help="flat index or multi-index like 3,0,1,1 (per image)")
    p.add_argument("--from-plan", metavar="PLAN", help="take site, index and fault from a campaign plan "
                   "(the .plan.json beside an analyze DB, or the DB itself)")
    p.add_argument("--experiment", type=int, help="experiment id in --from-plan")
    p.add_argument("--other-model", action="store_true",
                   help="--from-plan: inject into MODEL even though it is not the file the plan was made for")
    p.add_argument("--bit", action="append", type=int, default=[], help="bit position (repeatable)")
    p.add_argument("--fault", default="flip", help="fault model (default: flip)")
    p.add_argument("--image", type=int, help="activation faults: only this image of the batch")
    p.add_argument("--seed", type=int, default=0, help="seed for random:LO,HI and for sample inputs")
    p.add_argument("--data", help=".npz inputs used to show an activation's value before and after")
    add_allow_cast_arg(p)
    p.add_argument("-o", "--output", required=True, help="where to write the faulty model")
    add_json_arg(p, "the injection record")
    p.set_defaults(func=run)


def _activation_preview(
    loaded: LoadedModel, result: Injection, args: argparse.Namespace
) -> tuple[Any, Any, str] | None:
    """Golden and faulty value of an activation element on image 0 of the sample inputs."""
    import numpy as np

    from onnxfi import load_model
    from onnxfi.data import load_data, random_data
    from onnxfi.passes import ExposeValues
    from onnxfi.runtime import make_session

    clean = load_model(loaded.path, input_shapes_from_args(args), check=False)
    ExposeValues([result.site.tensor_name])(clean.model)
    specs = clean.inputs()
    img = result.image or 0
    # a static batch dim (in the model or from --input-shape) must be fed whole
    static = [s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0]
    count = max(static) if static else img + 1
    data = load_data(args.data, specs, allow_cast=args.allow_cast) if args.data else random_data(
        specs, seed=args.seed, batch=count, overrides=input_shapes_from_args(args))
    if data.size < count:
        raise OnnxfiError(f"{data.source} has {data.size} samples; the preview needs {count}")
    feeds = data.batch(0, count)
    sess = make_session(clean.model)
    value = np.asarray(sess.run([result.site.tensor_name], feeds)[0])
    flat = value[img].reshape(-1) if result.site.batched else value.reshape(-1)
    old = flat[result.flat_index: result.flat_index + 1]
    new = result.fault.apply(old, np.random.default_rng(args.seed))
    return old[0], new[0], f"image {img} of {data.source}"


def _load_plan(path: str) -> Plan:
    from onnxfi.plan import Plan
    from onnxfi.store import Store

    p = Path(path)
    if p.suffix == ".json" or not p.is_file():
        return Plan.load(p)
    with Store(p) as store:
        d = store.meta("plan")
    if d is None:
        raise OnnxfiError(f"{p}: no campaign plan in it")
    return Plan.from_dict(d)


def _check_plan_model(plan: Plan, loaded: LoadedModel, plan_path: str) -> None:
    """The plan's sites, indices and seeds describe one model file: refuse another (its hash differs)."""
    if not plan.model_sha256:
        return
    from onnxfi.plan import file_sha256

    mine = file_sha256(loaded.path)
    if mine != plan.model_sha256:
        raise OnnxfiError(
            f"{loaded.path} (sha256 {mine[:12]}) is not the model of plan {plan_path} "
            f"({plan.model}, sha256 {plan.model_sha256[:12]}); give that model, or --other-model to inject anyway"
        )


def _scalar(v: Any) -> Any:
    import numpy as np

    f = float(v)
    return int(v) if getattr(getattr(v, "dtype", None), "kind", "f") in "iub" else f if np.isfinite(f) else str(f)


def _replay_ber(args: argparse.Namespace, loaded: LoadedModel, sites: SiteIndex, exp: Experiment,
                out_path: Path) -> int:
    """Write the model with every bit flip of the fault-rate experiment ``exp`` applied, and say where they went."""
    import numpy as np

    from onnxfi.ber import apply_flips, ber_sizes, draw_flips
    from onnxfi.model import save_model

    if args.image is not None:
        raise OnnxfiError("--image applies to activation faults; a bit error rate experiment flips stored weights")
    sizes = ber_sizes(sites)
    flips = draw_flips(exp, sizes)
    originals = apply_flips(sites, flips)
    shown = []
    for name, element, bit in flips[:_FLIPS_JSON]:
        site = sites.get(name)
        shape = site.concrete_shape or ()
        coords = [int(c) for c in np.unravel_index(element, shape)] if shape else []
        old = originals[name].reshape(-1)[element]
        new = sites.weight_array(site).reshape(-1)[element]
        shown.append({"site": name, "index": element, "coords": coords, "bit": bit, "dtype": site.dtype_name,
                      "old_value": _scalar(old), "new_value": _scalar(new)})
    names = [str(n) for n in exp.fault["sites"]]
    selected = exp.fault.get("bits")
    total = sum(n * sum(1 for b in (selected if selected is not None else range(w)) if 0 <= b < w)
                for n, w in (sizes[x] for x in names))
    rate = float(exp.fault["rate"])
    listed = exp.fault.get("flips") is not None  # the flips themselves (a worst-case search's), not a draw
    written = save_model(loaded.model, out_path, external_data=loaded.has_external_data)
    touched = len({name for name, _, _ in flips})
    if listed:
        stdout.print(f"experiment {exp.id}: {len(flips):,} listed bit flip(s) in {touched:,} weight site(s), applied "
                     "in order")
    else:
        stdout.print(f"experiment {exp.id}: bit error rate {rate:g} over {total:,} bits of {len(names):,} weight "
                     "site(s)" + (f" (bits {', '.join(map(str, selected))})" if selected is not None else ""))
        stdout.print(f"flips     {len(flips):,} (expected {rate * total:,.2f}) in {touched:,} site(s); seed {exp.seed}")
    for f in shown[:_FLIPS_SHOWN]:
        at = ",".join(map(str, f["coords"]))
        stdout.print(f"  {f['site']}[{at}] bit {f['bit']}: "
                     f"{fmt_value(f['old_value'])} -> {fmt_value(f['new_value'])}", markup=False)
    if len(flips) > _FLIPS_SHOWN:
        stdout.print(f"  ... {len(flips) - _FLIPS_SHOWN:,} more" + (" (--json lists the first "
                     f"{_FLIPS_JSON})" if args.json is None else ""))
    stdout.print(f"wrote     {', '.join(str(w) for w in written)}")
    write_json(args.json, {
        "schema": SCHEMAS["inject"], "site": exp.site, "kind": "weight", "experiment": exp.id, "seed": exp.seed,
        "fault": {"kind": "ber", "rate": rate, "bits": selected,
                  "spec": f"flips:{len(flips)}" if listed else f"ber:{rate:g}"},
        "sites": len(names), "bits_total": total, "n_flips": len(flips), "flips": shown,
        "flips_listed": len(shown), "output": [str(w) for w in written],
    })
    return 0


@json_command
def run(args: argparse.Namespace) -> int:
    import numpy as np

    from onnxfi.ber import is_ber
    from onnxfi.bits import dtype_info
    from onnxfi.faults import parse_fault
    from onnxfi.inject import inject
    from onnxfi.model import save_model

    out_path = Path(args.output)
    check_model_output(args.output)
    if out_path.exists() and out_path.is_dir():
        raise OnnxfiError(f"-o {out_path} is a directory")
    loaded, sites = load_from_args(args)
    if args.from_plan:
        if args.experiment is None:
            raise OnnxfiError("--from-plan needs --experiment ID")
        plan = _load_plan(args.from_plan)
        if not args.other_model:
            _check_plan_model(plan, loaded, args.from_plan)
        exp = plan.experiment(args.experiment)
        if is_ber(exp):
            return _replay_ber(args, loaded, sites, exp, out_path)
        site_name, index, fault = exp.site, exp.index, exp.fault_obj()
        rng = np.random.default_rng(exp.seed)
        if exp.image is not None and args.image is None:  # a transient fault: that sample's inference only
            args.image = exp.image
            stdout.print(f"transient fault: it hits sample {exp.image} of the batch the model is fed (feed the "
                         "eval set as one batch to reproduce the experiment)", style="yellow")
    else:
        if not args.site or args.index is None:
            raise OnnxfiError("give --site and --index (or --from-plan PLAN --experiment ID)")
        site_name, index, fault = args.site, args.index, parse_fault(args.fault, tuple(args.bit))
        rng = np.random.default_rng(args.seed)
    result = inject(loaded, sites, site_name, index, fault, image=args.image, rng=rng)
    preview = None
    if result.site.kind == "activation":
        try:
            preview = _activation_preview(loaded, result, args)
        except OnnxfiError:
            if args.data:  # the user's --data (missing, damaged, wrong dtype): theirs to see
                raise
            preview = None
        except Exception:  # only a preview: ORT may not run or return this dtype (bfloat16)
            preview = None
        if preview is not None:
            result.old_value, result.new_value = preview[0], preview[1]
    written = save_model(result.model, out_path, external_data=loaded.has_external_data)
    record = result.to_dict() | {"output": [str(w) for w in written]}
    s = result.site
    coords = ",".join(map(str, result.coords))
    stdout.print(f"site      {s.name} ({s.kind}, {s.dtype_name}, shape {s.shape_text()})")
    stdout.print(f"element   flat {result.flat_index}  = [{coords}]"
                 + (f"  image {result.image}" if result.image is not None else
                    "  every image" if s.batched else ""))
    stdout.print(f"fault     {result.fault.spec()}")
    if s.kind == "weight":
        stdout.print(f"value     {fmt_value(result.old_value)} -> {fmt_value(result.new_value)}")
        # where each bit lies, for sites whose element is not simply one stored word (int4; packed bytes)
        if s.packing is not None:
            for rec in result.stored or []:
                packed = rec["packed"]
                change = f": {packed['old']} -> {packed['new']}" if packed and "old" in packed else ""
                stdout.print(f"stored    byte [{coords}] bit {rec['bit']} = {rec['means']}{change}", markup=False)
        elif dtype_info(s.dtype).per_byte > 1:
            for rec in result.stored or []:
                stdout.print(f"stored    bit {rec['bit']} = byte {rec['byte']} bit {rec['byte_bit']} of the stored data")
    else:
        if preview is not None:
            stdout.print(f"value     {fmt_value(preview[0])} -> {fmt_value(preview[1])}  "
                         f"(on {preview[2]}; applied at run time to whatever the tensor holds)")
        stdout.print(f"fault node inserted after {', '.join(s.nodes)}"
                     + (f"; model converted opset {result.opset_from} -> {result.opset_to}"
                        if result.opset_to else ""))
    stdout.print(f"wrote     {', '.join(str(w) for w in written)}")
    write_json(args.json, {"schema": SCHEMAS["inject"], **record})
    return 0
