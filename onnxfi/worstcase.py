"""Worst-case weight bit flips: a model and its eval data -> the fewest flips (found greedily, without
gradients) that bring the task metric below a target, in order, with the metric after each.

The search is the progressive bit search of bit-flip-attack papers (Rakin et al., ICCV 2019) with the
gradient ranking replaced by trial: each step evaluates a set of candidate single flips *on top of the flips
chosen so far*, each by running the whole faulty model on the eval data, and keeps the flip that lowers the
metric most; it repeats until the metric is below the target, ``max_flips`` are chosen, or no candidate
lowers it any more. The metric moves in steps of one sample, so many flips tie and a search can stand on a
plateau where no single flip changes a decision: for class scores, ties are broken by the mean softmax
probability of each sample's reference class (its label, else the fault-free top-1), and a flip that only
lowers that probability (at an equal metric) is taken too, the way the papers' loss gradient walks across
plateaus of accuracy.

Candidates per step (``candidates`` = K; deterministic for a given seed):

* half (rounded up) ranked by the size of the value change ``|new - old|`` of the flip (a flip to NaN/Inf
  counts as the largest; ties by site order, element, bit), taken round-robin over the selected weights so
  that every weight gets its largest changes: on float weights these are the high exponent bits of the
  elements with the largest magnitude;
* the rest drawn uniformly (without replacement) over every selected (site, element, bit) by a
  ``numpy.random.Generator`` seeded with ``seed``, a fresh draw each step.

When the whole space (less the flips already chosen) is no larger than K, every flip of it is a candidate.
A flip already chosen is never a candidate again (it would undo itself).

Faulty models are built exactly as ``onnxfi inject --from-plan`` replays them (:func:`onnxfi.ber.apply_flips`:
each element's storage word XORed with the mask of its flipped bits) and run as whole-model ONNX Runtime
sessions with full optimizations, in batches as ``onnxfi run`` runs them; the metric is
:func:`onnxfi.outcomes.output_metric` on the output :func:`onnxfi.scoring.choose_output` picks (accuracy
against labels; without labels, agreement with the fault-free decisions; mIoU for segmentation). So every
metric the search reports is the one ``onnxfi run`` measures on the replayed model.

Bit numbering is :mod:`onnxfi.bits`' (bit 0 least significant; float32 31 sign, 30..23 exponent).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxfi.ber import Flip, apply_flips, restore_weights
from onnxfi.bits import dtype_info, dtype_info_for_numpy, element_value, from_bits, to_bits
from onnxfi.data import Dataset
from onnxfi.errors import OnnxfiError, SessionError, first_line
from onnxfi.jsonvalues import number_or_text
from onnxfi.metrics import class_ids, softmax, top1
from onnxfi.model import LoadedModel
from onnxfi.outcomes import output_metric
from onnxfi.plan import BER_SITE, Experiment, Plan, file_sha256
from onnxfi.runtime import make_session, model_bytes, run_batches
from onnxfi.scoring import OutputChoice, choose_output
from onnxfi.sites import Site, SiteIndex

__all__ = [
    "WORST_CASE_SCHEMA",
    "LOWER_IS_WORSE",
    "default_bits",
    "candidate_flips",
    "WorstCaseStep",
    "WorstCase",
    "run_model",
    "reference_probability",
    "ModelMetric",
    "greedy_search",
    "find_worst_case",
    "worst_case_plan",
]

WORST_CASE_SCHEMA = "onnxfi.worst-case/1"
# metrics where a fault makes the value smaller: the ones a worst-case search can drive below a target
LOWER_IS_WORSE = frozenset({"accuracy", "golden_agreement", "miou", "seq_accuracy", "token_accuracy", "map50",
                            "map50_golden"})

Progress = Callable[[int, int, int, float], None]  # (flip number, candidates done, candidates, best metric so far)
Score = tuple[float, float]  # (the metric, the reference-class probability that breaks its ties; NaN: none)


def default_bits(site: Site) -> tuple[int, ...]:
    """The bits searched in ``site`` unless told: for floats the sign and the exponent bits (float32: 31,
    30..23), for integers the high byte (int8: every bit), most significant first."""
    info = dtype_info(site.dtype)
    if info.is_float and info.sign_bit is not None:
        return (info.sign_bit, *info.exponent_bits)
    return tuple(range(info.bits - 1, max(-1, info.bits - 9), -1))


def _site_bits(site: Site, bits: Sequence[int] | None) -> tuple[int, ...]:
    if bits is None:
        return default_bits(site)
    width = dtype_info(site.dtype).bits
    return tuple(sorted({int(b) for b in bits if 0 <= int(b) < width}, reverse=True))


def _changes(values: np.ndarray, bit: int) -> np.ndarray:
    """|new - old| of flipping ``bit`` in every element of ``values`` (flat), inf where the flip gives
    NaN/Inf or the value is not finite."""
    info = dtype_info_for_numpy(values.dtype)
    words = to_bits(values) ^ info.word.type(1 << bit)
    with np.errstate(invalid="ignore", over="ignore"):
        old = values.astype(np.float64)
        new = from_bits(words, values.dtype).astype(np.float64)
        d = np.abs(new - old)
    return np.where(np.isfinite(d), d, np.inf)


def _ranked(values: np.ndarray, bits: Sequence[int], k: int, exclude: set[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``k`` (element, bit) flips of one weight with the largest value change, largest first (ties:
    element, then bit), leaving out ``exclude``."""
    if k <= 0 or not bits or values.size == 0:
        return []
    per_bit = k + len(exclude)  # enough per bit for the k best after the excluded ones drop out
    rows: list[tuple[float, int, int]] = []
    for b in bits:
        ch = _changes(values, b)
        take = min(per_bit, ch.size)
        part = np.argpartition(-ch, take - 1)[:take] if take < ch.size else np.arange(ch.size)
        top = np.flatnonzero(ch >= ch[part].min())  # with every element tied at the cut: ties go by element
        top = top[np.lexsort((top, -ch[top]))][:per_bit]  # largest change first, then the lower element
        rows.extend((float(ch[e]), int(e), int(b)) for e in top.tolist())
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    out: list[tuple[int, int]] = []
    for _, e, b in rows:
        if (e, b) not in exclude:
            out.append((e, b))
            if len(out) == k:
                break
    return out


