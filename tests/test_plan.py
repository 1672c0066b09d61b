"""Plan acceptance: Leveugle sizing, exhaustive plans, equal allocation over (site, bit) strata,
JSON round trip, seeding, and ``parse_bits``. No model is run here."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from onnxfi.errors import OnnxfiError
from onnxfi.plan import Plan, make_plan, parse_bits
from onnxfi.sites import Site
from onnxfi.stats import leveugle_sample_size

# Leveugle's worked figures read t from a normal table to three decimals, and so does onnxfi
# (``stats.leveugle_sample_size``): 2.576 for 99% (exact 2.5758293035489), 1.960 for 95%.
Z99 = 2.576
Z95 = 1.960
Z99_EXACT = 2.5758293035489
RESNET18_PARAMS = 11_689_512  # x 32 bits = 374,064,384 single-bit faults


def reference_leveugle(population: int, e: float, t: float, p: float = 0.5) -> int:
    """n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p))), rounded up (Leveugle et al., DATE 2009)."""
    return math.ceil(population / (1 + e * e * (population - 1) / (t * t * p * (1 - p))))


def site(name: str, shape: tuple[int, ...] | None, kind: str = "weight",
         dtype: ir.DataType = ir.DataType.FLOAT) -> Site:
    return Site(name, kind, dtype, shape, "initializer", ("MatMul",), ("mm",), tensor_name=name)  # type: ignore[arg-type]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "m.onnx"
    p.write_bytes(b"not really a model; make_plan only hashes it")
    return p


# --------------------------------------------------------------------------------- sample size


def test_leveugle_resnet18_scale_99_percent_1_percent() -> None:
    n_pop = RESNET18_PARAMS * 32
    assert n_pop == 374_064_384
    assert reference_leveugle(n_pop, 0.01, Z99) == 16_589
    assert leveugle_sample_size(n_pop, 0.01, 0.99, 0.5) == 16_589
    # the exact quantile would give two fewer: the table t (3 decimals) is what makes it 16,589
    assert reference_leveugle(n_pop, 0.01, Z99_EXACT) == 16_587


@pytest.mark.parametrize("population", [10**6, 10**9, 10**12, 374_064_384])
def test_leveugle_95_percent_5_percent_large_population_is_385(population: int) -> None:
    assert reference_leveugle(population, 0.05, Z95) == 385
    assert leveugle_sample_size(population, 0.05, 0.95) == 385


@pytest.mark.parametrize(
    ("population", "e", "conf", "t", "p"),
    [(768, 0.05, 0.95, Z95, 0.5), (768, 0.01, 0.99, Z99, 0.5), (5888, 0.05, 0.99, Z99, 0.5),
     (10**7, 0.02, 0.99, Z99, 0.1), (1000, 0.05, 0.95, Z95, 0.5)],
)
def test_leveugle_matches_the_formula(population: int, e: float, conf: float, t: float, p: float) -> None:
    assert leveugle_sample_size(population, e, conf, p) == reference_leveugle(population, e, t, p)


def test_leveugle_never_exceeds_the_population() -> None:
    for n_pop in (1, 2, 7, 100):
        assert leveugle_sample_size(n_pop, 0.001, 0.99) == n_pop


# ------------------------------------------------------------------------------- plan sizing


def test_margin_plan_at_resnet18_scale(model_file: Path) -> None:
    sites = [site("conv.weight", (RESNET18_PARAMS - 1000,)), site("fc.bias", (1000,))]
    plan = make_plan(model_file, sites, margin=0.01, confidence=0.99, seed=1)
    assert plan.population == 374_064_384
    assert plan.mode == "statistical"
    assert plan.requested == len(plan.experiments) == 16_589
    assert len(plan.strata) == 64
    assert sum(s.n for s in plan.strata) == 16_589
    # equal allocation: 64 strata, none capped (fc.bias has 1000 elements per bit > 16589 / 64)
    assert max(s.n for s in plan.strata) - min(s.n for s in plan.strata) <= 1
    assert plan.model_sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()


def test_margin_plan_is_capped_by_the_population(model_file: Path) -> None:
    sites = [site("W", (3, 6)), site("b", (6,))]  # 24 elements x 32 bits = 768 faults
    plan = make_plan(model_file, sites, margin=0.05, confidence=0.95)
    assert plan.population == 768
    assert plan.mode == "statistical"
    assert plan.requested == len(plan.experiments) == reference_leveugle(768, 0.05, Z95) == 257
    tight = make_plan(model_file, sites, margin=0.001, confidence=0.99)
    assert tight.mode == "exhaustive"
    assert tight.requested == len(tight.experiments) == 768
    assert all(s.n == s.population for s in tight.strata)


def test_fixed_plan_larger_than_the_space_is_exhaustive(model_file: Path) -> None:
    sites = [site("W", (3, 6)), site("h", (6,), kind="activation")]
    plan = make_plan(model_file, sites, bits=[30, 31], n_faults=10_000)
    assert plan.mode == "exhaustive" and plan.population == 48 == len(plan.experiments)
    seen = {(e.site, e.index, e.bit) for e in plan.experiments}
    assert seen == {(s, i, b) for s, n in (("W", 18), ("h", 6)) for i in range(n) for b in (30, 31)}
    fixed = make_plan(model_file, sites, bits=[30, 31], n_faults=47)
    assert fixed.mode == "fixed" and len(fixed.experiments) == 47


def test_allocation_sums_to_n_and_respects_stratum_populations(model_file: Path) -> None:
    sites = [site("tiny", (1,)), site("small", (3,)), site("mid", (40,)), site("big", (50_000,))]
    for n in (1, 3, 7, 50, 200, 500, 1000, 5000):
        plan = make_plan(model_file, sites, n_faults=n, seed=n)
        assert sum(s.n for s in plan.strata) == len(plan.experiments) == min(n, plan.population)
        for s in plan.strata:
            assert 0 <= s.n <= s.population
        # equal shares: a stratum below the largest share is full
        top = max(s.n for s in plan.strata)
        for s in plan.strata:
            assert s.n >= top - 1 or s.n == s.population, (n, s)
        per = Counter((e.site, e.bit) for e in plan.experiments)
        for s in plan.strata:
            assert per.get((s.site, s.bit), 0) == s.n


def test_experiments_are_distinct_and_in_range(model_file: Path) -> None:
    sites = [site("a", (4, 5)), site("b", (3,)), site("act", (2, 3), kind="activation")]
    plan = make_plan(model_file, sites, faults=["flip", "stuck-1", "zero"], bits=parse_bits("0,23-25,31"),
                     n_faults=300, seed=11)
    assert [e.id for e in plan.experiments] == list(range(len(plan.experiments)))
    sizes = {"a": 20, "b": 3, "act": 6}
    keys = [(e.site, e.index, json.dumps(e.fault, sort_keys=True)) for e in plan.experiments]
    assert len(set(keys)) == len(keys)  # sampled without replacement within each stratum
    for e in plan.experiments:
        assert 0 <= e.index < sizes[e.site]
        assert e.kind == ("activation" if e.site == "act" else "weight")
        if e.fault["kind"] == "zero":
            assert e.bit is None
        else:
            assert e.fault["bits"] == [e.bit] and e.bit in (0, 23, 24, 25, 31)
    strata_kinds = Counter(s.fault for s in plan.strata)
    assert strata_kinds == {"flip": 15, "stuck-1": 15, "zero": 3}


def test_bits_outside_the_dtype_are_dropped_per_site(model_file: Path) -> None:
    sites = [site("f32", (4,)), site("f16", (4,), dtype=ir.DataType.FLOAT16)]
    plan = make_plan(model_file, sites, bits=[14, 15, 20, 31], n_faults=10**6)
    bits = defaultdict(set)
    for s in plan.strata:
        bits[s.site].add(s.bit)
    assert bits == {"f32": {14, 15, 20, 31}, "f16": {14, 15}}
    assert plan.population == 4 * 4 + 4 * 2
    with pytest.raises(OnnxfiError):
        make_plan(model_file, [site("f16", (4,), dtype=ir.DataType.FLOAT16)], bits=[16, 31], n_faults=5)


def test_rounds_spread_each_stratum(model_file: Path) -> None:
    sites = [site("a", (1000,)), site("b", (1000,))]
    plan = make_plan(model_file, sites, bits=[0, 31], n_faults=400, rounds=4)
    rounds = [e.round for e in plan.experiments]
    assert rounds == sorted(rounds)  # round-major order
    per = Counter((e.site, e.bit, e.round) for e in plan.experiments)
    assert set(per.values()) == {25}  # 100 per stratum over 4 rounds


def test_plan_errors(model_file: Path) -> None:
    with pytest.raises(OnnxfiError, match="at least 1"):
        make_plan(model_file, [site("a", (4,))], n_faults=0)
    with pytest.raises(OnnxfiError, match="no fault sites"):
        make_plan(model_file, [], n_faults=3)
    with pytest.raises(OnnxfiError, match="unknown shapes"):
        make_plan(model_file, [site("a", None)], n_faults=3)
    # some unknown: left out, and the plan says which
    plan = make_plan(model_file, [site("a", None), site("b", (4,))], n_faults=3)
    assert {e.site for e in plan.experiments} == {"b"} and plan.options["left_out_unknown_shape"] == ["a"]
    with pytest.raises(OnnxfiError):
        make_plan(model_file, [site("a", (4,))])  # neither --faults nor --margin


# ---------------------------------------------------------------------- JSON and determinism


def test_plan_round_trips_through_json(model_file: Path, tmp_path: Path) -> None:
    sites = [site("a", (4, 5)), site("act", (2, 3), kind="activation")]
    plan = make_plan(model_file, sites, faults=["flip", "burst:2", "value:-3.5", "zero"], bits=[0, 7, 30],
                     n_faults=40, seed=5, rounds=2, options={"critical": 0.02, "data": None})
    path = tmp_path / "plan.json"
    plan.save(path)
    back = Plan.load(path)
    assert back == plan
    assert back.to_dict() == plan.to_dict()
    assert json.loads(path.read_text()) == plan.to_dict()
    for e, f in zip(plan.experiments, back.experiments):
        assert e.fault_obj() == f.fault_obj()
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_plan_load_errors(tmp_path: Path) -> None:
    with pytest.raises(OnnxfiError, match="not found"):
        Plan.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(OnnxfiError):
        Plan.load(bad)
    bad.write_text(json.dumps({"model": "x"}))
    with pytest.raises(OnnxfiError, match="not an onnxfi plan"):
        Plan.load(bad)


def test_same_seed_same_plan_different_seed_different_plan(model_file: Path) -> None:
    sites = [site("a", (100, 10)), site("b", (64,)), site("act", (8, 8), kind="activation")]
    p1 = make_plan(model_file, sites, n_faults=150, seed=42)
    p2 = make_plan(model_file, sites, n_faults=150, seed=42)
    p3 = make_plan(model_file, sites, n_faults=150, seed=43)
    assert p1.to_dict() == p2.to_dict()
    assert [(e.site, e.index, e.bit, e.seed) for e in p1.experiments] != [
        (e.site, e.index, e.bit, e.seed) for e in p3.experiments
    ]
    # fewer faults than strata (3 sites x 32 bits): which strata get one is seeded too
    q1 = make_plan(model_file, sites, n_faults=10, seed=1)
    q2 = make_plan(model_file, sites, n_faults=10, seed=1)
    assert q1.to_dict() == q2.to_dict()
    picked = {tuple((s.site, s.bit) for s in make_plan(model_file, sites, n_faults=10, seed=k).strata if s.n)
              for k in range(8)}
    assert len(picked) > 1


# ----------------------------------------------------------------------------------- parse_bits


@pytest.mark.parametrize(
    ("text", "bits"),
    [
        ("23-30", list(range(23, 31))),
        ("31,30,23-25", [23, 24, 25, 30, 31]),
        ("30-23", list(range(23, 31))),
        (" 5 , 5,1 ", [1, 5]),
        ("0", [0]),
        ("all", None),
        ("ALL", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_bits(text: str | None, bits: list[int] | None) -> None:
    assert parse_bits(text) == bits


@pytest.mark.parametrize("text", ["x", "1-", "-3", "3,,4", "1.5", "a-b", "23-30x"])
def test_parse_bits_rejects(text: str) -> None:
    with pytest.raises(OnnxfiError, match="bits"):
        parse_bits(text)


def test_plan_sizes_match_numpy_sampling_bounds(model_file: Path) -> None:
    """Stratum indices are a sorted sample (exhaustive strata list every element once)."""
    sites = [site("a", (7,)), site("b", (500,))]
    plan = make_plan(model_file, sites, bits=[3], n_faults=60, seed=9)
    idx_a = [e.index for e in plan.experiments if e.site == "a"]
    idx_b = [e.index for e in plan.experiments if e.site == "b"]
    assert sorted(idx_a) == list(range(7))
    assert len(idx_b) == 53 and idx_b == sorted(idx_b) and len(set(idx_b)) == 53
    assert np.all(np.asarray(idx_b) < 500)
