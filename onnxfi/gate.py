"""CI gate: a gate config (TOML) + a campaign summary -> checks (measured, upper bound, limit) -> pass/fail, JUnit.

This module only reads configs and evaluates summaries (no engine, no ONNX Runtime); running the
configured campaign is :func:`onnxfi.gate_campaign.run_gate`.

A config is the ``[gate]`` table of an ``onnxfi.toml`` or the ``[tool.onnxfi.gate]`` table of a
``pyproject.toml``. Paths in it are relative to the file that holds it. Rate checks use the *upper*
end of a one-sided bound at ``thresholds.confidence`` (default 0.95) on the campaign's headline estimate
(:func:`onnxfi.summary.aggregate`'s ``rates``: the estimator that matches the plan's design, over the
complete rounds): a rate passes only when the campaign shows, at that confidence, that it is no higher
than the limit. The summary a gate evaluates is computed at two-sided confidence ``2 c - 1``, whose upper
end is the one-sided bound at ``c``. So a gate needs enough faults for its limits: the report gives every
bound, so a limit can be set from a measured run.

Checks, each with a name, the measured value, its bound, the limit and a one-line message:

- ``rate.<r>``: overall per-fault rate ``r`` (sdc1, sdc5, critical, due, crash) vs ``[gate.thresholds] r``;
- ``rate.sdc1_per_inference``: the fraction of eval inferences whose top-1 decision a fault changes
  (population mean over faults) vs ``[gate.thresholds] sdc1_per_inference``;
- ``layer.<site>.<r>``: the same per layer, for the layers matched by a ``[gate.layers]`` regex;
- ``clean.min`` / ``clean.drop``: the fault-free metric vs a floor, or its drop from a reference value
  (the baseline's clean value, else ``clean_reference``). Both need labelled eval data: without labels the
  clean run is scored against itself (always 1.0), a check that cannot fail, so the config is refused;
- ``baseline.<r>``: the rate's bound vs the baseline's rate plus the allowed delta.

``[gate] output`` names the model output that carries the decision (as ``analyze --output``); without it
the output is chosen from the evidence (labels, shapes) and the choice is reported in ``clean``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxfi.errors import OnnxfiError, first_line
from onnxfi.outcomes import FAILURE_FLAGS, FLAG_LABELS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "GATE_SCHEMA",
    "PlanSpec",
    "LayerRule",
    "BaselineSpec",
    "GateConfig",
    "Check",
    "GateResult",
    "find_config",
    "load_config",
    "config_from_dict",
    "summary_confidence",
    "needs_labels",
    "unlabelled_error",
    "PER_INFERENCE",
    "load_baseline",
    "evaluate",
    "junit_xml",
    "write_junit",
]

GATE_SCHEMA = "onnxfi.gate/1"
_BASELINE_SCHEMAS = ("onnxfi.gate/1", "onnxfi.analyze/1", "onnxfi.results/1")

_GATE_KEYS = {"model", "data", "data_loader", "samples", "provider", "threads", "workers", "db", "plan", "thresholds",
              "layers", "baseline", "clean_reference", "input_shapes", "output", "task", "batch", "mode"}
_PLAN_KEYS = {"target", "bits", "faults", "margin", "confidence", "p", "seed", "sites", "ops", "fault", "critical",
              "design", "per_stratum", "fault_model"}
# the per-inference rate: the mean fraction of eval inferences whose decision one fault changes
PER_INFERENCE = "sdc1_per_inference"
_RATE_KEYS = (*FAILURE_FLAGS, PER_INFERENCE)
_THRESHOLD_KEYS = set(_RATE_KEYS) | {"clean_min", "clean_drop", "confidence"}
_BASELINE_KEYS = set(_RATE_KEYS) | {"file", "clean_drop"}
_DESIGNS = ("proportional", "per-stratum", "adaptive")


@dataclass(frozen=True)
class PlanSpec:
    """The campaign a gate runs (the options of ``onnxfi analyze``)."""

    target: str = "weights"
    bits: str | None = None
    faults: int | None = None
    margin: float | None = None
    confidence: float = 0.99
    p: float = 0.5
    seed: int = 0
    sites: str | None = None
    ops: tuple[str, ...] = ()
    fault: tuple[str, ...] = ("flip",)
    critical: float = 0.01
    design: str = "proportional"
    per_stratum: int | None = None
    fault_model: str = "persistent"  # or "transient": one activation element of one inference


@dataclass(frozen=True)
class LayerRule:
    """Limits for every layer (fault site) whose name fully matches ``pattern``."""

    pattern: str
    limits: Mapping[str, float]


@dataclass(frozen=True)
class BaselineSpec:
    """A previous ``gate --json`` or ``analyze --json`` report, and how much worse a rate may get."""

    file: Path
    deltas: Mapping[str, float]
    clean_drop: float | None = None


@dataclass(frozen=True)
class GateConfig:
    source: str
    model: str | None = None
    data: str | None = None
    data_loader: str | None = None  # PATH.py[:FUNC] (onnxfi.data.load_loader), PATH absolute; exclusive with data
    samples: int = 16
    provider: str = "cpu"
    threads: int | None = None
    workers: int | None = None  # None: one per core (onnxfi.campaign.auto_workers)
    batch: int = 256
    db: str | None = None
    output: str | None = None
    task: str | None = None
    mode: str | None = None
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    plan: PlanSpec = field(default_factory=PlanSpec)
    limits: Mapping[str, float] = field(default_factory=dict)
    clean_min: float | None = None
    clean_drop: float | None = None
    clean_reference: float | None = None
    confidence: float = 0.95
    layers: tuple[LayerRule, ...] = ()
    baseline: BaselineSpec | None = None

    def has_checks(self) -> bool:
        return bool(self.limits or self.layers or self.baseline or self.clean_min is not None
                    or self.clean_drop is not None)


@dataclass(frozen=True)
class Check:
    """One gate check. ``bound`` is the rate's upper confidence bound (None for clean-metric checks)."""

    name: str
    kind: str
    measured: float
    bound: float | None
    limit: float
    passed: bool
    message: str
    k: int | None = None
    n: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "measured": _num(self.measured), "bound": _num(self.bound),
                "limit": _num(self.limit), "passed": self.passed, "message": self.message, "k": self.k,
                "n": self.n}


