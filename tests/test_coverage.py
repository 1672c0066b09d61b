"""Coverage of the summary's intervals, by simulation: thousands of campaigns drawn from a synthetic fault
space with known rates, for every design, per fault and per inference.

The fault space looks like a small CNN's: fp32 sites from a 10-element bias and a 64-element BatchNorm
vector to a 300,000-element convolution, 32 bits each. SDC rates per bit: 0 for the low mantissa bits,
rare (0.1% to 1%) for the high mantissa bits, small for the exponent, near 1 for bit 30, moderate for the
sign. An SDC changes a fraction of the eval inferences drawn from four levels (0.5% to 100%). A rarer flag
(overall ~0.2%) is simulated alongside. Outcomes are drawn per (site, bit) cell from the exact finite
population (hypergeometric: sampling without replacement), so no model runs.

The allocation is the plan's own (:func:`onnxfi.plan.systematic_allocation`, :func:`~onnxfi.plan.grouped_allocation`,
:func:`~onnxfi.plan.pilot_allocation`,
:func:`~onnxfi.plan.neyman_allocation`; round prefixes from a real :func:`~onnxfi.plan.make_plan`), and the
estimates are :func:`onnxfi.summary.estimate`, the function behind every rate of the summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from onnxfi.plan import (
    grouped_allocation,
    make_plan,
    neyman_allocation,
    pilot_allocation,
    stratum_of,
    systematic_allocation,
)
from onnxfi.sites import Site
from onnxfi.stats import Rate, leveugle_sample_size
from onnxfi.summary import estimate

CONF = 0.95
Z_TABLE = 1.960  # Leveugle's t for 95% (stats.leveugle_sample_size reads it to three decimals)
SITES = {"fc.bias": 10, "bn1": 64, "bn2": 128, "conv1": 1728, "fc": 5000, "conv2": 300_000}
BITS = 32
LEVELS = np.array([0.005, 0.05, 0.4, 1.0])  # fraction of eval inferences an SDC changes
MIN_COVERAGE = 0.94


class Space:
    """The synthetic fault space: per (site, bit) cell, the number of faults at each level (and not SDC).

    ``fragile``: a model whose exponent and high mantissa bits fail often (overall SDC ~23%), so an adaptive
    campaign needs rounds past its pilot.
    """

    def __init__(self, fragile: bool = False) -> None:
        names = list(SITES)
        self.site = np.repeat(np.arange(len(names)), BITS)
        self.bit = np.tile(np.arange(BITS), len(names))
        self.pop = np.array([SITES[names[s]] for s in self.site], dtype=np.int64)
        big = np.array([SITES[names[s]] >= 1000 for s in self.site])
        p = np.zeros(len(self.pop))
        hi_mant = (self.bit >= 18) & (self.bit <= 22)
        expo = (self.bit >= 23) & (self.bit <= 29)
        if fragile:
            p[(self.bit >= 12) & (self.bit <= 22)] = 0.05 * (self.bit[(self.bit >= 12) & (self.bit <= 22)] - 11) / 2
            p[expo] = 0.4 + 0.08 * (self.bit[expo] - 23)
        else:
            p[hi_mant] = np.where(big[hi_mant], 0.002 * (self.bit[hi_mant] - 17), 0.01)  # rare: 0.2% .. 1%
            p[expo] = 0.01 + 0.012 * (self.bit[expo] - 23)
        p[self.bit == 30] = np.where(big[self.bit == 30], 0.97, 1.0)  # near 1
        p[self.bit == 31] = np.where(big[self.bit == 31], 0.3, 0.55)
        sdc = np.round(p * self.pop).astype(np.int64)
        # level mix: bit 30 mostly changes everything; other bits mostly a few inferences
        mix = np.where((self.bit == 30)[:, None], [0.05, 0.1, 0.25, 0.6], [0.5, 0.3, 0.15, 0.05])
        levels = np.floor(mix * sdc[:, None]).astype(np.int64)
        levels[:, 0] += sdc - levels.sum(1)
        self.counts = np.concatenate([levels, (self.pop - sdc)[:, None]], axis=1)  # (cells, 4 levels + clean)
        rare_p = np.where(self.bit == 30, np.where(big, 0.05, 0.2), 0.0)  # e.g. DUE: only the top exponent bit
        self.rare = np.round(rare_p * self.pop).astype(np.int64)
        self.sdc_rate = float(sdc.sum() / self.pop.sum())
        self.per_inference = float((levels * LEVELS).sum() / self.pop.sum())
        self.rare_rate = float(self.rare.sum() / self.pop.sum())
        self.neyman = self.bit  # one Neyman stratum per bit (one fault model)


SPACE = Space()
FRAGILE = Space(fragile=True)


def test_the_space_has_what_the_test_claims() -> None:
    assert 0.03 < SPACE.sdc_rate < 0.06 and 0.0005 < SPACE.rare_rate < 0.003
    assert 0.2 < FRAGILE.sdc_rate < 0.4
    for space in (SPACE, FRAGILE):
        assert 0 < space.per_inference < space.sdc_rate
        assert space.pop.max() / space.pop.min() == 30_000


class Sample:
    """What one campaign drew: per cell, n and the sums the estimator needs."""

    def __init__(self, space: Space) -> None:
        self.space = space
        cells = len(space.pop)
        self.left = space.counts.copy()
        self.rare_left = space.rare.copy()
        self.n = np.zeros(cells)
        self.k = np.zeros(cells)
        self.y = np.zeros(cells)
        self.y2 = np.zeros(cells)
        self.rare = np.zeros(cells)

    def draw(self, rng: np.random.Generator, m: np.ndarray) -> None:
        """``m[c]`` more faults of cell c, without replacement."""
        left_total = self.left.sum(1)
        rare = rng.hypergeometric(self.rare_left, left_total - self.rare_left, m)
        todo = m.copy()
        got = np.zeros_like(self.left)
        rest = left_total.copy()
        for lvl in range(self.left.shape[1] - 1):
            rest -= self.left[:, lvl]
            got[:, lvl] = rng.hypergeometric(self.left[:, lvl], rest, todo)
            todo -= got[:, lvl]
        got[:, -1] = todo
        self.left -= got
        self.rare_left -= rare
        sdc = got[:, :-1]
        self.n += m
        self.k += sdc.sum(1)
        self.y += sdc @ LEVELS
        self.y2 += sdc @ (LEVELS**2)
        self.rare += rare

    def rates(self, design: str, strata: np.ndarray) -> tuple[Rate, Rate, Rate]:
        pop = self.space.pop.astype(np.float64)
        return (estimate(design, self.n, self.k, self.k, pop, strata, CONF),
                estimate(design, self.n, self.y, self.y2, pop, strata, CONF, binary=False),
                estimate(design, self.n, self.rare, self.rare, pop, strata, CONF))


def _coverage(campaign: Callable[[np.random.Generator], tuple[Rate, Rate, Rate]], runs: int, seed: int,
              space: Space = SPACE) -> tuple[dict[str, float], list[tuple[Rate, Rate, Rate]]]:
    rng = np.random.default_rng(seed)
    got = [campaign(rng) for _ in range(runs)]
    truth = (space.sdc_rate, space.per_inference, space.rare_rate)
    names = ("per fault", "per inference", "rare flag")
    cover = {name: float(np.mean([r[i].lo <= truth[i] <= r[i].hi for r in got])) for i, name in enumerate(names)}
    return cover, got


def _assert_covers(cover: dict[str, float], label: str) -> None:
    print(label, {k: round(v, 4) for k, v in cover.items()})
    for name, c in cover.items():
        assert c >= MIN_COVERAGE, (label, name, c)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cov") / "m.onnx"
    p.write_bytes(b"make_plan only hashes it")
    return p


def _sites() -> list[Site]:
    return [Site(name, "weight", ir.DataType.FLOAT, (size,), "initializer", ("Conv",), ("conv",), tensor_name=name)
            for name, size in SITES.items()]


def _round_prefix(plan_path: Path, rounds_kept: int, **kw: object) -> np.ndarray:
    """Faults per cell in the first ``rounds_kept`` rounds of a real plan over the synthetic sites."""
    plan = make_plan(plan_path, _sites(), seed=3, **kw)  # type: ignore[arg-type]
    cell = stratum_of(plan)
    keep = np.array([e.round < rounds_kept for e in plan.experiments])
    return np.bincount(cell[keep], minlength=len(plan.strata)).astype(np.int64)


# ------------------------------------------------------------------------------------------ designs


def test_proportional_design_covers_and_keeps_the_leveugle_promise() -> None:
    n = leveugle_sample_size(int(SPACE.pop.sum()), 0.03, CONF)
    one = np.zeros(len(SPACE.pop), dtype=np.int64)

    def campaign(rng: np.random.Generator) -> tuple[Rate, Rate, Rate]:
        s = Sample(SPACE)
        s.draw(rng, systematic_allocation(SPACE.pop, n, rng))
        return s.rates("proportional", one)

    cover, got = _coverage(campaign, 2000, 1)
    _assert_covers(cover, f"proportional n={n}")
    # the interval is what Leveugle's formula promises at the observed rate, within 20%
    N = int(SPACE.pop.sum())
    for r, _, _ in got:
        promised = Z_TABLE * math.sqrt(r.rate * (1 - r.rate) / n * (N - n) / (N - 1))
        assert 0.8 <= r.half_width / promised <= 1.2, (r, promised)


def test_proportional_round_prefix_covers(model_file: Path) -> None:
    """A campaign killed after 3 of its 20 rounds: the complete rounds are a proportional sample."""
    n = 1000
    plan = make_plan(model_file, _sites(), n_faults=n, seed=3)
    rounds = [e.round for e in plan.experiments]
    assert max(rounds) + 1 == 20
    kept = sum(1 for r in rounds if r < 3)
    one = np.zeros(len(SPACE.pop), dtype=np.int64)

    def campaign(rng: np.random.Generator) -> tuple[Rate, Rate, Rate]:
        s = Sample(SPACE)
        full = systematic_allocation(SPACE.pop, n, rng)
        s.draw(rng, rng.multivariate_hypergeometric(full, kept))  # the first rounds: a random part of the sample
        return s.rates("proportional", one)

    cover, _ = _coverage(campaign, 2000, 2)
    _assert_covers(cover, f"proportional, {kept} of {n} (3 of 20 rounds)")


@pytest.mark.parametrize(("per", "rounds_kept"), [(10, None), (10, 3), (4, None)])
def test_per_stratum_design_covers(model_file: Path, per: int, rounds_kept: int | None) -> None:
    alloc = _round_prefix(model_file, 10**6 if rounds_kept is None else rounds_kept, per_stratum=per)
    assert alloc.min() >= 1  # every cell is in the first round
    cells = np.arange(len(SPACE.pop))

    def campaign(rng: np.random.Generator) -> tuple[Rate, Rate, Rate]:
        s = Sample(SPACE)
        s.draw(rng, alloc)
        return s.rates("per-stratum", cells)

    cover, _ = _coverage(campaign, 1000, 3)
    _assert_covers(cover, f"per-stratum {per}/cell, {int(alloc.sum())} faults")


@pytest.mark.parametrize(("fragile", "margin"), [(False, 0.01), (False, 0.005), (True, 0.02), (True, 0.01)])
def test_adaptive_design_covers_and_saves_faults(fragile: bool, margin: float) -> None:
    space = FRAGILE if fragile else SPACE
    N = int(space.pop.sum())
    cap = leveugle_sample_size(N, margin, CONF)
    ney_pop = np.bincount(space.neyman, weights=space.pop).astype(np.int64)
    sizes: list[float] = []
    rounds: list[int] = []

    def split(rng: np.random.Generator, s: Sample, per_stratum: np.ndarray) -> np.ndarray:
        """A round's faults per Neyman stratum over its sites, in proportion to the faults each has left."""
        return grouped_allocation(space.pop - s.n.astype(np.int64), space.neyman, per_stratum, rng)

    def campaign(rng: np.random.Generator) -> tuple[Rate, Rate, Rate]:
        s = Sample(space)
        s.draw(rng, split(rng, s, pilot_allocation(ney_pop, cap, rng)))
        count = 1
        while True:
            head = estimate("adaptive", s.n, s.k, s.k, space.pop.astype(np.float64), space.neyman, CONF)
            if head.half_width <= margin or s.n.sum() >= cap:
                break
            n_h = np.bincount(space.neyman, weights=s.n).astype(np.int64)
            k_h = np.bincount(space.neyman, weights=s.k)
            add = neyman_allocation(ney_pop, n_h, k_h, margin, CONF, cap - int(s.n.sum()), rng)
            if add.sum() == 0:
                break
            s.draw(rng, split(rng, s, add))
            count += 1
        sizes.append(float(s.n.sum()))
        rounds.append(count)
        return s.rates("adaptive", space.neyman)

    cover, got = _coverage(campaign, 3000 if fragile else 1000, 4, space)
    _assert_covers(cover, f"adaptive {'fragile' if fragile else 'cnn'} margin {margin}: mean {np.mean(sizes):.0f} "
                   f"faults of cap {cap}, mean rounds {np.mean(rounds):.2f}")
    # the margin is met, with fewer faults than a proportional campaign of the Leveugle size
    assert np.mean([r.half_width <= margin for r, _, _ in got]) >= 0.99
    assert np.mean(sizes) < 0.6 * cap
    if fragile:  # the pilot is not enough: Neyman rounds follow
        assert np.mean(rounds) >= 2
