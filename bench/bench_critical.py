r"""Critical-bit search vs an exhaustive sweep over a whole model (issue 19): the flips the search runs against
every bit of the searched elements, and how many (element, bit) pairs the two agree on.

Runs ``onnxfi critical-bits MODEL --elements K --check --json F`` (a subprocess, timed whole) with
``--verify 1`` (the default: each boundary checked by one more flip per side) and ``--verify 0`` (bisection
only); ``--check`` also runs every remaining bit of the searched elements, so the agreement is against the
exhaustive answer of those elements, run through the same engine. Prints per weight and in total: flips the
search ran, every bit of the searched elements, the ratio, fallbacks, and the agreement.

    .venv/bin/python bench/bench_critical.py --model digits_cnn --elements 16
    .venv/bin/python bench/bench_critical.py --model digits_cnn --sites '^classifier\.2\.weight$' --elements 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _search(model: str, elements: int, verify: int, seed: int, sites: str | None) -> tuple[dict[str, Any], float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "critical.json"
        t = time.perf_counter()
        cmd = [sys.executable, "-m", "onnxfi", "critical-bits", model, "--verify", str(verify), "--seed", str(seed),
               "--check", "--json", str(out)]
        cmd += ["--elements", str(elements)] if elements > 0 else []
        cmd += ["--sites", sites] if sites else []
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text()), time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="digits_cnn")
    ap.add_argument("--elements", type=int, default=16,
                    help="elements searched per weight (default 16; 0: every element of the selected weights)")
    ap.add_argument("--sites", help="weights whose name matches this regex (default: every weight)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write both runs' figures here")
    args = ap.parse_args()
    results = {}
    for verify in (1, 0):
        doc, wall = _search(args.model, args.elements, verify, args.seed, args.sites)
        check = doc["check"]
        results[f"verify{verify}"] = {"wall_s": wall, "experiments": doc["experiments"],
                                      "exhaustive": doc["exhaustive_experiments"], "ratio": doc["ratio"],
                                      "agree": check["agree"], "pairs": check["pairs"],
                                      "agreement": check["agreement"], "rate": doc["rate"],
                                      "layers": [{k: w[k] for k in ("site", "elements", "experiments",
                                                                    "exhaustive_experiments", "fallbacks", "critical",
                                                                    "pairs")}
                                                 for w in doc["layers"]]}
        # what a search of every element would run against every bit of every element: each weight's ratio
        # weighted by its element count (the sampled total above weighs a 16-element BatchNorm vector like a
        # 10,000-element convolution)
        sized = [(w["experiments"] / max(1, w["exhaustive_experiments"]), w["elements"]) for w in doc["layers"]]
        projected = sum(r * n for r, n in sized) / max(1, sum(n for _, n in sized))
        results[f"verify{verify}"]["projected_ratio"] = projected
        what = f"--elements {args.elements}" if args.elements > 0 else "every element"
        print(f"\n{args.model}{f' --sites {args.sites}' if args.sites else ''}, {what} --verify {verify} --check "
              f"({wall:.1f} s whole command)")
        print(f"{'weight':34} {'flips':>6} {'every bit':>9} {'ratio':>6} {'fallbacks':>9} {'critical':>9}")
        for w in doc["layers"]:
            print(f"{w['site'][:34]:34} {w['experiments']:6d} {w['exhaustive_experiments']:9d} "
                  f"{w['experiments'] / max(1, w['exhaustive_experiments']):6.1%} {w['fallbacks']:9d} "
                  f"{w['critical']:5d}/{w['pairs']}")
        print(f"projected over every element of these weights (each weight's ratio weighted by its size): "
              f"{projected:.1%}")
        print(f"total: {doc['experiments']:,} of {doc['exhaustive_experiments']:,} flips ({doc['ratio']:.1%}); "
              f"agreement with every bit run: {check['agree']:,}/{check['pairs']:,} ({check['agreement']:.2%}); "
              f"critical pairs {100 * doc['rate']['rate']:.2f}% [{100 * doc['rate']['lo']:.2f}, "
              f"{100 * doc['rate']['hi']:.2f}]")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
