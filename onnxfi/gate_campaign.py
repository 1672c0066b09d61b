"""The gate's campaign: a gate config -> a planned campaign, run (or reused) through the store -> checked summary.

Kept apart from :mod:`onnxfi.gate` so that reading a config and evaluating a summary never load the
engine or ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxfi.campaign import run_campaign
from onnxfi.data import make_dataset
from onnxfi.engine import EngineConfig
from onnxfi.errors import OnnxfiError
from onnxfi.gate import (
    GateConfig,
    GateResult,
    evaluate,
    load_baseline,
    needs_labels,
    summary_confidence,
    unlabelled_error,
)
from onnxfi.model import load_model
from onnxfi.plan import left_out_note, make_plan, parse_bits
from onnxfi.sites import enumerate_sites
from onnxfi.store import Store
from onnxfi.summary import aggregate

__all__ = ["run_gate"]


def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def run_gate(
    model_path: str,
    cfg: GateConfig,
    db_path: str | os.PathLike[str],
    fresh: bool = False,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
    data_path: str | None = None,
    data_loader: str | None = None,
    allow_cast: bool = False,
) -> GateResult:
    """Plan the configured campaign, run what the store does not already hold, and evaluate the checks.

    The store at ``db_path`` is reused when it holds the same plan (same model hash, seed, sites, bits)
    and settings; otherwise it is replaced. ``data_path`` is the eval data (None: seeded random inputs), or
    ``data_loader`` a data-loader script (``PATH.py:FUNC``, see :func:`onnxfi.data.load_loader`);
    ``allow_cast``: data of another dtype than its input's converted even where values change.
    """
    t0 = time.perf_counter()
    if not cfg.has_checks():
        raise OnnxfiError(f"{cfg.source}: no checks configured: add [gate.thresholds], [gate.layers] or [gate.baseline]")
    baseline = load_baseline(cfg.baseline.file) if cfg.baseline is not None else None
    wants_drop = cfg.clean_drop is not None or (cfg.baseline is not None and cfg.baseline.clean_drop is not None)
    if wants_drop and baseline is None and cfg.clean_reference is None:
        raise OnnxfiError(f"{cfg.source}: clean_drop needs a reference value: set clean_reference or [gate.baseline]")
    spec = cfg.plan
    loaded = load_model(model_path, dict(cfg.input_shapes))
    given = data_path or data_loader
    if needs_labels(cfg) and (not given or make_dataset(loaded.inputs(), data_path, data_loader,
                                                                allow_cast=allow_cast).labels is None):
        raise unlabelled_error(cfg, given)
    sites = enumerate_sites(loaded.model, loaded.value_shapes)
    chosen = sites.select(spec.target, spec.sites, list(spec.ops) or None)
    margin = spec.margin if spec.faults is None and spec.per_stratum is None else None
    if spec.faults is None and spec.per_stratum is None and margin is None:
        margin = 0.05
    images = None
    if spec.fault_model == "transient":  # the fault space counts the eval samples
        images = make_dataset(loaded.inputs(), data_path, data_loader, samples=cfg.samples, seed=spec.seed,
                              overrides=dict(cfg.input_shapes), allow_cast=allow_cast).size
    plan = make_plan(
        model_path, chosen, list(spec.fault), parse_bits(spec.bits), spec.faults, margin, spec.confidence,
        spec.p, spec.seed, spec.target, design=spec.design, per_stratum=spec.per_stratum,
        options={"critical": spec.critical, "data": given, "sites_regex": spec.sites,
                 "ops": ",".join(spec.ops) or None},
        fault_model=spec.fault_model, images=images,
    )
    ecfg = EngineConfig(
        model_path=model_path, input_shapes=dict(cfg.input_shapes), data_path=data_path, data_loader=data_loader,
        samples=cfg.samples,
        data_seed=spec.seed, provider=cfg.provider, threads=cfg.threads, batch=cfg.batch, output=cfg.output,
        task=cfg.task, critical=spec.critical, allow_cast=allow_cast,
    )
    if cfg.mode is not None:
        ecfg.mode = cfg.mode
    db = Path(db_path)
    db.parent.mkdir(parents=True, exist_ok=True)
    resume = False
    existed = db.exists()
    if existed and not fresh:
        try:
            with Store(db) as old:
                same = (old.meta("plan") == _json_roundtrip(plan.to_dict())
                        and old.meta("config") == _json_roundtrip(ecfg.__dict__))
                resume = same and old.count() > 0
        except OnnxfiError:
            resume = False
    if not resume:
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            p.unlink(missing_ok=True)
    warnings: list[str] = []
    if plan.options.get("left_out_unknown_shape"):
        warnings.append(left_out_note(plan.options["left_out_unknown_shape"]))
    if existed and not resume and not fresh:
        warnings.append(f"{db} held another campaign (model, plan, data or settings changed): replaced")
    store = Store(db)
    try:
        reused = store.count() if resume else 0
        result = run_campaign(plan, ecfg, store, workers=cfg.workers, resume=resume, progress=progress)
        rows = list(store.rows())
        # the checks read one-sided bounds at cfg.confidence: the summary's two-sided intervals at 2c - 1
        summary = aggregate(result.plan, rows, summary_confidence(cfg.confidence))
        if (result.clean or {}).get("warning"):
            warnings.append(str(result.clean["warning"]))
        warnings.extend(str(w) for w in (result.clean or {}).get("data_warnings") or [])
        crashes = [r for r in rows if r["crash"]]
        if crashes:
            warnings.append(f"{len(crashes)} experiment(s) crashed, e.g. #{crashes[0]['id']}: {crashes[0]['error']}")
    finally:
        store.close()
    plan_doc = {k: v for k, v in result.plan.to_dict().items() if k != "experiments"}
    checks = evaluate(summary, result.clean, cfg, baseline, plan_doc, warnings)
    if result.interrupted:
        warnings.append(f"interrupted: {summary['experiments']} of {len(result.plan.experiments)} experiments")
    return GateResult(
        model=model_path, config=cfg, checks=checks, summary=summary, clean=result.clean, plan=plan_doc,
        db=str(db), reused=reused, executed=result.executed, warnings=warnings,
        elapsed_s=time.perf_counter() - t0, interrupted=result.interrupted,
    )