@dataclass
class GateResult:
    """The verdict and what it was computed from (a gate --json document via :meth:`to_dict`)."""

    model: str
    config: GateConfig
    checks: list[Check]
    summary: dict[str, Any]
    clean: dict[str, Any]
    plan: dict[str, Any] = field(default_factory=dict)
    db: str | None = None
    reused: int = 0
    executed: int = 0
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and not self.interrupted

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": GATE_SCHEMA, "verdict": "pass" if self.passed else "fail", "passed": self.passed,
            "model": self.model, "config": self.config.source, "confidence": self.config.confidence,
            "checks": [c.to_dict() for c in self.checks], "warnings": list(self.warnings), "db": self.db,
            "reused": self.reused, "executed": self.executed, "elapsed_s": round(self.elapsed_s, 3),
            "interrupted": self.interrupted, "plan": self.plan, "clean": self.clean, "summary": self.summary,
        }


def _num(v: float | None) -> float | str | None:
    if v is None:
        return None
    return float(v) if math.isfinite(v) else str(v)


# ---------------------------------------------------------------------------------------------- config


def find_config(path: str | os.PathLike[str] | None = None, cwd: str | os.PathLike[str] = ".") -> Path:
    """``path`` if given, else ``./onnxfi.toml``, else ``./pyproject.toml`` when it has ``[tool.onnxfi.gate]``."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise OnnxfiError(f"gate config not found: {p}")
        return p
    here = Path(cwd)
    if (here / "onnxfi.toml").is_file():
        return here / "onnxfi.toml"
    py = here / "pyproject.toml"
    if py.is_file() and _gate_table(_read_toml(py), py, strict=False) is not None:
        return py
    raise OnnxfiError("no gate config: give --config FILE, or add onnxfi.toml ([gate]) or "
                      "[tool.onnxfi.gate] in pyproject.toml")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise OnnxfiError(f"{path}: not valid TOML ({first_line(e, limit=200)})") from None
    except OSError as e:
        raise OnnxfiError(f"{path}: cannot read ({e.strerror})") from None


def _gate_table(doc: dict[str, Any], path: Path, strict: bool = True) -> dict[str, Any] | None:
    tool = doc.get("tool", {}).get("onnxfi", {}) if isinstance(doc.get("tool"), dict) else {}
    table = tool.get("gate") if isinstance(tool, dict) else None
    if table is None and path.name != "pyproject.toml":
        table = doc.get("gate")
    if table is None and strict:
        where = "[tool.onnxfi.gate]" if path.name == "pyproject.toml" else "[gate] (or [tool.onnxfi.gate])"
        raise OnnxfiError(f"{path}: no {where} table")
    if table is not None and not isinstance(table, dict):
        raise OnnxfiError(f"{path}: the gate entry must be a table")
    return table


def load_config(path: str | os.PathLike[str]) -> GateConfig:
    """Read the gate table of an ``onnxfi.toml`` or ``pyproject.toml``."""
    p = Path(path)
    table = _gate_table(_read_toml(p), p)
    assert table is not None
    return config_from_dict(table, p.resolve().parent, str(p))


def _unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    bad = sorted(set(table) - known)
    if bad:
        raise OnnxfiError(f"{where}: unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")


def _float(v: Any, where: str, lo: float = 0.0, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise OnnxfiError(f"{where} must be a number, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise OnnxfiError(f"{where} must be in [{lo}, {hi if hi is not None else 'inf'}], got {v!r}")
    return float(v)


def _int(v: Any, where: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise OnnxfiError(f"{where} must be an integer >= {lo}, got {v!r}")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise OnnxfiError(f"{where} must be a non-empty string, got {v!r}")
    return v


def _str_list(v: Any, where: str) -> tuple[str, ...]:
    if isinstance(v, str):
        return tuple(s.strip() for s in v.split(",") if s.strip())
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return tuple(v)
    raise OnnxfiError(f"{where} must be a string or a list of strings, got {v!r}")


def _rate_limits(table: Mapping[str, Any], where: str, keys: Sequence[str] = _RATE_KEYS) -> dict[str, float]:
    return {k: _float(table[k], f"{where}.{k}", 0.0, 1.0) for k in keys if k in table}


def _path(v: Any, where: str, base: Path) -> str:
    text = _str(v, where)
    p = Path(text).expanduser()
    if p.is_absolute():
        return str(p)
    candidate = base / p
    bare = "/" not in text and os.sep not in text and not text.endswith((".onnx", ".npz", ".json", ".db"))
    return text if bare and not candidate.exists() else os.path.normpath(candidate)  # a bare name: a zoo model


def _loader_path(v: Any, where: str, base: Path) -> str:
    """``PATH.py[:FUNC]`` with PATH made absolute against ``base`` (the config's folder); FUNC kept."""
    text = _str(v, where)
    head, sep, tail = text.rpartition(":")
    path, func = (head, sep + tail) if sep and head.endswith(".py") else (text, "")
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else os.path.normpath(base / p)) + func


