"""Plan acceptance: Leveugle sizing, exhaustive plans, the three designs (proportional allocation with
systematic rounding, equal allocation per stratum, adaptive Neyman rounds), rounds, JSON round trip,
seeding, and ``parse_bits``. No model is run here."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from onnxfi.errors import InternalError, OnnxfiError
from onnxfi.plan import (
    Plan,
    default_rounds,
    extend_plan,
    grouped_allocation,
    make_plan,
    neyman_allocation,
    parse_bits,
    pilot_allocation,
    systematic_allocation,
)
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
    assert plan.mode == "statistical" and plan.design == "proportional"
    assert plan.requested == len(plan.experiments) == 16_589
    assert len(plan.strata) == 64
    assert sum(s.n for s in plan.strata) == 16_589
    # proportional: every stratum gets the floor or the ceiling of n N_h / N (fc.bias: 1.42 per bit)
    for s in plan.strata:
        share = 16_589 * s.population / plan.population
        assert math.floor(share) <= s.n <= math.ceil(share), s
    assert plan.model_sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()
    # the per-stratum design spreads the same size equally: 64 strata, none capped
    equal = make_plan(model_file, sites, margin=0.01, confidence=0.99, seed=1, design="per-stratum")
    assert equal.design == "per-stratum" and len(equal.experiments) == 16_589
    assert max(s.n for s in equal.strata) - min(s.n for s in equal.strata) <= 1


def test_margin_plan_is_capped_by_the_population(model_file: Path) -> None:
    sites = [site("W", (3, 6)), site("b", (6,))]  # 24 elements x 32 bits = 768 faults
    plan = make_plan(model_file, sites, margin=0.05, confidence=0.95)
    assert plan.population == 768
    assert plan.mode == "statistical"
    assert plan.requested == len(plan.experiments) == reference_leveugle(768, 0.05, Z95) == 257
    for design in ("proportional", "per-stratum", "adaptive"):
        tight = make_plan(model_file, sites, margin=0.001, confidence=0.99, design=design)
        assert tight.mode == "exhaustive" and tight.design == design
        assert tight.requested == len(tight.experiments) == 768
        assert all(s.n == s.population for s in tight.strata)
        assert len({(e.site, e.bit, e.index) for e in tight.experiments}) == 768


def test_fixed_plan_larger_than_the_space_is_exhaustive(model_file: Path) -> None:
    sites = [site("W", (3, 6)), site("h", (6,), kind="activation")]
    plan = make_plan(model_file, sites, bits=[30, 31], n_faults=10_000)
    assert plan.mode == "exhaustive" and plan.population == 48 == len(plan.experiments)
    seen = {(e.site, e.index, e.bit) for e in plan.experiments}
    assert seen == {(s, i, b) for s, n in (("W", 18), ("h", 6)) for i in range(n) for b in (30, 31)}
    fixed = make_plan(model_file, sites, bits=[30, 31], n_faults=47)
    assert fixed.mode == "fixed" and len(fixed.experiments) == 47


# ------------------------------------------------------------------------------------- allocation


def test_systematic_allocation_is_exact_and_proportional() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(0, 1000, size=int(rng.integers(1, 20))) * rng.integers(1, 1000)
        total = int(sizes.sum())
        if total == 0:
            continue
        n = int(rng.integers(0, total + 1))
        alloc = systematic_allocation(sizes, n, rng)
        assert alloc.sum() == n and np.all(alloc <= sizes) and np.all(alloc >= 0)
        share = n * sizes / total
        assert np.all(alloc >= np.floor(share - 1e-9)) and np.all(alloc <= np.ceil(share + 1e-9))
    # the expectation is the share: E[n_h] = n N_h / N
    sizes = np.array([1, 3, 64, 300_000, 5])
    mean = np.mean([systematic_allocation(sizes, 50, rng) for _ in range(20_000)], axis=0)
    assert mean == pytest.approx(50 * sizes / sizes.sum(), abs=0.01)
    assert systematic_allocation(sizes, int(sizes.sum()), rng).tolist() == sizes.tolist()
    with pytest.raises(InternalError):
        systematic_allocation(sizes, int(sizes.sum()) + 1, rng)


def test_grouped_allocation_is_systematic_within_each_group() -> None:
    rng = np.random.default_rng(1)
    sizes = np.array([5, 100, 3, 0, 50, 7, 1000, 1])
    groups = np.array([1, 0, 1, 2, 0, 1, 0, 2])
    totals = np.array([300, 10, 1])
    runs = [grouped_allocation(sizes, groups, totals, rng) for _ in range(20_000)]
    for a in runs[:200]:
        assert np.bincount(groups, weights=a, minlength=3).tolist() == totals.tolist() and np.all(a <= sizes)
    want = np.array([totals[g] * sizes[i] / sizes[groups == g].sum() for i, g in enumerate(groups)])
    assert np.mean(runs, axis=0) == pytest.approx(want, abs=0.05)


def test_every_fault_is_equally_likely_in_a_proportional_plan(model_file: Path) -> None:
    """Inclusion probability n/N for every fault, measured over 600 seeds (systematic rounding + draws)."""
    sites = [site("tiny", (3,)), site("mid", (17,)), site("big", (50,))]
    counts: Counter[tuple[str, int | None, int]] = Counter()
    runs, n = 600, 20
    for seed in range(runs):
        plan = make_plan(model_file, sites, bits=[0, 31], n_faults=n, seed=seed)
        assert len(plan.experiments) == n
        counts.update((e.site, e.bit, e.index) for e in plan.experiments)
    space = [(s.name, b, i) for s in sites for b in (0, 31) for i in range(int(s.elements or 0))]
    p = n / len(space)  # 20 / 140
    sd = math.sqrt(runs * p * (1 - p))
    z = [(counts[f] - runs * p) / sd for f in space]
    assert max(abs(v) for v in z) < 4.5
    assert abs(float(np.mean(z))) < 0.2 and 0.7 < float(np.std(z)) < 1.3


def test_per_stratum_allocation_sums_to_n_and_respects_stratum_populations(model_file: Path) -> None:
    sites = [site("tiny", (1,)), site("small", (3,)), site("mid", (40,)), site("big", (50_000,))]
    for n in (1, 3, 7, 50, 200, 500, 1000, 5000):
        plan = make_plan(model_file, sites, n_faults=n, seed=n, design="per-stratum")
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
    fixed = make_plan(model_file, sites, per_stratum=5, seed=1)
    assert fixed.design == "per-stratum" and fixed.mode == "fixed"
    assert [s.n for s in fixed.strata] == [min(5, s.population) for s in fixed.strata]
    assert len(fixed.experiments) == 32 * (1 + 3 + 5 + 5)


def test_designs_are_chosen_and_checked(model_file: Path) -> None:
    sites = [site("a", (100,))]
    assert make_plan(model_file, sites, n_faults=10).design == "proportional"
    assert make_plan(model_file, sites, per_stratum=2).design == "per-stratum"
    with pytest.raises(OnnxfiError, match="per-stratum"):
        make_plan(model_file, sites, per_stratum=2, design="adaptive")
    with pytest.raises(OnnxfiError, match="margin"):
        make_plan(model_file, sites, n_faults=10, design="adaptive")
    with pytest.raises(OnnxfiError, match="unknown design"):
        make_plan(model_file, sites, n_faults=10, design="random")
    with pytest.raises(OnnxfiError, match="at least 1"):
        make_plan(model_file, sites, per_stratum=0)


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


# ------------------------------------------------------------------------------------------ rounds


def _round_order_holds(plan: Plan) -> None:
    """Ids 0..n-1 round-major; within a round grouped by site (sites in model order), then bit, then index."""
    assert [e.id for e in plan.experiments] == list(range(len(plan.experiments)))
    rounds = [e.round for e in plan.experiments]
    assert rounds == sorted(rounds) and sorted(set(rounds)) == list(range(max(rounds) + 1))
    site_order = {st.site: i for i, st in reversed(list(enumerate(plan.strata)))}
    for r in set(rounds):
        keys = [(site_order[e.site], -1 if e.bit is None else e.bit, e.index)
                for e in plan.experiments if e.round == r]
        assert keys == sorted(keys)


def test_default_rounds() -> None:
    assert [default_rounds(n) for n in (1, 49, 50, 120, 999, 1000, 10**6)] == [1, 1, 1, 2, 19, 20, 20]


def test_proportional_rounds_are_proportional_samples(model_file: Path) -> None:
    """Each round is a contiguous slice of a random permutation of the sample: a random part of it, so the
    share of each site in any round is its share of the fault space in expectation."""
    sites = [site("small", (64,)), site("big", (3000,)), site("act", (500,), kind="activation")]
    share: dict[str, list[float]] = {"small": [], "big": [], "act": []}
    for seed in range(200):
        plan = make_plan(model_file, sites, bits=[0, 30, 31], n_faults=400, seed=seed)
        _round_order_holds(plan)
        assert max(e.round for e in plan.experiments) + 1 == default_rounds(400) == 8
        sizes = Counter(e.round for e in plan.experiments)
        assert set(sizes.values()) == {50}
        first = [e for e in plan.experiments if e.round == 0]
        for name in share:
            share[name].append(sum(e.site == name for e in first) / len(first))
    total = sum(int(s.elements or 0) for s in sites)
    for s in sites:
        assert float(np.mean(share[s.name])) == pytest.approx(int(s.elements or 0) / total, abs=0.01)
    explicit = make_plan(model_file, sites, n_faults=400, rounds=3, seed=1)
    assert sorted(Counter(e.round for e in explicit.experiments).values()) == [133, 133, 134]


def test_per_stratum_rounds_spread_each_stratum_in_random_order(model_file: Path) -> None:
    sites = [site("a", (1000,)), site("b", (1000,))]
    plan = make_plan(model_file, sites, bits=[0, 31], n_faults=400, rounds=4, design="per-stratum")
    _round_order_holds(plan)
    per = Counter((e.site, e.bit, e.round) for e in plan.experiments)
    assert set(per.values()) == {25}  # 100 per stratum over 4 rounds
    # not index-ordered: round 0 does not get a stratum's lowest element indices
    mean_index = defaultdict(list)
    for seed in range(30):
        p = make_plan(model_file, sites, bits=[0, 31], n_faults=400, rounds=4, design="per-stratum", seed=seed)
        for r in range(4):
            mean_index[r].append(np.mean([e.index for e in p.experiments if e.round == r]))
    for r in range(4):
        assert float(np.mean(mean_index[r])) == pytest.approx(499.5, abs=25)
    # every sampled stratum is in the first round, even with fewer faults than rounds
    few = make_plan(model_file, sites, per_stratum=3, rounds=10)
    assert {(e.site, e.bit) for e in few.experiments if e.round == 0} == {(st.site, st.bit) for st in few.strata}


# ---------------------------------------------------------------------------------------- adaptive


def _rows(plan: Plan, sdc: dict[int, float], seed: int = 0) -> list[dict[str, object]]:
    """A row per experiment: SDC-1 with probability ``sdc[bit]``, drawn per fault (stable across calls)."""
    out: list[dict[str, object]] = []
    for e in plan.experiments:
        u = np.random.default_rng([seed, e.id, e.index]).random()
        out.append({"id": e.id, "sdc1": bool(u < sdc.get(int(e.bit or 0), 0.0))})
    return out


def test_pilot_and_neyman_allocation() -> None:
    rng = np.random.default_rng(0)
    pop = np.array([10**6] * 8 + [3])
    pilot = pilot_allocation(pop, 1000, rng)
    assert pilot.sum() == max(100, 5 * 9) == 100 and pilot[-1] == 3 and np.all(pilot >= 3)
    small = pilot_allocation(np.array([100] * 40), 100, rng)  # 5 per stratum would be 200 > the cap
    assert small.sum() == 100
    # Neyman: strata with rates near 0 or 1 get few, the uncertain ones many; every stratum at least one
    n = np.array([25] * 8 + [3])
    k = np.array([0, 0, 0, 25, 12, 6, 0, 1, 0])
    add = neyman_allocation(pop, n, k, 0.005, 0.95, 10**6, rng)
    assert np.all(add[:8] >= 1) and add[-1] == 0  # the 3-fault stratum is exhausted
    assert add[4] > add[5] > add[7] > add[0] and add[4] > 3 * add[3]  # S_h: 0.50, 0.43, 0.23, 0.14 (smoothed)
    assert neyman_allocation(pop, n, k, 0.005, 0.95, 40, rng).sum() == 40  # the budget caps the round


def test_adaptive_plan_grows_by_neyman_rounds_without_resampling(model_file: Path) -> None:
    sites = [site("bn", (64,)), site("conv", (30_000,)), site("fc", (2000,))]
    sdc = {b: (0.97 if b == 30 else 0.4 if b == 31 else 0.3 if 23 <= b <= 29 else 0.0) for b in range(32)}
    plan = make_plan(model_file, sites, margin=0.01, confidence=0.95, design="adaptive", seed=5)
    cap = leveugle_sample_size(plan.population, 0.01, 0.95)
    assert plan.design == "adaptive" and plan.requested == cap and plan.mode == "statistical"
    assert len(plan.experiments) == max(math.ceil(0.1 * cap), 5 * 32)  # the pilot
    _round_order_holds(plan)
    per_bit = Counter(e.bit for e in plan.experiments)
    assert min(per_bit.values()) >= 5
    seen = {(e.site, e.bit, e.index) for e in plan.experiments}
    grown = 0
    while True:
        rows = _rows(plan, sdc)
        again = extend_plan(plan, rows)
        nxt = extend_plan(plan, rows)
        if nxt is None:
            assert again is None
            break
        assert again is not None and again.to_dict() == nxt.to_dict()  # pure and deterministic
        assert nxt.experiments[: len(plan.experiments)] == plan.experiments
        new = nxt.experiments[len(plan.experiments):]
        assert {e.round for e in new} == {max(e.round for e in plan.experiments) + 1}
        assert [e.id for e in new] == list(range(len(plan.experiments), len(nxt.experiments)))
        keys = {(e.site, e.bit, e.index) for e in new}
        assert len(keys) == len(new) and not keys & seen  # never a fault twice
        seen |= keys
        assert sum(s.n for s in nxt.strata) == len(nxt.experiments)
        assert all(0 <= e.index < s.population for e in new for s in nxt.strata
                   if (s.site, s.bit) == (e.site, e.bit))
        _round_order_holds(nxt)
        plan, grown = nxt, grown + 1
    assert grown >= 1 and len(plan.experiments) < cap
    # the grown plan is a plan: it round-trips and keeps its design
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_extend_plan_stops_at_the_cap_and_needs_complete_rounds(model_file: Path) -> None:
    sites = [site("a", (500,))]
    plan = make_plan(model_file, sites, margin=0.02, confidence=0.95, design="adaptive", n_faults=200, seed=1)
    assert plan.requested == 200 and len(plan.experiments) == 5 * 32  # max(20% of 200, 5 per bit)
    coin = {b: 0.5 for b in range(32)}
    grown = extend_plan(plan, _rows(plan, coin))
    assert grown is not None and len(grown.experiments) == 200  # the rest of the cap in one round
    assert extend_plan(grown, _rows(grown, coin)) is None  # cap reached
    with pytest.raises(InternalError, match="every planned experiment"):
        extend_plan(plan, _rows(plan, coin)[:-1])
    with pytest.raises(InternalError):
        extend_plan(make_plan(model_file, sites, n_faults=10), [])


def test_plans_before_designs_load_as_per_stratum(model_file: Path) -> None:
    plan = make_plan(model_file, [site("a", (10,))], n_faults=20, design="per-stratum")
    old = plan.to_dict()
    del old["design"]
    old["version"] = 1
    back = Plan.from_dict(old)
    assert back.design == "per-stratum" and back.version == 1
    bad = plan.to_dict() | {"design": "lottery"}
    with pytest.raises(OnnxfiError, match="design"):
        Plan.from_dict(bad)


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


def test_plan_indices_are_a_sample_within_each_stratum(model_file: Path) -> None:
    """Exhaustive strata list every element once; sampled ones draw distinct indices, sorted within a round."""
    sites = [site("a", (7,)), site("b", (500,))]
    plan = make_plan(model_file, sites, bits=[3], n_faults=60, seed=9, design="per-stratum", rounds=1)
    idx_a = [e.index for e in plan.experiments if e.site == "a"]
    idx_b = [e.index for e in plan.experiments if e.site == "b"]
    assert idx_a == list(range(7))
    assert len(idx_b) == 53 and idx_b == sorted(idx_b) and len(set(idx_b)) == 53
    assert np.all(np.asarray(idx_b) < 500)
