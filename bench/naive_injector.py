"""An independent naive weight-fault injector: the baseline of ``bench_sparse.py``.

It shares no code with onnxfi: onnx, onnxruntime and numpy only. Per experiment of an onnxfi plan (the
``.plan.json`` that ``onnxfi analyze`` writes beside its database) it copies the loaded ModelProto, flips
the planned bit of the planned element of the weight (an initializer, or the ``value`` of a Constant
node), serializes the copy, builds a new ONNX Runtime session (default options: every graph optimization,
as a user's script would) and runs it on the data; the outputs are compared with the fault-free model's.
That is what the README of a typical per-framework FI script does, and what "naive" means in issue 17.

Per experiment it writes the flags onnxfi stores, computed here independently: ``masked`` (every output
bitwise equal), ``due`` (a non-finite value where golden had none) and ``sdc1`` (the top-1 class of the
first output changes for some sample; classification outputs ``[N, C]`` only, else null).

    python bench/naive_injector.py MODEL PLAN.json DATA.npz --out rows.json [--limit K] [--seed S]

Inputs are the .npz members named like the model's inputs (axis 0: samples), run ``--batch`` samples at a
time (onnxfi's default, 256, so both compute the same batches). ``--limit K`` runs a seeded random subset of K experiments (the rate of the rest is the same per
experiment: the bench extrapolates and says so). Only single bit flips of weights are supported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every main-graph weight by name: initializers and the ``value`` of Constant nodes."""
    out = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for a in node.attribute:
                if a.name == "value":
                    out[node.output[0]] = a.t
    return out


def flip(tensor: onnx.TensorProto, index: int, bit: int) -> None:
    arr = numpy_helper.to_array(tensor).copy()
    flat = arr.reshape(-1)
    word = flat.view(_UINT[arr.dtype.itemsize])
    word[index] ^= word.dtype.type(1) << word.dtype.type(bit)
    tensor.CopyFrom(numpy_helper.from_array(arr, tensor.name))


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    """Every output over the data, ``batch`` samples per run (the sample axis is axis 0 of every input)."""
    n = len(next(iter(feeds.values())))
    parts = [session.run(None, {k: v[i:i + batch] for k, v in feeds.items()}) for i in range(0, n, batch)]
    return [np.concatenate([np.asarray(p[j]) for p in parts]) for j in range(len(parts[0]))]


def flags(out: list[np.ndarray], gold: list[np.ndarray]) -> dict[str, object]:
    masked = all(o.shape == g.shape and o.tobytes() == g.tobytes() for o, g in zip(out, gold))
    due = any(np.issubdtype(o.dtype, np.floating) and not np.all(np.isfinite(o)) and np.all(np.isfinite(g))
              for o, g in zip(out, gold))
    o, g = out[0], gold[0]
    sdc1 = None
    if o.ndim == 2 and o.shape[1] >= 2:
        sdc1 = bool(not masked and np.any(np.argmax(o, axis=1) != np.argmax(g, axis=1)))
    return {"masked": masked, "due": due, "sdc1": sdc1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("plan")
    ap.add_argument("data", help=".npz with one array per model input")
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", type=int, default=256, help="samples per run (onnxfi's default batch)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    model = onnx.load(args.model)
    names = {i.name for i in model.graph.input} - {t.name for t in model.graph.initializer}
    with np.load(args.data, allow_pickle=False) as z:
        feeds = {k: z[k] for k in z.files if k in names}  # labels and other members are not inputs
    with open(args.plan) as f:
        plan = json.load(f)
    exps = [e for e in plan["experiments"] if e.get("image") is None]
    if any(e["kind"] != "weight" or e["fault"].get("kind") != "flip" or len(e["fault"]["bits"]) != 1 for e in exps):
        print("only single bit flips of weights are supported", file=sys.stderr)
        return 2
    if args.limit and args.limit < len(exps):
        pick = np.sort(np.random.default_rng(args.seed).choice(len(exps), args.limit, replace=False))
        exps = [exps[i] for i in pick]
    so = ort.SessionOptions()
    so.log_severity_level = 4
    if args.threads:
        so.intra_op_num_threads = args.threads
    providers = ["CPUExecutionProvider"]
    gold = run(ort.InferenceSession(model.SerializeToString(), so, providers=providers), feeds, args.batch)
    t_ready = time.perf_counter()
    rows = {}
    for e in exps:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        flip(tensors(m)[e["site"]], int(e["index"]), int(e["fault"]["bits"][0]))
        try:
            out = run(ort.InferenceSession(m.SerializeToString(), so, providers=providers), feeds, args.batch)
            rows[e["id"]] = flags(out, gold)
        except Exception as err:  # the faulty model fails to build or run: a crash
            rows[e["id"]] = {"crash": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    t_end = time.perf_counter()
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "startup_s": t_ready - t_start, "loop_s": t_end - t_ready,
                   "experiments": len(exps), "planned": len([e for e in plan["experiments"]
                                                             if e.get("image") is None])}, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
