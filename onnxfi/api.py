"""The Python API: a model (a path, a zoo name or an in-memory model) and plain options -> a fault campaign,
one injected fault, a hardened copy, a gate verdict or a runtime comparison, each as a typed result.

Each function mirrors an ``onnxfi`` command and calls the same library code; the options keep the
command's names (``faults`` is the number of experiments, ``fault`` the fault model(s), ``output`` the
model output that is scored) and ``out`` names a file to write. Nothing prints; user errors raise
:class:`onnxfi.errors.OnnxfiError`. ``docs/python-api.md`` has an example of each.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import onnx
import onnx_ir as ir

from onnxfi import zoo
from onnxfi.campaign import matched_plan, prestart_workers, run_campaign
from onnxfi.compare import (
    Backend,
    CompareResult,
    RuntimeUnavailable,
    Tolerance,
    available_backends,
    get_backend,
    parse_tolerance,
    run_compare,
)
from onnxfi.data import Dataset, load_data, load_loader, random_data, resolve_loader_spec
from onnxfi.detection import TASK_PLUGIN_PREFIX
from onnxfi.engine import MODES, EngineConfig
from onnxfi.errors import OnnxfiError
from onnxfi.faults import Fault, parse_fault
from onnxfi.gate import GateConfig, GateResult, config_from_dict, find_config, load_config
from onnxfi.gate_campaign import run_gate
from onnxfi.harden import (
    DATA_METHODS,
    METHOD_OPTIONS,
    HardeningEffect,
    HardenOptions,
    PassReport,
    measure_hardening,
    parse_methods,
    run_outputs,
)
from onnxfi.harden import harden as _harden_model
from onnxfi.inject import Injection
from onnxfi.inject import inject as _inject_fault
from onnxfi.jsonvalues import jsonable
from onnxfi.metrics import TASKS
from onnxfi.model import LoadedModel, load_model, save_model
from onnxfi.outcomes import FLAGS
from onnxfi.plan import Experiment, Plan, complete_rounds, file_sha256, make_plan, parse_bits
from onnxfi.scoring import OutputChoice, choose_output, describe_shapes
from onnxfi.sites import Site, enumerate_sites
from onnxfi.stats import Rate
from onnxfi.store import Store

__all__ = [
    "ModelLike",
    "DataLike",
    "CampaignReport",
    "InjectionResult",
    "HardeningReport",
    "analyze",
    "sites",
    "inject",
    "harden",
    "gate",
    "compare",
]

ModelLike: TypeAlias = str | os.PathLike[str] | onnx.ModelProto | ir.Model
"""A model: a ``.onnx`` path, a zoo name (``"digits_cnn"``), an ``onnx.ModelProto`` or an ``onnx_ir.Model`` (e.g.
``harden(...).model``). In-memory models are written to a temporary file for the run."""

DataLike: TypeAlias = str | os.PathLike[str] | Mapping[str, np.ndarray] | Dataset | None
"""Eval or calibration data: an ``.npz`` path, a mapping of input name -> array (first axis = samples, plus an
optional ``"labels"`` array), a :class:`~onnxfi.data.Dataset`, or None (a zoo model's eval set, else seeded
random inputs)."""

# the `schema` of each command's JSON document (docs/json.md), which to_dict() gives too
ANALYZE_SCHEMA = "onnxfi.analyze/1"
INJECT_SCHEMA = "onnxfi.inject/1"
HARDEN_SCHEMA = "onnxfi.harden/1"
_TARGETS = ("weights", "activations", "all")
_TASKS = TASKS


# ---------------------------------------------------------------------------------------------- inputs


class _Scratch:
    """A temporary folder made on first use, for in-memory models, array data and default databases."""

    def __init__(self) -> None:
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._count = 0

    def path(self, name: str) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="onnxfi-")
        return Path(self._dir.name) / name

    def fresh(self, suffix: str) -> Path:
        """A new file name in the folder."""
        self._count += 1
        return self.path(f"{self._count}{suffix}")

    @property
    def used(self) -> bool:
        return self._dir is not None

    def cleanup(self) -> None:
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _model_path(model: ModelLike, scratch: _Scratch, beside: Path | None = None) -> str:
    """A file path for ``model``: a path as given, a zoo name's file, an in-memory model written to
    ``beside`` (when given) or to the scratch folder."""
    if isinstance(model, (onnx.ModelProto, ir.Model)):
        path = beside if beside is not None else scratch.fresh(".onnx")
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(model, onnx.ModelProto):
            onnx.save_model(model, str(path))
        else:
            save_model(model, path)
        return str(path)
    if isinstance(model, (str, os.PathLike)):
        return str(zoo.resolve_model(model))
    raise OnnxfiError(f"model must be a path, a zoo name, an onnx.ModelProto or an onnx_ir.Model, not "
                      f"{type(model).__name__}")


def _zoo_data(model: ModelLike) -> str | None:
    """The eval subset of the zoo model ``model`` names, else None."""
    return zoo.default_data(model) if isinstance(model, (str, os.PathLike)) else None


def _data_path(data: DataLike, scratch: _Scratch, beside: Path | None = None) -> str | None:
    """An ``.npz`` path for ``data`` (arrays and datasets are saved to ``beside`` when given, else to the
    scratch folder); None stays None."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    if isinstance(data, Dataset):
        arrays = dict(data.feeds) | ({"labels": data.labels} if data.labels is not None else {})
    elif isinstance(data, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in data.items()}
    else:
        raise OnnxfiError(f"data must be an .npz path, a mapping of input name -> array or a Dataset, not "
                          f"{type(data).__name__}")
    if not arrays:
        raise OnnxfiError("data has no arrays")
    path = beside if beside is not None else scratch.fresh(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as its own flags
    return str(path)


def _dataset(data: DataLike, loaded: LoadedModel, scratch: _Scratch) -> Dataset | None:
    """``data`` checked against the model's inputs (None stays None)."""
    path = _data_path(data, scratch)
    return None if path is None else load_data(path, loaded.inputs())


def _loader(data: DataLike, data_loader: str | None) -> str | None:
    """``data_loader`` checked and made absolute (workers import it themselves); exclusive with ``data``."""
    if data_loader is None:
        return None
    if data is not None:
        raise OnnxfiError("give the data as data (an .npz or arrays) or as data_loader, not both")
    return resolve_loader_spec(data_loader)


def _shapes(input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, dims in (input_shapes or {}).items():
        if not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
            raise OnnxfiError(f"input_shapes[{name!r}] must be positive integers, got {list(dims)}")
        shapes[str(name)] = tuple(int(d) for d in dims)
    return shapes


def _bits(bits: str | Sequence[int] | None) -> list[int] | None:
    if bits is None or isinstance(bits, str):
        return parse_bits(bits)
    out = sorted({int(b) for b in bits})
    if any(b < 0 for b in out):
        raise OnnxfiError(f"bad bits {list(bits)}: bits are >= 0")
    return out or None


def _site_pattern(site_names: str | Sequence[str] | None) -> str | None:
    """A regex as given, or a list of exact site names as one anchored regex."""
    if site_names is None or isinstance(site_names, str):
        return site_names
    names = list(site_names)
    if not names:
        raise OnnxfiError("sites: give a regex or at least one site name")
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def _ops(ops: str | Sequence[str] | None) -> list[str] | None:
    if ops is None:
        return None
    parts = [o.strip() for o in (ops.split(",") if isinstance(ops, str) else ops) if o.strip()]
    return parts or None


def _task_name(task: str | None) -> str | None:
    """``task`` as :data:`~onnxfi.metrics.TASKS` names it (``detection:module:function``, a user's decoder, is
    ``detection``)."""
    return "detection" if task is not None and task.startswith(TASK_PLUGIN_PREFIX) else task


def _choice(name: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise OnnxfiError(f"unknown {name} {value!r}: use one of {', '.join(allowed)}")


def _remove_db(db: Path, keep_db: bool = False) -> None:
    """A campaign database and the files :func:`analyze` writes beside it (``keep_db``: only those)."""
    for suffix in ("", "-wal", "-shm", ".plan.json", ".model.onnx", ".data.npz"):
        if not (keep_db and suffix in ("", "-wal", "-shm")):
            Path(f"{db}{suffix}").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- analyze


def _rate(entry: Mapping[str, Any], confidence: float, k: int | None = None, n: int | None = None) -> Rate:
    return Rate(int(entry["k"] if k is None else k), int(entry["n"] if n is None else n), float(entry["rate"]),
                float(entry["lo"]), float(entry["hi"]), str(entry.get("method") or "wilson"), float(confidence))


@dataclass
class CampaignReport:
    """A finished (or interrupted) campaign: the plan, the fault-free run, every row and the summary.

    ``summary`` is :func:`onnxfi.summary.aggregate`'s dict (its keys are documented there); the properties
    read it. Rates are estimates for the model's whole fault space with the estimator of the plan's design,
    over complete rounds. ``db`` is the SQLite results file; when :func:`analyze` made it in a temporary
    folder (``temporary``), the folder is removed when this object is.
    """

    model: str
    plan: Plan
    clean: dict[str, Any]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    db: Path
    interrupted: bool = False
    early_stopped: bool = False
    executed: int = 0
    temporary: bool = False
    compare: CampaignReport | None = None  # analyze(..., compare_with=OTHER): the same plan on OTHER
    _scratch: _Scratch | None = field(default=None, repr=False, compare=False)

    @property
    def design(self) -> str:
        return str(self.summary["design"])

    @property
    def confidence(self) -> float:
        return float(self.summary["confidence"])

    @property
    def rates(self) -> dict[str, Rate]:
        """The headline per-fault rate of every flag (sdc1, sdc5, critical, due, crash, masked)."""
        return {f: self.rate(f) for f in FLAGS}

    def rate(self, flag: str = "sdc1") -> Rate:
        """The headline per-fault rate of ``flag`` with its interval (``k``/``n``: what complete rounds sampled)."""
        if flag not in FLAGS:
            raise OnnxfiError(f"unknown flag {flag!r}: use one of {', '.join(FLAGS)}")
        return _rate(self.summary["rates"][flag], self.confidence)

    def raw_rate(self, flag: str = "sdc1") -> Rate:
        """k/n of ``flag`` over every stored row with its Wilson interval: a sample statistic, which is the
        model's rate only for the proportional design."""
        if flag not in FLAGS:
            raise OnnxfiError(f"unknown flag {flag!r}: use one of {', '.join(FLAGS)}")
        return _rate(self.summary["rates_raw"][flag], self.confidence)

    @property
    def per_inference(self) -> Rate:
        """The mean over the fault space of the fraction of eval inferences whose top-1 decision a fault
        changes (``k``: that fraction summed over the rows of complete rounds, rounded; ``n``: those rows)."""
        rounds = set(complete_rounds(self.plan, (int(r["id"]) for r in self.rows)))
        round_of = {e.id: e.round for e in self.plan.experiments}
        used = [r for r in self.rows if round_of.get(int(r["id"])) in rounds]
        total = sum(float(r.get("images_changed") or 0.0) for r in used)
        return _rate(self.summary["per_inference"]["sdc1"], self.confidence, k=int(round(total)), n=len(used))

    @property
    def layers(self) -> list[dict[str, Any]]:
        """Per site, most vulnerable first: ``key`` (the site), ``n``, every flag's ``{k, n, rate, lo, hi,
        method}``, ``per_inference``."""
        return list(self.summary["layers"])

    @property
    def bits(self) -> list[dict[str, Any]]:
        """Per bit (bit faults), highest bit first; entries as :attr:`layers` (``key`` is the bit)."""
        return list(self.summary["bits"])

    @property
    def layer_bit(self) -> list[dict[str, Any]]:
        """Per (site, bit): ``site``, ``bit`` and the rate of faults with SDC-1 or DUE."""
        return list(self.summary["layer_bit"])

    @property
    def progress(self) -> dict[str, Any]:
        """How much of the plan the rates use (``planned``, ``stored``, ``used``, ``rounds_complete``, ...)."""
        return dict(self.summary["progress"])

    def experiment(self, exp_id: int) -> Experiment:
        """The plan's experiment ``exp_id`` (a row's ``id``): pass it to :func:`inject` to rebuild that fault."""
        return self.plan.experiment(exp_id)

    def to_dict(self) -> dict[str, Any]:
        """The ``onnxfi analyze --json`` document."""
        doc = {"schema": ANALYZE_SCHEMA, "model": self.model, "db": str(self.db),
               "plan": {k: v for k, v in self.plan.to_dict().items() if k != "experiments"}, "clean": self.clean,
               "summary": self.summary, "interrupted": self.interrupted, "early_stopped": self.early_stopped}
        if self.compare is not None:
            c = self.compare
            doc["compare"] = {"model": c.model, "db": str(c.db), "clean": c.clean, "summary": c.summary}
        return doc

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """:meth:`to_dict` as standard JSON text (non-finite numbers as null), also written to ``path`` when given."""
        text = json.dumps(jsonable(self.to_dict()), indent=2, allow_nan=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def write_html(self, path: str | os.PathLike[str]) -> Path:
        """The self-contained HTML report of ``onnxfi analyze --html``; returns the path written."""
        from onnxfi.report.html import write_report

        return write_report(self.db, path)


def analyze(
    model: ModelLike,
    data: DataLike = None,
    *,
    data_loader: str | None = None,
    faults: int | None = None,
    margin: float | None = None,
    per_stratum: int | None = None,
    design: str | None = None,
    confidence: float = 0.99,
    p: float = 0.5,
    target: str = "weights",
    bits: str | Sequence[int] | None = None,
    sites: str | Sequence[str] | None = None,
    ops: str | Sequence[str] | None = None,
    layers: str | None = None,
    include_structure: bool = False,
    fault: str | Sequence[str] = "flip",
    seed: int = 0,
    samples: int = 16,
    critical: float = 0.01,
    output: str | None = None,
    task: str | None = None,
    metric: str | None = None,
    db: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    early_stop: bool = False,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    provider: str = "cpu",
    threads: int | None = None,
    batch: int = 256,
    mode: str = "suffix",
    cache_mb: float = 1024.0,
    verify: bool = True,
    timeout_min: float = 30.0,
    compare_with: ModelLike | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    check: bool = True,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> CampaignReport:
    """Run a planned fault-injection campaign (``onnxfi analyze``) and return its report.

    ``data``: the eval data, or ``data_loader``: a script ``"PATH.py[:FUNC]"`` whose function yields feed dicts
    (``onnxfi analyze --data-loader``; for inputs an ``.npz`` cannot express). Size: ``faults`` experiments, a ``margin`` for the SDC-1 interval (Leveugle sizing; the default is
    0.05), or ``per_stratum`` faults per (site, bit). ``design``: ``"proportional"`` (default),
    ``"per-stratum"`` or ``"adaptive"`` (sized by ``margin``). ``sites``: a regex over site names or a list of
    names; ``bits``: ``"23-30"`` or a list; ``fault``: one fault model or a list (``"flip"``, ``"stuck-1"``,
    ``"burst:2"``, ``"value:0"``, ...). ``db``: the results file (default: a temporary one; with a ``db``, an
    in-memory model and array data are written beside it, ``<db>.model.onnx`` and ``<db>.data.npz``, so the
    campaign can be resumed and replayed);
    ``resume=True`` continues the campaign stored in ``db``. ``compare_with``: run the same plan on another
    model (e.g. a hardened copy; its report is in ``report.compare``). ``progress(done, planned, live)`` is
    called after every experiment.
    """
    if workers is not None and workers < 1:
        raise OnnxfiError("workers must be at least 1")
    sizes = [name for name, v in (("faults", faults), ("margin", margin), ("per_stratum", per_stratum)) if v is not None]
    if len(sizes) > 1:
        raise OnnxfiError(f"give one of faults, margin and per_stratum, not {' and '.join(sizes)}")
    _choice("target", target, _TARGETS)
    _choice("mode", mode, MODES)
    _choice("task", _task_name(task), _TASKS)
    scratch = _Scratch()
    db_path = Path(db) if db is not None else scratch.path("campaign.db")
    if resume and not db_path.exists():
        raise OnnxfiError(f"resume: {db_path} does not exist")
    replace = db_path.exists() and not resume
    if replace and not overwrite:
        raise OnnxfiError(f"{db_path} exists: resume=True continues it, overwrite=True replaces it")
    prestart_workers(executor)  # the workers' server imports while the model loads and the plan is made
    created = replace or not db_path.exists()
    # the writer lock before anything is deleted or written: a database another campaign writes is refused
    store = Store.open_locked(db_path, replace=replace)
    keep = True
    try:
        if replace:
            _remove_db(db_path, keep_db=True)  # the replaced campaign's files beside it
        # a new campaign in a db of the user's keeps in-memory inputs beside it (a resumed one has its own), under
        # absolute paths, which the stored settings keep: a resume from another folder finds them
        beside = db is not None and not resume
        model_path = _model_path(model, scratch, beside=Path(f"{db_path}.model.onnx").absolute() if beside else None)
        loader = _loader(data, data_loader)
        data_path = None if loader else (
            _data_path(data, scratch, beside=Path(f"{db_path}.data.npz").absolute() if beside else None)
            or _zoo_data(model))
        cfg = EngineConfig(
            model_path=model_path, input_shapes=_shapes(input_shapes), check=check, data_path=data_path,
            data_loader=loader, samples=samples, data_seed=seed, provider=provider, threads=threads, batch=batch, output=output, task=task,
            critical=critical, metric=metric, mode=mode, cache_mb=cache_mb, verify=verify,
        )
        if resume:
            plan, cfg = _stored_campaign(store, db_path, model_path)
        else:
            plan = _plan(cfg, target=target, sites=_site_pattern(sites), ops=_ops(ops), layers=layers,
                         include_structure=include_structure, faults=faults, margin=margin, per_stratum=per_stratum,
                         design=design, confidence=confidence, p=p, bits=_bits(bits),
                         fault=[fault] if isinstance(fault, str) else list(fault), seed=seed, critical=critical)
        other_plan = None
        if compare_with is not None:  # checked before the first campaign runs
            other_plan = matched_plan(plan, _model_path(compare_with, scratch, beside=Path(f"{db_path}.compare.onnx")
                                                        if db is not None else None), cfg.input_shapes)
        plan.save(f"{db_path}.plan.json")
        result = run_campaign(plan, cfg, store, workers=workers, resume=resume, early_stop=early_stop,
                              progress=progress, min_timeout_s=timeout_min, executor=executor, address=address)
        rows = list(store.rows())
    except BaseException:
        # a run that failed before storing any result leaves nothing behind, so the same db works next time
        keep = not created or store.count() > 0
        raise
    finally:
        store.close(discard=not keep)  # deleted while still locked
        if not keep:
            _remove_db(db_path)
            scratch.cleanup()
    report = CampaignReport(
        model=cfg.model_path, plan=result.plan, clean=result.clean, summary=result.summary, rows=rows, db=db_path,
        interrupted=result.interrupted, early_stopped=result.early_stopped, executed=result.executed,
        temporary=db is None, _scratch=scratch if scratch.used else None,
    )
    if other_plan is not None and not result.interrupted:
        report.compare = _compare_campaign(report, other_plan, cfg, workers, timeout_min, executor, address)
    return report


def _stored_campaign(store: Store, db_path: Path, model_path: str) -> tuple[Plan, EngineConfig]:
    """The plan and engine settings of the campaign in ``store``, for ``resume``."""
    stored_plan = store.meta("plan")
    if stored_plan is None:
        raise OnnxfiError(f"{db_path}: nothing to resume (no campaign in it)")
    plan = Plan.from_dict(stored_plan)
    known = EngineConfig.__dataclass_fields__  # a key another onnxfi version wrote is left out
    cfg = EngineConfig(**{k: v for k, v in (store.meta("config") or {}).items() if k in known})
    cfg.input_shapes = {k: tuple(v) for k, v in cfg.input_shapes.items()}
    for path in {cfg.model_path, model_path}:
        if not Path(path).is_file() or file_sha256(path) != plan.model_sha256:
            raise OnnxfiError(f"{path} is not the model the campaign in {db_path} started with (hash differs); "
                              "refusing to resume")
    return plan, cfg


def _plan(cfg: EngineConfig, *, target: str, sites: str | None, ops: list[str] | None, layers: str | None,
          include_structure: bool, faults: int | None, margin: float | None, per_stratum: int | None,
          design: str | None, confidence: float, p: float, bits: list[int] | None, fault: list[str], seed: int,
          critical: float) -> Plan:
    """The campaign's plan, with the size rules of ``onnxfi analyze``."""
    loaded = load_model(cfg.model_path, cfg.input_shapes, check=cfg.check)
    chosen = enumerate_sites(loaded.model, loaded.value_shapes).select(target, sites, ops, include_structure,
                                                                       layers=layers)
    if not chosen:
        raise OnnxfiError("no fault sites match the selection (target, sites, ops, layers)")
    design = design or ("per-stratum" if per_stratum is not None else "proportional")
    if per_stratum is not None and design != "per-stratum":
        raise OnnxfiError(f"per_stratum is the per-stratum design's size, not {design}'s")
    if design == "adaptive" and faults is not None:
        raise OnnxfiError("the adaptive design is sized by margin, not faults")
    if faults is None and per_stratum is None and margin is None:
        margin = 0.05
    if not fault:
        raise OnnxfiError("fault: give at least one fault model")
    return make_plan(
        cfg.model_path, chosen, fault, bits, faults, margin, confidence, p, seed, target, design=design,
        per_stratum=per_stratum,
        options={"critical": critical, "data": cfg.data_path or cfg.data_loader, "sites_regex": sites, "ops": ",".join(ops or []) or None},
    )


def _compare_campaign(report: CampaignReport, other_plan: Plan, cfg: EngineConfig, workers: int | None, timeout_min: float,
                      executor: str, address: str | None) -> CampaignReport:
    other_db = Path(f"{report.db}.compare.db")
    _remove_db(other_db)
    other_cfg = replace(cfg, model_path=other_plan.model)
    with Store(other_db) as store:
        other = run_campaign(other_plan, other_cfg, store, workers=workers, min_timeout_s=timeout_min,
                             executor=executor, address=address)
        rows = list(store.rows())
    with Store(report.db) as store:
        store.set_meta("compare", {"db": str(other_db), "model": other_plan.model})
    return CampaignReport(other_plan.model, other.plan, other.clean, other.summary, rows, other_db,
                          other.interrupted, other.early_stopped, other.executed, report.temporary)


# ---------------------------------------------------------------------------------------------- sites, inject


def sites(
    model: ModelLike,
    target: str = "all",
    pattern: str | None = None,
    *,
    ops: str | Sequence[str] | None = None,
    layers: str | None = None,
    include_structure: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    check: bool = True,
) -> list[Site]:
    """The fault sites of ``model`` (``onnxfi inspect``): weights and activations, filtered as in ``analyze``."""
    _choice("target", target, _TARGETS)
    scratch = _Scratch()
    try:
        loaded = load_model(_model_path(model, scratch), _shapes(input_shapes), check=check)
        return enumerate_sites(loaded.model, loaded.value_shapes).select(target, pattern, _ops(ops),
                                                                        include_structure, layers=layers)
    finally:
        scratch.cleanup()


@dataclass
class InjectionResult(Injection):
    """What :func:`inject` did (:class:`onnxfi.inject.Injection`: the faulty model, the site, the element,
    the fault, the weight's old and new value) and the files it wrote (empty without ``out``)."""

    files: list[Path] = field(default_factory=list)

    @property
    def path(self) -> Path | None:
        """The faulty model file, when one was written."""
        return self.files[0] if self.files else None

    def to_dict(self) -> dict[str, Any]:
        """The ``onnxfi inject --json`` record."""
        return {"schema": INJECT_SCHEMA, **super().to_dict(), "output": [str(f) for f in self.files]}


def inject(
    model: ModelLike,
    site: str | Experiment,
    index: int | str | Sequence[int] | None = None,
    *,
    bit: int | Sequence[int] | None = None,
    fault: str | Fault = "flip",
    image: int | None = None,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    external_data: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    check: bool = True,
) -> InjectionResult:
    """One exact fault (``onnxfi inject``): ``fault`` at element ``index`` of ``site``.

    ``index``: a flat (C order) index, a multi-index ``(3, 0, 1, 1)`` or ``"3,0,1,1"``. ``bit``: the bit(s)
    of a bit fault (bit 0 = least significant; float32 bit 31 is the sign, 30..23 the exponent). ``fault``:
    a spec (``"flip"``, ``"stuck-1"``, ``"burst:2"``, ``"value:1e9"``, ``"zero"``, ...) or a
    :class:`~onnxfi.faults.Fault`. A weight fault rewrites the element; an activation fault inserts a fault
    node that applies it at run time (to every image, or to ``image``). ``site`` may also be a plan's
    :class:`~onnxfi.plan.Experiment` (e.g. ``report.experiment(42)``), which gives index, fault and seed.
    With ``out`` the faulty model is written there (``.onnx``).
    """
    if isinstance(site, Experiment):
        if index is not None or bit is not None:
            raise OnnxfiError("an experiment gives the index and the fault: leave index and bit out")
        where: int | str = site.index
        site_name, fault_obj, rng = site.site, site.fault_obj(), np.random.default_rng(site.seed)
    else:
        if index is None:
            raise OnnxfiError("give the element index (flat, or a multi-index like (3, 0, 1, 1))")
        bits = () if bit is None else ((int(bit),) if isinstance(bit, (int, np.integer)) else tuple(int(b) for b in bit))
        if isinstance(fault, Fault):
            if bits:
                raise OnnxfiError("a Fault object carries its bits: leave bit out")
            fault_obj = fault
        else:
            fault_obj = parse_fault(fault, bits)
        where = index if isinstance(index, (int, str)) else ",".join(str(int(i)) for i in index)
        site_name, rng = site, np.random.default_rng(seed)
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.suffix != ".onnx":
        raise OnnxfiError(f"out {out_path}: the faulty model must be a .onnx file")
    scratch = _Scratch()
    try:
        loaded = load_model(_model_path(model, scratch), _shapes(input_shapes), check=check)
        found = enumerate_sites(loaded.model, loaded.value_shapes)
        res = _inject_fault(loaded, found, site_name, where, fault_obj, image=image, rng=rng)
        files = (save_model(res.model, out_path, external_data=external_data or loaded.has_external_data)
                 if out_path is not None else [])
    finally:
        scratch.cleanup()
    return InjectionResult(res.model, res.site, res.flat_index, res.coords, res.fault, res.image, res.old_value,
                           res.new_value, res.opset_from, res.opset_to, files=list(files))


# ---------------------------------------------------------------------------------------------- harden


@dataclass
class HardeningReport:
    """What :func:`harden` did: the hardened model (a copy), one report per method, and what hardening costs
    (``effect``: clean metric and latency before and after; None with ``measure=False``)."""

    model: ir.Model
    source: str
    methods: list[str]
    passes: list[PassReport]
    calibration: dict[str, Any]
    output_choice: OutputChoice
    effect: HardeningEffect | None
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path | None:
        """The hardened model file, when one was written."""
        return self.files[0] if self.files else None

    def to_dict(self) -> dict[str, Any]:
        """The ``onnxfi harden --json`` document."""
        return {
            "schema": HARDEN_SCHEMA, "model": self.source, "output": str(self.path) if self.path else None,
            "files": [str(f) for f in self.files], "methods": list(self.methods),
            "output_choice": self.output_choice.to_dict(), "calibration": dict(self.calibration),
            "warnings": list(self.warnings), "passes": [r.to_dict() for r in self.passes],
            "comparison": self.effect.to_dict() if self.effect is not None else None,
        }


def harden(
    model: ModelLike,
    methods: str | Sequence[str],
    calib: DataLike = None,
    *,
    data_loader: str | None = None,
    eval_data: DataLike = None,
    out: str | os.PathLike[str] | None = None,
    percentile: float | None = None,
    level: int | None = None,
    search: bool = False,
    guard_points: str | None = None,
    layers: str | None = None,
    output: str | None = None,
    task: str | None = None,
    samples: int = 64,
    seed: int = 0,
    batch: int = 64,
    measure: bool = True,
    repeat: int = 50,
    provider: str = "cpu",
    threads: int | None = None,
    external_data: bool = False,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    check: bool = True,
) -> HardeningReport:
    """Harden ``model`` without retraining (``onnxfi harden``): ``methods`` in order (``"ranger"``,
    ``"clipact"``, ``"relumax"``, ``"protect"``, ``"nan-guard"``; a list or ``"relumax,protect"``).

    ``calib`` (or ``data_loader``, a ``"PATH.py[:FUNC]"`` script) calibrates the activation ranges (default: a
    zoo model's eval set, else seeded random inputs, with a warning); ``eval_data`` (default: ``calib``) scores the clean-metric change on ``output`` (default:
    chosen from the labels and shapes). Method options: ``percentile`` (ranger), ``level`` (protect, 0..3),
    ``search`` (clipact), ``guard_points`` (nan-guard); ``layers`` (a regex) restricts every method to the
    candidates whose name it matches. With ``out`` the hardened model is written there
    (``.onnx``) and loaded again; ``measure=False`` skips the accuracy and latency comparison.
    """
    chosen = parse_methods(methods)
    for option, value in (("percentile", percentile), ("level", level), ("search", search or None),
                          ("guard_points", guard_points)):
        method = METHOD_OPTIONS.get(option)
        if value is not None and method is not None and method not in chosen:
            raise OnnxfiError(f"{option} applies to {method}; add it to methods")
    if samples < 1 or batch < 1 or repeat < 1:
        raise OnnxfiError("samples, batch and repeat must be at least 1")
    _choice("task", _task_name(task), _TASKS)
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.suffix != ".onnx":
        raise OnnxfiError(f"out {out_path}: the hardened model must be a .onnx file")
    options = HardenOptions(percentile=percentile, level=1 if level is None else level, search=search,
                            guard_points=guard_points, batch_size=batch, provider=provider, threads=threads, seed=seed,
                            layers=layers)
    in_memory = isinstance(model, (onnx.ModelProto, ir.Model))
    scratch = _Scratch()
    try:
        shapes = _shapes(input_shapes)
        loaded = load_model(_model_path(model, scratch), shapes, check=check)
        if output is not None and output not in [o.name for o in loaded.outputs()]:
            raise OnnxfiError(f"output {output!r} is not a model output (outputs: "
                              f"{describe_shapes((o.name, o.shape) for o in loaded.outputs())})")
        warnings = list(loaded.warnings)
        evaluation = _dataset(eval_data, loaded, scratch)
        loader = _loader(calib, data_loader)
        calibration = (load_loader(loader, loaded.inputs()) if loader else
                       _dataset(calib, loaded, scratch) or _dataset(_zoo_data(model), loaded, scratch))
        if calibration is None and evaluation is not None and not any(m in DATA_METHODS for m in chosen):
            calibration = evaluation  # nothing to calibrate: the eval data serves the comparison
        if calibration is None:
            warnings.append("no calib data: calibrating on seeded random inputs; bounds from random data are weak"
                            if any(m in DATA_METHODS for m in chosen)
                            else "no data: comparing the models on seeded random inputs")
            calibration = random_data(loaded.inputs(), seed=seed, batch=samples, overrides=shapes)
        evaluation = evaluation or calibration
        # the scored output, chosen on the original's clean run before anything is hardened
        reference = run_outputs(loaded.model, evaluation, batch, provider=provider, threads=threads)
        choice = choose_output(reference, evaluation.labels, output, task)
        result = _harden_model(loaded.model, chosen, calibration, replace(options, output=choice.name, task=choice.task))
        files: list[Path] = []
        if out_path is not None:
            files = save_model(result.model, out_path, external_data=external_data or loaded.has_external_data)
            load_model(out_path)  # the written file must pass the checker and load again
        effect = None
        if measure:
            effect = measure_hardening(loaded.model, result.model, evaluation, repeat=repeat, batch_size=batch,
                                       provider=provider, threads=threads, choice=choice)
            if effect.warning:
                warnings.append(effect.warning)
    finally:
        scratch.cleanup()
    return HardeningReport(
        model=result.model, source="<in-memory model>" if in_memory else str(loaded.path), methods=chosen,
        passes=result.reports, calibration={"data": calibration.source, "samples": calibration.size},
        output_choice=choice, effect=effect, files=files, warnings=warnings,
    )


# ---------------------------------------------------------------------------------------------- gate


def _gate_config(config: str | os.PathLike[str] | Mapping[str, Any] | GateConfig | None,
                 base_dir: str | os.PathLike[str] | None) -> GateConfig:
    if isinstance(config, GateConfig):
        return config
    if config is None:
        return load_config(find_config(None, base_dir or "."))
    if isinstance(config, Mapping):
        table = config.get("gate") if set(config) == {"gate"} else config  # a whole TOML document, or its [gate]
        if not isinstance(table, Mapping):
            raise OnnxfiError("config['gate'] must be a table")
        return config_from_dict(table, base_dir or ".", source="<dict>")
    return load_config(find_config(config))


def gate(
    config: str | os.PathLike[str] | Mapping[str, Any] | GateConfig | None = None,
    model: ModelLike | None = None,
    *,
    data: DataLike = None,
    data_loader: str | None = None,
    db: str | os.PathLike[str] | None = None,
    fresh: bool = False,
    workers: int | None = None,
    baseline: str | os.PathLike[str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int, dict[str, Any]], None] | None = None,
) -> GateResult:
    """Run the campaign a gate config describes and check its rates (``onnxfi gate``).

    ``config``: an ``onnxfi.toml`` / ``pyproject.toml`` path, the ``[gate]`` table as a dict (relative paths
    from ``base_dir``, default the current folder), a :class:`~onnxfi.gate.GateConfig`, or None (``./onnxfi.toml``,
    else ``./pyproject.toml``). ``model`` and ``data`` (or ``data_loader``) replace the config's. ``db``: the results store (default:
    the config's, else a temporary one, so nothing is reused). ``baseline`` replaces the config's baseline file.
    ``result.passed`` is the verdict; ``result.checks`` has each check's measured value, bound and limit.
    """
    cfg = _gate_config(config, base_dir)
    if workers is not None:
        if workers < 1:
            raise OnnxfiError("workers must be at least 1")
        cfg = replace(cfg, workers=workers)
    if baseline is not None:
        if cfg.baseline is None:
            raise OnnxfiError(f"baseline: {cfg.source} has no [gate.baseline] table with the allowed deltas")
        cfg = replace(cfg, baseline=replace(cfg.baseline, file=Path(baseline)))
    model_arg = model if model is not None else cfg.model
    if model_arg is None:
        raise OnnxfiError(f"no model: give model or set model in {cfg.source}")
    scratch = _Scratch()
    try:
        model_path = _model_path(model_arg, scratch)
        if not Path(model_path).is_file():
            raise OnnxfiError(f"model not found: {model_arg}")
        loader = _loader(data, data_loader) or (None if data is not None else cfg.data_loader)
        data_path = None if loader else (_data_path(data, scratch) or cfg.data or _zoo_data(model_arg))
        stem = Path(model_path).stem
        db_path = (str(db) if db is not None else cfg.db.replace("{model}", stem) if cfg.db
                   else str(scratch.path(f"gate-{stem}.db")))
        temporary = db is None and not cfg.db
        result = run_gate(model_path, cfg, db_path, fresh=fresh, progress=progress, data_path=data_path,
                          data_loader=loader)
    finally:
        scratch.cleanup()
    if not data_path and not loader:
        result.warnings.append("no data: seeded random inputs, so the clean metric is agreement with the model itself")
    if temporary:
        result.db = None
    return result


# ---------------------------------------------------------------------------------------------- compare


def _backends(runtimes: str | Sequence[str], threads: int | None) -> list[Backend | RuntimeUnavailable]:
    names = [n.strip() for n in (runtimes.split(",") if isinstance(runtimes, str) else runtimes) if n.strip()]
    if not names:
        raise OnnxfiError("runtimes: give at least one runtime")
    if any(n.lower() == "all" for n in names):
        names = [n for n in names if n.lower() != "all"] + available_backends()
    out: list[Backend | RuntimeUnavailable] = []
    for n in dict.fromkeys(n.lower() for n in names):
        try:
            out.append(get_backend(n, threads))
        except RuntimeUnavailable as e:
            out.append(e)
    return out


def _tolerance(value: float | str | Sequence[str] | Tolerance | None, what: str) -> Tolerance:
    return value if isinstance(value, Tolerance) else parse_tolerance(value, 1e-4, what)


def compare(
    model: ModelLike,
    runtimes: str | Sequence[str] = ("cpu", "reference"),
    data: DataLike = None,
    *,
    data_loader: str | None = None,
    reference: str | None = None,
    atol: float | str | Sequence[str] | Tolerance | None = None,
    rtol: float | str | Sequence[str] | Tolerance | None = None,
    faults: int = 50,
    bits: str | Sequence[int] | None = None,
    sites: str | None = None,
    fault_samples: int = 128,
    critical: float = 0.01,
    output: str | None = None,
    task: str | None = None,
    seed: int = 0,
    samples: int = 16,
    repeat: int = 20,
    warmup: int = 3,
    latency_batch: int = 1,
    batch: int = 256,
    threads: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    check: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> CompareResult:
    """One model on several runtimes (``onnxfi compare``): outputs vs ``reference`` (default: the first
    runtime) within ``atol``/``rtol`` (one value or ``"OUTPUT:VALUE"`` entries), latency, and the same
    ``faults`` weight bit flips on each runtime (0: none).

    ``runtimes``: ``"cpu"``, ``"cuda"``, ``"reference"`` (the ONNX reference evaluator), ``"openvino"``,
    ``"all"``, ... A runtime not available here is reported in ``result.unavailable`` with its reason;
    ``result.passed`` is False when a runtime's outputs differ beyond the tolerances.
    """
    for name, value in (("repeat", repeat), ("latency_batch", latency_batch), ("batch", batch),
                        ("fault_samples", fault_samples), ("samples", samples)):
        if value < 1:
            raise OnnxfiError(f"{name} must be at least 1")
    if faults < 0 or warmup < 0:
        raise OnnxfiError("faults and warmup must be >= 0")
    _choice("task", _task_name(task), _TASKS)
    backends = _backends(runtimes, threads)
    if reference is not None and reference.lower() not in [getattr(b, "name", "") for b in backends]:
        backends = _backends(reference, threads) + backends
    tol_a, tol_r = _tolerance(atol, "atol"), _tolerance(rtol, "rtol")
    scratch = _Scratch()
    try:
        shapes = _shapes(input_shapes)
        model_path = _model_path(model, scratch)
        loaded = load_model(model_path, shapes, check=check)
        specs = loaded.inputs()
        loader = _loader(data, data_loader)
        dataset = (load_loader(loader, specs) if loader else _dataset(data, loaded, scratch)
                   or _dataset(_zoo_data(model), loaded, scratch)
                   or random_data(specs, seed=seed, batch=samples, overrides=shapes))
        for s in specs:  # a model with a fixed batch dimension takes exactly that many samples per run
            first = s.shape[0] if s.shape else None
            if isinstance(first, int) and first > 0:
                batch = min(batch, first)
        return run_compare(
            loaded, model_path, backends, dataset, reference=reference.lower() if reference else None, atol=tol_a,
            rtol=tol_r, repeat=repeat, warmup=warmup, latency_batch=min(latency_batch, batch), batch=batch,
            n_faults=faults, bits=_bits(bits), sites=sites, seed=seed, fault_samples=fault_samples,
            critical=critical, output=output, progress=progress, task=task,
        )
    finally:
        scratch.cleanup()
