"""Scale-out of one campaign plan: 1 vs 2 (or more) Ray workers on this machine, in experiments/s.

Usage (from the repository root):

    .venv/bin/python bench/ray_workers.py                          digits_cnn, 800 faults, 1 and 2 workers
    .venv/bin/python bench/ray_workers.py --model resnet18.onnx --data batch.npz --faults 300 --workers 1,2,4
    .venv/bin/python bench/ray_workers.py --executor local         the same with worker processes
    .venv/bin/python bench/ray_workers.py --address auto           on a running cluster (`ray start --head`)

Every run executes the same seeded plan (weight bit flips over every site and bit). The rate counts
the experiments finished between the first ready worker and the last row, so Ray and engine start-up
(reported apart) do not dilute it. ``--threads`` (default 1) is the ORT intra-op threads per worker:
with one thread per worker the ratio shows what more workers buy; with ORT's default (all cores per
session), workers on one machine compete for the same cores. Timings vary with other load on the machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from onnxfi.engine import EngineConfig
from onnxfi.executors import make_executor
from onnxfi.faults import BitFault
from onnxfi.model import load_model
from onnxfi.plan import Plan, make_plan
from onnxfi.sites import enumerate_sites
from onnxfi.zoo import default_data, resolve_model


def site_flags(plan: Plan) -> Callable[[str], tuple[bool, bool]]:
    """Which fault ports each site needs (bit masks, values), as the campaign computes them."""
    flags: dict[str, list[bool]] = defaultdict(lambda: [False, False])
    for e in plan.experiments:
        flags[e.site][0 if isinstance(e.fault_obj(), BitFault) else 1] = True
    return lambda site: (flags[site][0], flags[site][1])


def measure(plan: Plan, cfg: EngineConfig, executor: str, workers: int,
            address: str | None) -> dict[str, float]:
    t0 = time.perf_counter()
    ex = make_executor(executor, cfg, workers=workers, address=address)
    try:
        ex.start()
        t1 = time.perf_counter()
        n = sum(1 for _ in ex.run(plan.experiments, site_flags(plan)))
        t2 = time.perf_counter()
    finally:
        ex.close()
    return {"n": n, "startup_s": t1 - t0, "run_s": t2 - t1, "rate": n / (t2 - t1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits_cnn", help="zoo name or .onnx path (default digits_cnn)")
    ap.add_argument("--data", help=".npz inputs (default: the zoo model's eval set)")
    ap.add_argument("--faults", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    ap.add_argument("--threads", type=int, default=1, help="ORT threads per worker (0: ORT's default)")
    ap.add_argument("--executor", choices=["ray", "local"], default="ray")
    ap.add_argument("--address", help="a running Ray cluster (default: a Ray instance started here)")
    args = ap.parse_args(argv)

    model = str(resolve_model(args.model))
    data = args.data or default_data(args.model)
    loaded = load_model(model)
    sites = enumerate_sites(loaded.model, loaded.value_shapes).select("weights")
    plan = make_plan(model, sites, n_faults=args.faults, seed=args.seed)
    cfg = EngineConfig(model, data_path=data, threads=args.threads or None)
    counts = [int(w) for w in args.workers.split(",")]

    if args.executor == "ray" and args.address is None:
        import os

        import ray

        # One Ray instance for every run, sized for the largest: start-up is then the actors' only.
        ray.init(num_cpus=max(os.cpu_count() or 1, max(counts) * max(1, args.threads)),
                 include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    print(f"{Path(model).name}: {len(plan.experiments)} experiments, executor {args.executor}, "
          f"{args.threads or 'default'} ORT thread(s) per worker, {len(sites)} weight sites")
    print(f"{'workers':>7} {'start-up s':>10} {'run s':>8} {'exp/s':>8} {'vs 1':>6}")
    base = None
    for w in counts:
        r = measure(plan, cfg, args.executor, w, args.address)
        assert r["n"] == len(plan.experiments)
        base = base or r["rate"]
        ratio = r["rate"] / base
        print(f"{w:>7} {r['startup_s']:>10.2f} {r['run_s']:>8.2f} {r['rate']:>8.1f} {ratio:>5.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