def candidate_flips(
    index: SiteIndex, sites: Sequence[Site], k: int, rng: np.random.Generator,
    bits: Sequence[int] | None = None, exclude: Sequence[Flip] = (),
) -> tuple[list[Flip], list[str]]:
    """One step's candidate flips over ``sites`` of the model behind ``index`` (its current weights) and
    where each came from (``change``: ranked by |new - old|; ``random``: the seeded draw; ``every``: the
    space is no larger than ``k``). See the module docstring. ``bits`` (None: :func:`default_bits`) is cut
    to each site's width; ``exclude`` (the flips already chosen) are never candidates."""
    if k < 1:
        raise OnnxfiError("the candidate budget must be at least 1")
    taken = set(exclude)
    spaces = [(s, _site_bits(s, bits), int(s.elements or 0)) for s in sites]
    total = sum(n * len(b) for _, b, n in spaces)
    excluded = sum(1 for f in taken if any(f[0] == s.name and f[2] in b for s, b, _ in spaces))
    if total - excluded <= k:
        flips = []
        for s, b, _ in spaces:
            values = np.asarray(index.weight_array(s)).reshape(-1)
            mine = {(e, bb) for name, e, bb in taken if name == s.name}
            flips += [(s.name, e, bb) for e, bb in _ranked(values, b, values.size * len(b), mine)]
        return flips, ["every"] * len(flips)
    k_ranked = (k + 1) // 2
    per_site = []
    for s, b, _ in spaces:
        values = np.asarray(index.weight_array(s)).reshape(-1)
        mine = {(e, bb) for name, e, bb in taken if name == s.name}
        per_site.append([(s.name, e, bb) for e, bb in _ranked(values, b, k_ranked, mine)])
    out: list[Flip] = []
    seen: set[Flip] = set()
    for r in range(k_ranked):  # round-robin: every weight's largest change, then every weight's second, ...
        for lst in per_site:
            if r < len(lst) and len(out) < k_ranked:
                out.append(lst[r])
        if len(out) >= k_ranked:
            break
    seen.update(out)
    source = ["change"] * len(out)
    # the seeded draw: distinct positions of the whole space (site-major, element, then the site's bits), in
    # the order drawn; a few more than needed, as some may be chosen flips or ranked candidates already
    want = k - len(out)
    sizes = np.array([n * len(b) for _, b, n in spaces], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    pos = rng.choice(total, size=min(total, want + len(taken) + len(out)), replace=False)
    for p in pos.tolist():
        if len(out) >= k:
            break
        i = int(np.searchsorted(starts, p, side="right") - 1)
        s, b, _ = spaces[i]
        local = p - int(starts[i])
        flip = (s.name, local // len(b), b[local % len(b)])
        if flip in seen or flip in taken:
            continue
        seen.add(flip)
        out.append(flip)
        source.append("random")
    return out, source


def run_model(loaded: LoadedModel, data: Dataset, batch: int, provider: str = "cpu",
              threads: int | None = None) -> dict[str, np.ndarray]:
    """Every output of the model behind ``loaded`` *as it is now* (weights included) on ``data``: a fresh
    whole-model session (full optimizations) run in ``batch``-sample batches, as ``onnxfi run`` runs a file.
    ONNX Runtime failing to build or run it is a :class:`~onnxfi.errors.SessionError`."""
    session = make_session(model_bytes(loaded.model), provider=provider, threads=threads)
    try:
        return run_batches(session, data, batch=batch)
    except OnnxfiError:  # the outputs over the memory budget: the user's to see, not a failed candidate
        raise
    except Exception as e:  # ORT raises its own types; a faulty model that fails to run is not a bug here
        raise SessionError(f"onnxruntime failed running the model: {first_line(e, limit=200)}") from None


def reference_probability(scores: np.ndarray, reference: np.ndarray) -> float:
    """The mean over samples of the softmax probability of each sample's ``reference`` class in class
    ``scores`` ``[N, C]`` (``[N, C, 1, 1]`` flattened); a row with NaN counts 0."""
    arr = np.asarray(scores)
    if arr.ndim == 4 and arr.shape[2:] == (1, 1):
        arr = arr.reshape(arr.shape[0], arr.shape[1])
    p = softmax(arr, axis=1)[np.arange(len(reference)), reference]
    return float(np.mean(np.nan_to_num(p, nan=0.0))) if p.size else math.nan


class ModelMetric:
    """The task metric of the model behind ``loaded`` as it is now (:func:`run_model`), scored on
    ``choice``'s output against the labels, else against ``golden`` (the fault-free outputs), with its
    tie-break: the :func:`reference_probability` for class scores (NaN for other outputs)."""

    def __init__(self, loaded: LoadedModel, data: Dataset, choice: OutputChoice, golden: Mapping[str, np.ndarray],
                 batch: int, provider: str = "cpu", threads: int | None = None) -> None:
        self.loaded, self.data, self.choice, self.golden = loaded, data, choice, golden
        self.batch, self.provider, self.threads = batch, provider, threads
        self.reference: np.ndarray | None = None
        if choice.layout == "classes":
            gold = np.asarray(golden[choice.name])
            self.reference = (class_ids(data.labels, choice.num_classes) if data.labels is not None
                              else top1(gold.reshape(gold.shape[0], -1)))

    def score(self, outputs: Mapping[str, np.ndarray]) -> Score:
        _, v = output_metric(self.choice.task, self.choice.layout, outputs, self.golden, self.choice.name,
                             self.data.labels)
        tie = math.nan if self.reference is None else reference_probability(outputs[self.choice.name], self.reference)
        return float(v), tie

    def __call__(self) -> Score:
        return self.score(run_model(self.loaded, self.data, self.batch, self.provider, self.threads))


@dataclass(frozen=True)
class WorstCaseStep:
    """One chosen flip: where (site, flat ``index``, ``coords``), which ``bit``, the element's value before and
    after, the metric with this and every earlier flip (and its tie-break, the reference-class probability;
    NaN when the output has none), the candidates evaluated for it and where the chosen one came from
    (``change``, ``random``, ``every``)."""

    site: str
    index: int
    coords: tuple[int, ...]
    bit: int
    dtype: str
    old: float
    new: float
    metric: float
    probability: float
    candidates: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "index": self.index, "coords": list(self.coords), "bit": self.bit,
                "dtype": self.dtype, "old_value": number_or_text(self.old), "new_value": number_or_text(self.new),
                "metric": self.metric, "ref_probability": self.probability, "candidates": self.candidates,
                "source": self.source}


@dataclass
class WorstCase:
    """A worst-case search's result (``to_dict`` is the JSON document's body)."""

    metric: str
    clean: float
    target: float
    steps: list[WorstCaseStep]
    runs: int  # whole-model runs over the eval data: the clean run and every candidate
    failed: int  # candidates whose faulty model ONNX Runtime could not build or run (left out)
    stop: str  # "target", "max-flips", "stalled" (no candidate lowered the metric) or "clean" (already below)
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    clean_probability: float = math.nan  # the clean model's tie-break (NaN: none)

    @property
    def final(self) -> float:
        return self.steps[-1].metric if self.steps else self.clean

    @property
    def reached(self) -> bool:
        return self.final < self.target

    def flips(self) -> list[Flip]:
        return [(s.site, s.index, s.bit) for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "clean": self.clean, "clean_ref_probability": self.clean_probability,
                "target": self.target, "final": self.final,
                "reached": self.reached, "n_flips": len(self.steps), "flips": [s.to_dict() for s in self.steps],
                "runs": self.runs, "failed_runs": self.failed, "stop": self.stop, "seconds": self.seconds,
                "settings": dict(self.settings)}


def _key(score: Score) -> tuple[float, float]:
    """The order of scores, worst first: the metric, then its tie-break (none: last)."""
    return score[0], score[1] if math.isfinite(score[1]) else math.inf


def greedy_search(
    index: SiteIndex, sites: Sequence[Site], evaluate: Callable[[], Score], clean: Score, target: float, *,
    candidates: int = 256, max_flips: int = 20, bits: Sequence[int] | None = None, seed: int = 0,
    progress: Progress | None = None,
) -> tuple[list[WorstCaseStep], int, int, str]:
    """The greedy search on the model behind ``index`` (its weights are changed in place: the chosen flips
    stay applied). ``evaluate()`` scores the model as it is now: (metric, tie-break), the tie-break NaN when
    there is none; ``clean`` is the score without flips. A step takes the candidate with the lowest metric,
    ties going to the lowest tie-break, then to the earlier candidate, when it is below the current score in
    that order; else the search has stalled. Returns the steps, the candidates evaluated, those that failed
    (ONNX Runtime could not build or run them), and why the search stopped."""
    if max_flips < 0:
        raise OnnxfiError("--max-flips must be 0 or more")
    rng = np.random.default_rng(seed)
    chosen: list[Flip] = []
    steps: list[WorstCaseStep] = []
    current, evaluated, failed = clean, 0, 0
    stop = "clean" if clean[0] < target else "max-flips"
    while current[0] >= target and len(steps) < max_flips:
        cands, source = candidate_flips(index, sites, candidates, rng, bits, chosen)
        best: tuple[Score, int] | None = None
        for i, flip in enumerate(cands):
            originals = apply_flips(index, [flip])
            try:
                score = evaluate()
            except SessionError:
                failed += 1
                score = (math.nan, math.nan)
            finally:
                restore_weights(index, originals)
            evaluated += 1
            if math.isfinite(score[0]) and (best is None or _key(score) < _key(best[0])):
                best = (score, i)
            if progress is not None:
                progress(len(steps) + 1, i + 1, len(cands), best[0][0] if best else math.nan)
        if best is None or not _key(best[0]) < _key(current):
            stop = "stalled"
            break
        score, i = best
        name, element, bit = cands[i]
        site = index.get(name)
        old = index.weight_array(site).reshape(-1)[element].copy()
        apply_flips(index, [cands[i]])
        new = index.weight_array(site).reshape(-1)[element].copy()
        shape = site.concrete_shape or ()
        coords = tuple(int(c) for c in np.unravel_index(element, shape)) if shape else ()
        chosen.append(cands[i])
        steps.append(WorstCaseStep(name, element, coords, bit, site.dtype_name, element_value(old), element_value(new), score[0],
                                   score[1], len(cands), source[i]))
        current = score
        stop = "target" if current[0] < target else "max-flips"
    return steps, evaluated, failed, stop


def find_worst_case(
    loaded: LoadedModel, index: SiteIndex, sites: Sequence[Site], data: Dataset, target: float, *,
    candidates: int = 256, max_flips: int = 20, bits: Sequence[int] | None = None, seed: int = 0,
    batch: int = 64, output: str | None = None, task: str | None = None, provider: str = "cpu",
    threads: int | None = None, progress: Progress | None = None,
) -> tuple[WorstCase, OutputChoice]:
    """The worst-case search on ``loaded`` (its weights end with the chosen flips applied) over the weight
    ``sites`` of ``index``, scored on ``data``; returns the result and the scored output's choice."""
    if not 0.0 < target <= 1.0:
        raise OnnxfiError(f"the target must lie in (0, 1], got {target}")
    if candidates < 1:
        raise OnnxfiError("--candidates must be at least 1")
    bad = [s.name for s in sites if s.kind != "weight" or not s.elements]
    if bad:
        raise OnnxfiError(f"worst-case flips stored weights with a known size; not {bad[0]}")
    t0 = time.perf_counter()
    golden = run_model(loaded, data, batch, provider, threads)
    choice = choose_output(golden, data.labels, output, task, samples=data.size)
    metric = ModelMetric(loaded, data, choice, golden, batch, provider, threads)
    name, _ = output_metric(choice.task, choice.layout, golden, golden, choice.name, data.labels)
    clean = metric.score(golden)
    if name not in LOWER_IS_WORSE:
        raise OnnxfiError(f"the scored output's metric is {name}, which faults raise: a worst-case search lowers "
                          f"a metric such as accuracy (use --output to score another output)")
    steps, evaluated, failed, stop = greedy_search(
        index, sites, metric, clean, target, candidates=candidates, max_flips=max_flips, bits=bits,
        seed=seed, progress=progress)
    settings = {"target": target, "candidates": candidates, "max_flips": max_flips,
                "bits": None if bits is None else list(bits), "seed": seed, "batch": batch,
                "sites": [s.name for s in sites]}
    result = WorstCase(name, clean[0], target, steps, 1 + evaluated, failed, stop, time.perf_counter() - t0,
                       settings, clean[1])
    return result, choice


def worst_case_plan(result: WorstCase, model_path: str | Path, sites: Sequence[Site],
                    bits: Sequence[int] | None = None) -> Plan:
    """A plan whose experiment k holds the first k + 1 flips of ``result`` as a bit-error-rate experiment
    with listed flips (``fault["flips"]``), so ``onnxfi inject MODEL --from-plan PLAN --experiment k`` writes
    the model with them (the last experiment: every flip)."""
    names = [s.name for s in sites]
    population = sum(int(s.elements or 0) * len(_site_bits(s, bits)) for s in sites)
    bit_list = None if bits is None else sorted({int(b) for b in bits})
    flips = [[n, e, b] for n, e, b in result.flips()]
    seed = int(result.settings.get("seed", 0))
    exps = [Experiment(k, BER_SITE, "weight", 0, None,
                       {"kind": "ber", "rate": (k + 1) / population if population else 0.0, "sites": list(names),
                        "bits": bit_list, "flips": [list(f) for f in flips[:k + 1]]}, seed)
            for k in range(len(flips))]
    return Plan(model=str(model_path), model_sha256=file_sha256(model_path), seed=seed, target="weights",
                faults=["flip"], bits=bit_list, mode="fixed", population=population, requested=len(exps),
                margin=None, confidence=0.99, p=0.5, strata=[], experiments=exps,
                options={"worst_case": {"metric": result.metric, "clean": result.clean, "target": result.target,
                                        "metrics": [s.metric for s in result.steps], "stop": result.stop}},
                design="proportional", fault_model="ber")