def _plan_spec(table: Any, where: str) -> PlanSpec:
    if not isinstance(table, dict):
        raise OnnxfiError(f"{where} must be a table")
    _unknown(table, _PLAN_KEYS, where)
    bits = table.get("bits")
    if isinstance(bits, list):
        bits = ",".join(str(_int(b, f"{where}.bits")) for b in bits)
    elif bits is not None:
        bits = _str(str(bits), f"{where}.bits")
    faults = _int(table["faults"], f"{where}.faults", 1) if "faults" in table else None
    margin = _float(table["margin"], f"{where}.margin", 0.0, 1.0) if "margin" in table else None
    if faults is not None and margin is not None:
        raise OnnxfiError(f"{where}: give faults or margin, not both")
    fault_model = table.get("fault_model", "persistent")
    if fault_model not in ("persistent", "transient"):
        raise OnnxfiError(f"{where}.fault_model must be persistent or transient, got {fault_model!r}")
    target = table.get("target", "activations" if fault_model == "transient" else "weights")
    if target not in ("weights", "activations", "all"):
        raise OnnxfiError(f"{where}.target must be weights, activations or all, got {target!r}")
    per_stratum = _int(table["per_stratum"], f"{where}.per_stratum", 1) if "per_stratum" in table else None
    design = table.get("design", "per-stratum" if per_stratum is not None else "proportional")
    if design not in _DESIGNS:
        raise OnnxfiError(f"{where}.design must be one of {', '.join(_DESIGNS)}, got {design!r}")
    if per_stratum is not None and design != "per-stratum":
        raise OnnxfiError(f"{where}: per_stratum is the per-stratum design's size; design is {design!r}")
    if design == "adaptive" and faults is not None:
        raise OnnxfiError(f"{where}: the adaptive design is sized by margin, not faults")
    if per_stratum is not None and (faults is not None or margin is not None):
        raise OnnxfiError(f"{where}: give per_stratum, faults or margin, not several")
    return PlanSpec(
        target=target, bits=bits, faults=faults, margin=margin if faults is None else None,
        confidence=_float(table.get("confidence", 0.99), f"{where}.confidence", 0.0, 1.0),
        p=_float(table.get("p", 0.5), f"{where}.p", 0.0, 1.0),
        seed=_int(table.get("seed", 0), f"{where}.seed"),
        sites=_str(table["sites"], f"{where}.sites") if "sites" in table else None,
        ops=_str_list(table["ops"], f"{where}.ops") if "ops" in table else (),
        fault=_str_list(table.get("fault", ["flip"]), f"{where}.fault") or ("flip",),
        critical=_float(table.get("critical", 0.01), f"{where}.critical", 0.0),
        design=design, per_stratum=per_stratum, fault_model=fault_model,
    )


