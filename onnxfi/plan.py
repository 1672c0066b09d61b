"""Campaign plans: which faults to inject where, sampled per (site, bit) stratum; seeded, saved as JSON, replayable.

Sizing: a fixed number of faults, or Leveugle et al. (DATE 2009)
``n = N / (1 + e^2 (N - 1) / (t^2 p (1 - p)))`` for margin ``e`` at a confidence (``t`` its two-sided
normal quantile), or every fault when the space is no larger than the sample. The sample is spread
over strata (one per site and bit, or per site for value faults) equally, capped at each stratum's
population, so every layer and bit gets its own estimate; overall rates weight strata by population.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxfi.bits import dtype_info
from onnxfi.errors import OnnxfiError
from onnxfi.faults import BitFault, BitFlip, BurstFlip, Fault, StuckAt, fault_from_dict, parse_fault
from onnxfi.sites import Site
from onnxfi.stats import leveugle_sample_size

__all__ = [
    "Experiment",
    "Stratum",
    "Plan",
    "make_plan",
    "left_out_note",
    "parse_bits",
    "file_sha256",
    "PLAN_VERSION",
]

PLAN_VERSION = 1


@dataclass(frozen=True)
class Experiment:
    """One fault: ``fault`` at element ``index`` of ``site`` (per image for batched activations)."""

    id: int
    site: str
    kind: str
    index: int
    bit: int | None
    fault: dict[str, Any]
    seed: int
    round: int = 0

    def fault_obj(self) -> Fault:
        return fault_from_dict(self.fault)


@dataclass(frozen=True)
class Stratum:
    site: str
    kind: str
    bit: int | None
    fault: str
    population: int
    n: int


@dataclass
class Plan:
    """Everything needed to rerun a campaign exactly: the model's hash, the options, every experiment."""

    model: str
    model_sha256: str
    seed: int
    target: str
    faults: list[str]
    bits: list[int] | None
    mode: str
    population: int
    requested: int
    margin: float | None
    confidence: float
    p: float
    strata: list[Stratum]
    experiments: list[Experiment]
    options: dict[str, Any] = field(default_factory=dict)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        try:
            strata = [Stratum(**s) for s in d["strata"]]
            exps = [Experiment(**e) for e in d["experiments"]]
            rest = {k: v for k, v in d.items() if k not in ("strata", "experiments")}
            return cls(strata=strata, experiments=exps, **rest)
        except (KeyError, TypeError) as e:
            raise OnnxfiError(f"not an onnxfi plan ({e})") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), separators=(",", ":")))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        p = Path(path)
        if not p.is_file():
            raise OnnxfiError(f"plan file not found: {p}")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except json.JSONDecodeError as e:
            raise OnnxfiError(f"{p}: not a JSON plan ({e})") from None

    def experiment(self, exp_id: int) -> Experiment:
        if 0 <= exp_id < len(self.experiments) and self.experiments[exp_id].id == exp_id:
            return self.experiments[exp_id]
        for e in self.experiments:
            if e.id == exp_id:
                return e
        raise OnnxfiError(f"no experiment {exp_id} in the plan (0..{len(self.experiments) - 1})")


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_bits(text: str | None) -> list[int] | None:
    """``"23-30"``, ``"31,30,23-25"`` -> sorted bit list; ``None``/``"all"`` -> every bit of each site."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    bits: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    lo, hi = hi, lo
                bits.update(range(lo, hi + 1))
            else:
                bits.add(int(part))
        except ValueError:
            raise OnnxfiError(f"bad --bits {text!r}: use e.g. 23-30 or 31,30") from None
    if any(b < 0 for b in bits):
        raise OnnxfiError(f"bad --bits {text!r}: bits are >= 0")
    return sorted(bits)


def _template(spec: str) -> Fault:
    """A fault spec as a template; bit faults get their bit per experiment."""
    name = spec.split(":", 1)[0].lower()
    if name in ("flip", "stuck-0", "stuck-1", "burst") and ":" not in spec:
        return parse_fault(spec, (0,))
    if name == "burst":
        return parse_fault(spec, (0,))
    return parse_fault(spec)


def _with_bit(template: Fault, bit: int) -> Fault:
    if isinstance(template, BurstFlip):
        return BurstFlip(bit, template.length)
    if isinstance(template, StuckAt):
        return StuckAt((bit,), template.value)
    if isinstance(template, BitFlip):
        return BitFlip((bit,))
    return template


def _allocate(populations: Sequence[int], total: int, rng: np.random.Generator) -> list[int]:
    """Spread ``total`` over strata as evenly as possible, never above a stratum's population.

    When the sample is smaller than the number of strata, which strata get the remainder is drawn
    at random (seeded), so no site or bit is favoured by its position in the model.
    """
    n = [0] * len(populations)
    remaining = min(total, sum(populations))
    open_ = [i for i, p in enumerate(populations) if p > 0]
    while remaining > 0 and open_:
        share = remaining // len(open_)
        if share == 0:
            for i in rng.permutation(open_)[:remaining].tolist():
                n[i] += 1
            break
        still = []
        for i in open_:
            take = min(share, populations[i] - n[i])
            n[i] += take
            remaining -= take
            if n[i] < populations[i]:
                still.append(i)
        open_ = still
    return n


def left_out_note(names: Sequence[str]) -> str:
    """One line naming the sites a plan left out because their shapes are unknown."""
    return (f"left out {len(names)} site(s) whose shape static inference cannot tell (e.g. {names[0]}); "
            "--input-shape may fix them")


def make_plan(
    model_path: str | os.PathLike[str],
    sites: Sequence[Site],
    faults: Sequence[str] = ("flip",),
    bits: Sequence[int] | None = None,
    n_faults: int | None = None,
    margin: float | None = None,
    confidence: float = 0.99,
    p: float = 0.5,
    seed: int = 0,
    target: str = "weights",
    rounds: int = 1,
    options: dict[str, Any] | None = None,
) -> Plan:
    """Sample a campaign over ``sites``. Give ``n_faults``, or ``margin`` (Leveugle sizing)."""
    if not sites:
        raise OnnxfiError("no fault sites match the selection")
    unknown = [s.name for s in sites if s.elements is None]
    if len(unknown) == len(sites):
        raise OnnxfiError(
            f"{len(unknown)} site(s) have unknown shapes (e.g. {unknown[0]}); give --input-shape for dynamic inputs"
        )
    if unknown:  # sites whose shape static inference cannot tell are left out; the plan says which
        sites = [s for s in sites if s.elements is not None]
        options = {**(options or {}), "left_out_unknown_shape": unknown}
    if n_faults is not None and n_faults < 1:
        raise OnnxfiError("--faults must be at least 1")
    templates = [(spec, _template(spec)) for spec in faults]
    strata_keys: list[tuple[Site, int | None, str, Fault]] = []
    for site in sites:
        info = dtype_info(site.dtype)
        for spec, tmpl in templates:
            if isinstance(tmpl, BitFault):
                site_bits = [b for b in (bits if bits is not None else range(info.bits)) if b < info.bits]
                if isinstance(tmpl, BurstFlip):
                    site_bits = [b for b in site_bits if b + tmpl.length <= info.bits]
                for b in site_bits:
                    strata_keys.append((site, b, spec, tmpl))
            else:
                tmpl.check(info)
                strata_keys.append((site, None, spec, tmpl))
    if not strata_keys:
        raise OnnxfiError("no fault fits the selected sites and bits (bits beyond the dtypes?)")
    pops = [int(s.elements or 0) for s, _, _, _ in strata_keys]
    population = sum(pops)
    if n_faults is not None:
        requested, mode = n_faults, "fixed"
    elif margin is not None:
        requested, mode = leveugle_sample_size(population, margin, confidence, p), "statistical"
    else:
        raise OnnxfiError("give --faults N or --margin E")
    if requested >= population:
        mode, requested = "exhaustive", population
    rng = np.random.default_rng(seed)
    alloc = _allocate(pops, requested, rng)
    experiments: list[Experiment] = []
    strata: list[Stratum] = []
    rows: list[tuple[int, int, Experiment]] = []
    for (site, bit, spec, tmpl), pop, n in zip(strata_keys, pops, alloc):
        strata.append(Stratum(site.name, site.kind, bit, spec, pop, n))
        if n == 0:
            continue
        idx = np.arange(pop) if n == pop else np.sort(rng.choice(pop, size=n, replace=False))
        fault = _with_bit(tmpl, bit) if bit is not None else tmpl
        seeds = rng.integers(0, 2**31 - 1, size=n)
        for j, (i, s) in enumerate(zip(idx.tolist(), seeds.tolist())):
            r = (j * rounds) // n
            rows.append((r, len(rows), Experiment(0, site.name, site.kind, int(i), bit, fault.to_dict(), int(s), r)))
    # Round-major order keeps early rounds representative (for early stop); sites stay grouped within a round.
    rows.sort(key=lambda t: (t[0], t[1]))
    for new_id, (_, _, e) in enumerate(rows):
        experiments.append(Experiment(new_id, e.site, e.kind, e.index, e.bit, e.fault, e.seed, e.round))
    return Plan(
        model=str(model_path), model_sha256=file_sha256(model_path), seed=seed, target=target,
        faults=list(faults), bits=list(bits) if bits is not None else None, mode=mode,
        population=population, requested=requested, margin=margin, confidence=confidence, p=p,
        strata=strata, experiments=experiments, options=dict(options or {}),
    )
