"""Fuzz cases: the corpus they start from, case ``i`` of seed ``s`` (surface, command, mutation, argv: decided
in the parent from ``default_rng([s, i])``), and the builder that writes its mutant in the case's child
(from ``default_rng([s, i, 1])``), so one case is reproducible alone.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fuzz import mutators as mu
from fuzz.runner import Case

__all__ = ["SCHEDULE", "build_corpus", "make_case", "make_builder", "iter_cases", "slice_indices"]

# (surface, command, weight): case i of seed s is SCHEDULE entry order[i % len(order)], order a seeded shuffle
# of the entries repeated by weight. analyze and gate start spawned worker processes (seconds each): few.
SCHEDULE: list[tuple[str, str, int]] = [
    ("model", "inspect", 7), ("model", "run", 7), ("model", "inject", 5), ("model", "harden", 2),
    ("model", "compare", 2), ("model", "analyze", 1), ("model", "gate", 1),
    ("data", "run", 6), ("data", "inject", 2), ("data", "harden", 2), ("data", "compare", 1),
    ("data", "analyze", 1), ("data", "gate", 1),
    ("gate-config", "gate", 3),
    ("plan", "inject", 6),
    ("store", "results", 6), ("store", "report", 3), ("store", "inject", 2), ("store", "analyze", 1),
    ("store", "gate", 1),
]
SLOW = {"analyze", "gate"}
CORPUS_VERSION = "2"  # bump when build_corpus or gate_base changes

_ALL_BASES = ["digits_cnn", "digits_cnn", "digits_cnn", "digits_mlp_skl", "digits_cnn_keras", "fashion_cnn_int8_qdq",
              "fashion_cnn_fp16", "fashion_seg", "if_model", "if_model", "if_model"]
_SMALL_BASES = ["digits_cnn", "digits_cnn", "digits_mlp_skl", "if_model", "if_model"]
_DATA_BASES = {"digits_cnn": "digits_eval", "digits_mlp_skl": "digits_eval_flat",
               "digits_cnn_keras": "digits_eval_nhwc",
               "fashion_seg": "fashion_seg_eval", "fashion_cnn_int8_qdq": "fashion_eval",
               "fashion_cnn_fp16": "fashion_eval"}
_HARDEN = ["ranger", "clipact", "relumax", "protect", "nan-guard", "weight-clip", "ranger,protect",
           "nan-guard,clipact"]


def build_corpus(corpus: mu.Corpus) -> None:
    """The If model, a 30-fault digits_cnn store (and its plan JSON) and a gate --json baseline."""
    ok = corpus.root / "corpus.ok"
    if ok.exists() and ok.read_text().strip() == CORPUS_VERSION:
        return
    if corpus.root.exists():
        shutil.rmtree(corpus.root)
    corpus.root.mkdir(parents=True)
    mu.build_if_model(corpus.if_model)
    gate_dir = corpus.root / "gate"
    gate_dir.mkdir()
    (gate_dir / "onnxfi.toml").write_text(mu.toml_dumps(mu.gate_base(corpus)))
    py = [sys.executable, "-m", "onnxfi"]
    procs = [
        subprocess.Popen([*py, "analyze", "digits_cnn", "--faults", "30", "--db", str(corpus.store), "--overwrite",
                          "--workers", "1"], cwd=corpus.root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
        subprocess.Popen([*py, "gate", "--config", "onnxfi.toml", "--json", str(corpus.gate_json)], cwd=gate_dir,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
    ]
    for p, codes in zip(procs, [(0,), (0, 1)]):
        _, err = p.communicate(timeout=300)
        if p.returncode not in codes:
            raise RuntimeError(f"corpus: {p.args} exited {p.returncode}: {err.decode()[-2000:]}")
    for f in (corpus.store, corpus.plan, corpus.gate_json):
        if not f.exists():
            raise RuntimeError(f"corpus: {f} was not written")
    ok.write_text(CORPUS_VERSION + "\n")


@functools.cache
def _order(seed: int) -> tuple[tuple[str, str], ...]:
    entries = [(s, c) for s, c, w in SCHEDULE for _ in range(w)]
    perm = np.random.default_rng([seed, 2**31]).permutation(len(entries))
    return tuple(entries[int(i)] for i in perm)


@functools.cache
def _sites(path: str) -> tuple[str, str, str]:
    m = onnx.load(path, load_external_data=False)
    return mu.weight_site(m), mu.activation_site(m), m.graph.input[0].name


def _occurrence(seed: int, index: int) -> int:
    """How many earlier cases of ``seed`` have the same (surface, command) as case ``index``."""
    order = _order(seed)
    pair = order[index % len(order)]
    per_cycle = order.count(pair)
    return (index // len(order)) * per_cycle + order[: index % len(order)].count(pair)


def _rotate(seed: int, index: int, names: list[str]) -> str:
    """Mutations taken in turn per (surface, command), so a short slice still covers each one."""
    return names[(_occurrence(seed, index) + seed) % len(names)]


def _p(rng: np.random.Generator, seq: list[Any]) -> Any:
    return seq[int(rng.integers(len(seq)))]


def _maybe(rng: np.random.Generator, p: float, args: list[str]) -> list[str]:
    return args if rng.random() < p else []


def make_case(seed: int, index: int, corpus: mu.Corpus, out: Path) -> Case:
    """Case ``index`` of ``seed``: its surface, command, mutation and command line (no file written)."""
    order = _order(seed)
    surface, command = order[index % len(order)]
    rng = np.random.default_rng([seed, index])
    folder = out / "cases" / f"s{seed}-c{index}"
    params: dict[str, Any] = {}
    argv: list[str]
    timeout = 60.0 if command in SLOW else 30.0
    if surface == "model":
        base = _p(rng, _SMALL_BASES if command in ("analyze", "harden", "compare", "gate") else _ALL_BASES)
        if base == "if_model" and rng.random() < 0.5:
            mutation = _p(rng, sorted(mu.SUBGRAPH_MUTATIONS))
        else:
            mutation = _rotate(seed, index, sorted(mu.MODEL_MUTATIONS))
        params["base"] = base
        argv = _model_argv(rng, command, "m/model.onnx", base, corpus, mutation)
    elif surface == "data":
        base = _p(rng, ["digits_cnn", "digits_cnn", "digits_mlp_skl", "digits_cnn", "fashion_seg"] if command == "run"
                  else ["digits_cnn", "digits_cnn", "digits_mlp_skl"])
        mutation = _rotate(seed, index, sorted(mu.DATA_MUTATIONS))
        params["base"] = _DATA_BASES[base]
        argv = _data_argv(rng, command, base, corpus)
    elif surface == "gate-config":
        mutation = _rotate(seed, index, mu.GATE_MUTATIONS)
        cfg = {"pyproject": "pyproject.toml", "missing_config": "missing.toml"}.get(mutation, "onnxfi.toml")
        argv = ["gate", "--config", cfg, *_maybe(rng, 0.3, ["--json", "g.json"]),
                *_maybe(rng, 0.3, ["--junit", "j.xml"])]
    elif surface == "plan":
        mutation = _rotate(seed, index, sorted(mu.PLAN_MUTATIONS))
        n = 30
        exp = _p(rng, [0, 1, n - 1, int(rng.integers(n)), int(rng.integers(n)), n, -1, 2**31, 2**63 + 5])
        argv = ["inject", "digits_cnn", "--from-plan", "plan.json", "--experiment", str(exp), "-o", "out.onnx",
                *_maybe(rng, 0.2, ["--other-model"]), *_maybe(rng, 0.3, ["--json", "-"])]
    elif surface == "store":
        mutation = _rotate(seed, index, sorted(mu.STORE_MUTATIONS))
        if command == "results":
            argv = ["results", "store.db", *_p(rng, [[], ["--csv"], ["--json", "-"], ["--json", "r.json"]])]
        elif command == "report":
            argv = ["report", "store.db", "-o", "r.html"]
        elif command == "inject":
            argv = ["inject", "digits_cnn", "--from-plan", "store.db", "--experiment", str(int(rng.integers(-1, 32))),
                    "-o", "out.onnx"]
        elif command == "analyze":
            argv = ["analyze", "digits_cnn", "--db", "store.db", "--resume", "--workers", "1",
                    *_maybe(rng, 0.5, ["--html", "a.html"])]
        else:
            argv = ["gate", "--config", "onnxfi.toml", "--db", "store.db"]
    else:
        raise KeyError(surface)
    return Case(seed, index, surface, command, mutation, argv, folder, timeout, params)


def _model_argv(rng: np.random.Generator, command: str, path: str, base: str, corpus: mu.Corpus,
                mutation: str) -> list[str]:
    weight, act, inp = _sites(str(corpus.model_path(base)))
    # the eval data where it fits; never for input-dims mutants, whose point is the random inputs they ask for
    fits = base in _DATA_BASES and not mutation.startswith("input_dims")
    data = corpus.zoo / "data" / f"{_DATA_BASES[base]}.npz" if fits else None
    huge = f"{inp}:{_p(rng, ['1000000000', '0', '33554432', '2147483648', '99999999999999'])}" + \
        ("x1x8x8" if base in ("digits_cnn",) else "")
    if command == "inspect":
        return ["inspect", path, *_maybe(rng, 0.3, [_p(rng, ["--weights", "--activations", "--all",
                                                          "--include-structure", "--no-check"])]),
                *_maybe(rng, 0.3, ["--json", "-"]), *_maybe(rng, 0.1, ["--input-shape", huge])]
    if command == "run":
        return ["run", path, "--repeat", "1", *(_maybe(rng, 0.5, ["--data", str(data)]) if data else []),
                *_maybe(rng, 0.2, ["--json", "-"]), *_maybe(rng, 0.1, ["--input-shape", huge]),
                *_maybe(rng, 0.2, ["--samples", str(_p(rng, [0, 1, 3]))])]
    if command == "inject":
        site = weight if rng.random() < 0.6 else act
        return ["inject", path, "--site", site, "--index", _p(rng, ["0", "1", "0,0"]), "--bit",
                str(_p(rng, [30, 31, 0])), "-o", "out.onnx", *_maybe(rng, 0.3, ["--json", "-"])]
    if command == "harden":
        return ["harden", path, "--method", _p(rng, _HARDEN), "-o", "h.onnx", "--repeat", "2", "--samples", "8"]
    if command == "compare":
        return ["compare", path, "--faults", str(_p(rng, [0, 2])), "--repeat", "2", "--warmup", "0", "--samples", "4",
                "--fault-samples", "4"]
    if command == "analyze":
        return ["analyze", path, "--faults", str(int(rng.integers(3, 6))), "--workers", "1", "--db", "a.db",
                "--samples", "8", *_maybe(rng, 0.3, ["--target", "activations"])]
    if command == "gate":
        return ["gate", path, "--config", "onnxfi.toml"]
    raise KeyError(command)


def _data_argv(rng: np.random.Generator, command: str, base: str, corpus: mu.Corpus) -> list[str]:
    weight, act, _ = _sites(str(corpus.model_path(base)))
    if command == "run":
        return ["run", base, "--data", "data.npz", "--repeat", "1", *_maybe(rng, 0.2, ["--json", "-"]),
                *_maybe(rng, 0.2, ["--batch", str(_p(rng, [1, 7, 1000]))])]
    if command == "inject":
        return ["inject", base, "--site", act, "--index", "0", "--bit", "30", "--data", "data.npz", "-o", "out.onnx"]
    if command == "harden":
        return ["harden", base, "--method", _p(rng, _HARDEN), _p(rng, ["--calib", "--eval"]), "data.npz",
                "-o", "h.onnx", "--repeat", "2"]
    if command == "compare":
        return ["compare", base, "--data", "data.npz", "--faults", str(_p(rng, [0, 1])), "--repeat", "2",
                "--warmup", "0", "--fault-samples", "4"]
    if command == "analyze":
        return ["analyze", base, "--data", "data.npz", "--faults", "3", "--workers", "1", "--db", "a.db"]
    if command == "gate":
        return ["gate", "--config", "onnxfi.toml", "--data", "data.npz"]
    raise KeyError(command)


def make_builder(corpus: mu.Corpus) -> Any:
    """The function a case's child calls to write its mutant (and a valid gate config where it needs one)."""

    def build(case: Case) -> str:
        rng = np.random.default_rng([case.seed, case.index, 1])
        folder = case.folder
        if case.command == "gate" and case.surface != "gate-config":
            (folder / "onnxfi.toml").write_text(mu.toml_dumps(mu.gate_base(corpus)))
        if case.surface == "model":
            return mu.mutate_model(rng, corpus.model_path(case.params["base"]), folder, case.mutation)
        if case.surface == "data":
            return mu.mutate_data(rng, corpus.zoo / "data" / f"{case.params['base']}.npz", folder, case.mutation)
        if case.surface == "gate-config":
            return mu.mutate_gate(rng, corpus, folder, case.mutation)
        if case.surface == "plan":
            return mu.mutate_plan(rng, corpus.plan, folder, case.mutation)
        if case.surface == "store":
            return mu.mutate_store(rng, corpus.store, folder, case.mutation)
        raise KeyError(case.surface)

    return build


def iter_cases(seed: int, indices: list[int] | range, corpus: mu.Corpus, out: Path) -> Iterator[Case]:
    for i in indices:
        yield make_case(seed, i, corpus, out)


def slice_indices(n: int) -> list[int]:
    """The first ``n`` cases: every (surface, command) pair of SCHEDULE appears once per len(order) cases."""
    return list(range(n))


def case_json(case: Case) -> str:
    return json.dumps({"seed": case.seed, "case": case.index, "surface": case.surface, "command": case.command,
                       "mutation": case.mutation, "argv": case.argv})