def config_from_dict(table: Mapping[str, Any], base_dir: str | os.PathLike[str] = ".", source: str = "<dict>") -> GateConfig:
    """Validate a gate table (as read from TOML); relative paths are taken from ``base_dir``."""
    base = Path(base_dir)
    w = "[gate]"
    _unknown(table, _GATE_KEYS, w)
    limits: dict[str, float] = {}
    clean_min = clean_drop = None
    confidence = 0.95
    th = table.get("thresholds", {})
    if not isinstance(th, dict):
        raise OnnxfiError(f"{w}.thresholds must be a table")
    _unknown(th, _THRESHOLD_KEYS, "[gate.thresholds]")
    limits = _rate_limits(th, "[gate.thresholds]")
    if "clean_min" in th:
        clean_min = _float(th["clean_min"], "[gate.thresholds].clean_min", -math.inf)
    if "clean_drop" in th:
        clean_drop = _float(th["clean_drop"], "[gate.thresholds].clean_drop")
    if "confidence" in th:
        confidence = _float(th["confidence"], "[gate.thresholds].confidence", 0.5, 1.0)
        if not 0.5 < confidence < 1.0:
            raise OnnxfiError("[gate.thresholds].confidence must be above 0.5 and below 1 (one-sided bound)")
    layers: list[LayerRule] = []
    lt = table.get("layers", {})
    if not isinstance(lt, dict):
        raise OnnxfiError(f"{w}.layers must be a table of REGEX = {{ sdc1 = ..., due = ... }}")
    for pattern, rule in lt.items():
        where = f"[gate.layers] {pattern!r}"
        if not isinstance(rule, dict):
            raise OnnxfiError(f"{where} must be a table like {{ sdc1 = 0.5 }}")
        _unknown(rule, set(FAILURE_FLAGS), where)
        try:
            re.compile(pattern)
        except re.error as e:
            raise OnnxfiError(f"{where}: bad regex ({e})") from None
        layers.append(LayerRule(pattern, _rate_limits(rule, where, FAILURE_FLAGS)))
    baseline = None
    if "baseline" in table:
        bt = table["baseline"]
        if isinstance(bt, str):
            bt = {"file": bt}
        if not isinstance(bt, dict) or "file" not in bt:
            raise OnnxfiError("[gate.baseline] needs file = \"previous-gate.json\"")
        _unknown(bt, _BASELINE_KEYS, "[gate.baseline]")
        baseline = BaselineSpec(
            Path(_path(bt["file"], "[gate.baseline].file", base)), _rate_limits(bt, "[gate.baseline]"),
            _float(bt["clean_drop"], "[gate.baseline].clean_drop") if "clean_drop" in bt else None,
        )
    if "data" in table and "data_loader" in table:
        raise OnnxfiError(f"{w}: data and data_loader both give the eval data: use one")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, dims in (table.get("input_shapes") or {}).items():
        if not isinstance(dims, list) or not all(isinstance(d, int) and d > 0 for d in dims):
            raise OnnxfiError(f"[gate].input_shapes.{name} must be a list of positive integers")
        shapes[name] = tuple(dims)
    return GateConfig(
        source=source,
        model=_path(table["model"], f"{w}.model", base) if "model" in table else None,
        data=_path(table["data"], f"{w}.data", base) if "data" in table else None,
        data_loader=_loader_path(table["data_loader"], f"{w}.data_loader", base) if "data_loader" in table else None,
        samples=_int(table.get("samples", 16), f"{w}.samples", 1),
        provider=_str(table.get("provider", "cpu"), f"{w}.provider"),
        threads=_int(table["threads"], f"{w}.threads", 1) if "threads" in table else None,
        workers=_int(table["workers"], f"{w}.workers", 1) if "workers" in table else None,
        batch=_int(table.get("batch", 256), f"{w}.batch", 1),
        db=_path(table["db"], f"{w}.db", base) if "db" in table else None,
        output=_str(table["output"], f"{w}.output") if "output" in table else None,
        task=_str(table["task"], f"{w}.task") if "task" in table else None,
        mode=_str(table["mode"], f"{w}.mode") if "mode" in table else None,
        input_shapes=shapes,
        plan=_plan_spec(table.get("plan", {}), "[gate.plan]"),
        limits=limits, clean_min=clean_min, clean_drop=clean_drop,
        clean_reference=(_float(table["clean_reference"], f"{w}.clean_reference", -math.inf)
                         if "clean_reference" in table else None),
        confidence=confidence, layers=tuple(layers), baseline=baseline,
    )


