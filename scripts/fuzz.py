#!/usr/bin/env python
"""Fuzz the onnxfi CLI (issue 18): mutated models, .npz data, gate configs, plan JSON and SQLite stores through
every command, each case in a forked child under an address-space limit and a time limit.

    python scripts/fuzz.py --cases 5000 --seed 0            the long run: summary table + misbehaving cases
    python scripts/fuzz.py --seed 0 --case 1234             one case alone (its folder is kept)
    python scripts/fuzz.py --cases 300 --out /tmp/fz -j 2   the CI slice (tests/test_fuzz_slice.py)

A misbehaving case keeps its folder (OUT/cases/s<seed>-c<i>: the mutant, stdout.txt, stderr.txt) and is printed
with the command line that reproduces it. OUT/summary.txt, OUT/misbehaviours.txt and OUT/misbehaviours.jsonl are
written at the end. Exit status: 0 no misbehaviour, 1 some.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# tests/fuzz is the package `fuzz`; this script's own folder must not shadow it
sys.path[:1] = [str(REPO / "tests")]

from fuzz import session  # noqa: E402
from fuzz.runner import Result  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=300, help="cases 0..N-1 of the seed (default 300)")
    p.add_argument("--start", type=int, default=0, help="first case index")
    p.add_argument("--case", type=int, action="append", help="run only this case (repeatable); keeps its folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    p.add_argument("-j", "--jobs", type=int, default=None, help="cases at a time (default: the CPUs)")
    p.add_argument("--rlimit-gb", type=float, default=4.0, help="address-space limit per case (default 4 GiB)")
    p.add_argument("--keep-ok", action="store_true", help="keep the folders of cases that behaved")
    p.add_argument("-q", "--quiet", action="store_true", help="no line per misbehaving case while running")
    args = p.parse_args(argv)

    out = (args.out or Path(tempfile.mkdtemp(prefix="onnxfi-fuzz-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    indices = args.case if args.case else list(range(args.start, args.start + args.cases))
    keep = args.keep_ok or bool(args.case)
    t0 = time.monotonic()
    done = [0]

    def progress(res: Result) -> None:
        done[0] += 1
        if not res.ok and not args.quiet:
            print(f"[{done[0]}/{len(indices)}] {res.case.name} {res.case.surface}/{res.case.command}/"
                  f"{res.case.mutation}: {res.verdict}: {res.detail[:160]}", flush=True)
        elif done[0] % 250 == 0:
            print(f"[{done[0]}/{len(indices)}] {time.monotonic() - t0:.0f} s", flush=True)
        if args.case:
            print(f"{res.case.name}: {res.verdict} (exit {res.rc}, {res.seconds:.1f} s) "
                  f"{res.case.surface}/{res.case.command}/{res.case.mutation}: {res.extra.get('desc', '')}\n"
                  f"  folder: {res.case.folder}\n  {res.reproducer()}")

    results = session.run(args.seed, indices, out, jobs=args.jobs, keep_ok=keep,
                          rlimit_as=int(args.rlimit_gb * (1 << 30)) if args.rlimit_gb > 0 else None,
                          on_result=progress)
    session.write_reports(results, out)
    print()
    print(session.summary_table(results))
    print()
    print(session.misbehaviour_report(results))
    print(f"\n{len(results)} cases in {time.monotonic() - t0:.1f} s; output: {out}")
    return 1 if any(not r.ok for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
