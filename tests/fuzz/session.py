"""A whole fuzz run: build (or reuse) the corpus, run the cases, and render the summary table per surface and
command and the misbehaving cases grouped by root-cause signature, each with its reproducer."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from fuzz import cases as cs
from fuzz import mutators as mu
from fuzz.runner import Result, preload_onnxfi, run_cases, signature

__all__ = ["REPO", "run", "summary_table", "misbehaviour_report", "write_reports"]

REPO = Path(__file__).resolve().parents[2]


def run(seed: int, indices: Sequence[int], out: Path, jobs: int | None = None, keep_ok: bool = False,
        rlimit_as: int | None = 4 << 30, on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Run cases ``indices`` of ``seed`` with mutants under ``out/cases``; the corpus lives in ``out/corpus``."""
    out = out.resolve()
    corpus = mu.Corpus(out / "corpus", REPO)
    cs.build_corpus(corpus)
    preload_onnxfi()
    jobs = jobs or max(1, len(os.sched_getaffinity(0)))
    results: list[Result] = []
    builder = cs.make_builder(corpus)
    for res in run_cases(cs.iter_cases(seed, list(indices), corpus, out), builder, jobs=jobs, rlimit_as=rlimit_as,
                         keep_ok=keep_ok):
        results.append(res)
        if on_result is not None:
            on_result(res)
    results.sort(key=lambda r: r.case.index)
    return results


def summary_table(results: Sequence[Result]) -> str:
    """Cases per surface and command: how many, how many misbehaved (by kind), seconds."""
    rows: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        rows[(r.case.surface, r.case.command)].append(r)
    head = (f"{'surface':<12} {'command':<9} {'cases':>6} {'ok':>6} {'exit0':>6} {'bad':>5} {'secs':>7}  "
            "misbehaviours")
    lines = [head, "-" * len(head)]
    for key in sorted(rows):
        rs = rows[key]
        bad = Counter(r.verdict for r in rs if not r.ok)
        lines.append(f"{key[0]:<12} {key[1]:<9} {len(rs):>6} {len(rs) - sum(bad.values()):>6} "
                     f"{sum(1 for r in rs if r.rc == 0):>6} "
                     f"{sum(bad.values()):>5} {sum(r.seconds for r in rs):>7.1f}  "
                     + ", ".join(f"{k} {v}" for k, v in sorted(bad.items())))
    tot_bad = sum(1 for r in results if not r.ok)
    lines.append("-" * len(head))
    lines.append(f"{'total':<22} {len(results):>6} {len(results) - tot_bad:>6} "
                 f"{sum(1 for r in results if r.rc == 0):>6} {tot_bad:>5} "
                 f"{sum(r.seconds for r in results):>7.1f}")
    return "\n".join(lines)


def _tail(text: str, n: int = 4) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip() and "this is a bug in onnxfi" not in ln]
    return "\n".join("      " + ln[:200] for ln in lines[-n:])


def misbehaviour_report(results: Sequence[Result], max_examples: int = 3) -> str:
    """The misbehaving cases grouped by signature: count, surfaces/mutations hit, stderr tail, reproducers."""
    groups: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        if not r.ok:
            groups[signature(r)].append(r)
    if not groups:
        return "no misbehaving cases"
    parts = [f"{sum(len(g) for g in groups.values())} misbehaving cases, {len(groups)} distinct signatures"]
    for sig, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        kinds = Counter(f"{r.case.surface}/{r.case.command}/{r.case.mutation}" for r in rs)
        parts.append(f"\n== [{len(rs)}] {sig}\n   hit by: " + ", ".join(f"{k} x{v}" for k, v in kinds.most_common()))
        for r in rs[:max_examples]:
            parts.append(f"   - {r.case.name} {r.case.surface}/{r.case.command}/{r.case.mutation}: "
                         f"{r.extra.get('desc', '')[:160]}\n     {r.detail[:240]}\n{_tail(r.stderr)}\n"
                         f"     repro: {r.reproducer()}")
    return "\n".join(parts)


def write_reports(results: Sequence[Result], out: Path) -> None:
    """``out/summary.txt``, ``out/misbehaviours.txt`` and one JSON line per misbehaving case."""
    (out / "summary.txt").write_text(summary_table(results) + "\n")
    (out / "misbehaviours.txt").write_text(misbehaviour_report(results, max_examples=5) + "\n")
    with open(out / "cases.jsonl", "w") as f:
        for r in results:
            f.write(json.dumps({"case": r.case.index, "surface": r.case.surface, "command": r.case.command,
                                "mutation": r.case.mutation, "verdict": r.verdict, "rc": r.rc,
                                "seconds": round(r.seconds, 2), "desc": r.extra.get("desc", "")}) + "\n")
    with open(out / "misbehaviours.jsonl", "w") as f:
        for r in results:
            if not r.ok:
                f.write(json.dumps({"seed": r.case.seed, "case": r.case.index, "surface": r.case.surface,
                                    "command": r.case.command, "mutation": r.case.mutation,
                                    "desc": r.extra.get("desc", ""), "verdict": r.verdict, "rc": r.rc,
                                    "detail": r.detail, "signature": signature(r), "argv": r.case.argv,
                                    "folder": str(r.case.folder), "seconds": round(r.seconds, 2)}) + "\n")