# ---------------------------------------------------------------------------------------------- checks


def load_baseline(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A baseline report: ``gate --json``, ``analyze --json`` or ``results --json`` output."""
    p = Path(path)
    if not p.is_file():
        raise OnnxfiError(f"baseline not found: {p} (write one with `onnxfi gate ... --json FILE`)")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise OnnxfiError(f"{p}: not a JSON report ({type(e).__name__}: {first_line(e, limit=200)})") from None
    except OSError as e:
        raise OnnxfiError(f"{p}: cannot read ({e.strerror})") from None
    if not isinstance(doc, dict) or doc.get("schema") not in _BASELINE_SCHEMAS:
        raise OnnxfiError(f"{p}: not an onnxfi report (schema should be one of {', '.join(_BASELINE_SCHEMAS)})")
    rates = doc.get("summary", {}).get("rates") if isinstance(doc.get("summary"), dict) else None
    if not isinstance(rates, dict):
        raise OnnxfiError(f"{p}: has no summary.rates")
    return doc


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def summary_confidence(gate_confidence: float) -> float:
    """The two-sided confidence whose interval's upper end is the gate's one-sided bound."""
    return 2.0 * gate_confidence - 1.0


def _label(key: str) -> str:
    return "SDC-1 per inference" if key == PER_INFERENCE else FLAG_LABELS[key]


def _estimate(summary: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    if key == PER_INFERENCE:
        per = summary.get("per_inference") or {}
        if "sdc1" not in per:
            raise OnnxfiError(f"the summary has no per-inference rate for {PER_INFERENCE}")
        return per["sdc1"]
    return summary["rates"][key]


def _rate_check(name: str, kind: str, label: str, r: Mapping[str, Any], limit: float, conf: float,
                what: str = "limit") -> Check:
    """``r`` is one estimate of a summary computed at two-sided ``summary_confidence(conf)``: its ``hi`` is
    the one-sided upper bound at ``conf``. An estimate with no rows (``rate`` NaN) cannot pass."""
    rate, ub = float(r["rate"]), float(r["hi"])
    k = int(r["k"]) if r.get("k") is not None else None
    n = int(r["n"]) if r.get("n") is not None else None
    if not math.isfinite(rate):
        return Check(name, kind, rate, 1.0, limit, False,
                     f"{label}: no estimate (no complete round of the plan is stored)", k, n)
    ok = ub <= limit
    sample = f" ({k}/{n} sampled)" if k is not None and n is not None else ""
    msg = (f"{label} {_pct(rate)}{sample}, {int(round(100 * conf))}% upper bound {_pct(ub)} "
           f"{'<=' if ok else '>'} {what} {_pct(limit)}")
    return Check(name, kind, rate, ub, limit, ok, msg, k, n)


def _check_confidence(summary: Mapping[str, Any], conf: float) -> None:
    want = summary_confidence(conf)
    have = summary.get("confidence")
    if not isinstance(have, (int, float)) or abs(float(have) - want) > 1e-9:
        raise OnnxfiError(f"the summary's intervals are at confidence {have!r}; a gate at one-sided {conf:g} "
                          f"needs them at two-sided {want:g} (onnxfi.summary.aggregate(plan, rows, {want:g}))")


def needs_labels(cfg: GateConfig) -> list[str]:
    """The configured checks that compare the clean metric with a floor or a reference: they need labels."""
    names = []
    if cfg.clean_min is not None:
        names.append("clean_min")
    if cfg.clean_drop is not None:
        names.append("clean_drop")
    if cfg.baseline is not None and cfg.baseline.clean_drop is not None:
        names.append("[gate.baseline].clean_drop")
    return names


def unlabelled_error(cfg: GateConfig, data: str | None) -> OnnxfiError:
    where = f"{data} has no labels" if data else "the eval data is seeded random inputs (no labels)"
    names = needs_labels(cfg)
    verb, check = ("needs", "the check") if len(names) == 1 else ("need", "these checks")
    return OnnxfiError(f"{cfg.source}: {', '.join(names)} {verb} labelled eval data, but {where}: "
                       f"without labels the clean run is scored against itself (always 1.0) and {check} "
                       "cannot fail; give data with labels or remove it")


def _plan_digest(plan: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("target", "faults", "bits", "seed", "requested")
    return {k: plan.get(k) for k in keys}


def evaluate(
    summary: Mapping[str, Any],
    clean: Mapping[str, Any],
    cfg: GateConfig,
    baseline: Mapping[str, Any] | None = None,
    plan: Mapping[str, Any] | None = None,
    warnings: list[str] | None = None,
) -> list[Check]:
    """The checks of ``cfg`` on a campaign summary (:func:`onnxfi.summary.aggregate`'s) and clean metric; pure."""
    warn = warnings if warnings is not None else []
    conf = cfg.confidence
    checks: list[Check] = []
    if summary.get("fault_model") == "ber":
        raise OnnxfiError("the gate checks outcome rates of single-fault campaigns; a --ber campaign reports a "
                          "metric per bit error rate (gate it with a persistent or transient campaign)")
    if cfg.limits or cfg.layers or cfg.baseline is not None:
        _check_confidence(summary, conf)
    if needs_labels(cfg) and (clean.get("labelled") is False or clean.get("metric") == "golden_agreement"):
        raise unlabelled_error(cfg, clean.get("data"))
    for key in _RATE_KEYS:
        if key in cfg.limits:
            checks.append(_rate_check(f"rate.{key}", "rate", f"{_label(key)} rate", _estimate(summary, key),
                                      cfg.limits[key], conf))
    for rule in cfg.layers:
        matched = [e for e in summary.get("layers", []) if re.fullmatch(rule.pattern, str(e["key"]))]
        if not matched:
            warn.append(f"layer rule {rule.pattern!r} matched no sampled layer")
        for e in sorted(matched, key=lambda e: str(e["key"])):
            for key in FAILURE_FLAGS:
                if key in rule.limits:
                    checks.append(_rate_check(f"layer.{e['key']}.{key}", "layer",
                                              f"{e['key']} {FLAG_LABELS[key]} rate", e[key], rule.limits[key], conf))
    metric = str(clean.get("metric") or "metric")
    value = clean.get("value")
    have_clean = isinstance(value, (int, float)) and math.isfinite(float(value))
    if cfg.clean_min is not None:
        if not have_clean:
            checks.append(Check("clean.min", "clean", math.nan, None, cfg.clean_min, False,
                                f"clean {metric} unknown (the fault-free run gave {value!r})"))
        else:
            v = float(value)  # type: ignore[arg-type]
            ok = v >= cfg.clean_min
            checks.append(Check("clean.min", "clean", v, None, cfg.clean_min, ok,
                                f"clean {metric} {v:.4f} {'>=' if ok else '<'} minimum {cfg.clean_min:.4f}"))
    ref_value: float | None = None
    ref_from = ""
    if baseline is not None:
        bclean = baseline.get("clean") or {}
        if isinstance(bclean.get("value"), (int, float)):
            ref_value, ref_from = float(bclean["value"]), "baseline"
            if bclean.get("metric") not in (None, clean.get("metric")):
                warn.append(f"baseline metric is {bclean.get('metric')}, this run's is {clean.get('metric')}")
    if ref_value is None and cfg.clean_reference is not None:
        ref_value, ref_from = cfg.clean_reference, "clean_reference"
    drops = [("clean.drop", cfg.clean_drop)]
    if cfg.baseline is not None and cfg.baseline.clean_drop is not None:
        drops.append(("baseline.clean", cfg.baseline.clean_drop))
    for name, allowed in drops:
        if allowed is None:
            continue
        if ref_value is None:
            raise OnnxfiError(f"{name}: a clean-metric drop needs a reference: set clean_reference or a baseline")
        if not have_clean:
            checks.append(Check(name, "clean", math.nan, None, allowed, False,
                                f"clean {metric} unknown (the fault-free run gave {value!r})"))
            continue
        drop = ref_value - float(value)  # type: ignore[arg-type]
        ok = drop <= allowed
        checks.append(Check(name, "clean", drop, None, allowed, ok,
                            f"clean {metric} {float(value):.4f} vs {ref_from} {ref_value:.4f}: drop {drop:+.4f} "  # type: ignore[arg-type]
                            f"{'<=' if ok else '>'} allowed {allowed:.4f}"))
    if cfg.baseline is not None and baseline is not None:
        bplan = baseline.get("plan") or {}
        if plan is not None and bplan and _plan_digest(bplan) != _plan_digest(plan):
            warn.append(f"baseline plan differs: {_plan_digest(bplan)} vs this run's {_plan_digest(plan)}")
        for key in _RATE_KEYS:
            if key not in cfg.baseline.deltas:
                continue
            try:
                base_rate = float(_estimate(baseline["summary"], key)["rate"])
            except (KeyError, OnnxfiError):
                raise OnnxfiError(f"baseline {cfg.baseline.file} has no {key} rate") from None
            delta = cfg.baseline.deltas[key]
            c = _rate_check(f"baseline.{key}", "baseline", f"{_label(key)} rate", _estimate(summary, key),
                            base_rate + delta, conf, what=f"baseline {_pct(base_rate)} + {_pct(delta)} =")
            checks.append(c)
    return checks


# ---------------------------------------------------------------------------------------------- JUnit

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _x(text: Any) -> str:
    """Text safe for XML 1.0 (ElementTree escapes markup; characters XML cannot hold at all are replaced)."""
    return _XML_BAD.sub("?", str(text))


def junit_xml(result: GateResult, suite: str = "onnxfi.gate") -> str:
    """JUnit XML: one testcase per check; a failed check has ``<failure message=...>`` with its figures."""
    checks: Sequence[Check] = result.checks
    failures = sum(1 for c in checks if not c.passed)
    root = ET.Element("testsuites", name=_x(suite), tests=str(len(checks)), failures=str(failures), errors="0",
                      time=f"{result.elapsed_s:.3f}")
    ts = ET.SubElement(root, "testsuite", name=_x(f"{suite}.{Path(result.model).stem}"), tests=str(len(checks)),
                       failures=str(failures), errors="0", skipped="0", time=f"{result.elapsed_s:.3f}")
    props = ET.SubElement(ts, "properties")
    for k, v in (("model", result.model), ("config", result.config.source), ("confidence", result.config.confidence),
                 ("experiments", result.summary.get("experiments")), ("reused", result.reused),
                 ("seed", result.plan.get("seed")), ("clean_metric", result.clean.get("metric")),
                 ("clean_value", result.clean.get("value"))):
        ET.SubElement(props, "property", name=k, value=_x(v))
    classname = _x(f"{suite}.{Path(result.model).stem}")
    for c in checks:
        tc = ET.SubElement(ts, "testcase", classname=classname, name=_x(c.name), time="0")
        figures = (f"measured={c.measured:.6g} bound={'-' if c.bound is None else f'{c.bound:.6g}'} "
                   f"limit={c.limit:.6g}" + (f" k={c.k} n={c.n}" if c.n is not None else ""))
        if c.passed:
            ET.SubElement(tc, "system-out").text = _x(f"{c.message}\n{figures}")
        else:
            fail = ET.SubElement(tc, "failure", message=_x(c.message), type=_x(c.kind))
            fail.text = _x(figures)
    if result.warnings:
        ET.SubElement(ts, "system-err").text = _x("\n".join(result.warnings))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(result: GateResult, path: str | os.PathLike[str]) -> None:
    p = Path(path)
    if p.parent != Path(""):
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(junit_xml(result), encoding="utf-8")
