"""The engine: per worker, the model and data loaded once (a Context), a bounded cache of site runners
chosen by :func:`onnxfi.engine.chooser.choose`, and each experiment's outputs classified into a row."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from onnxfi.engine.base import Result, Runner, is_runtime_failure
from onnxfi.engine.chooser import choose, choose_transient
from onnxfi.engine.config import MODES, EngineConfig
from onnxfi.engine.context import Context
from onnxfi.errors import MetricError, OnnxfiError, first_line
from onnxfi.outcomes import classify, classify_samples, load_metric, output_metric
from onnxfi.plan import BER_SITE, Experiment
from onnxfi.runtime import concat_batches
from onnxfi.scoring import plausibility

__all__ = ["Engine", "guard_metric"]


def guard_metric(fn: Callable[..., Any], spec: str) -> Callable[..., Any]:
    """``fn`` (a custom ``--metric``) made to raise :class:`onnxfi.errors.MetricError` when it raises or
    returns something other than a number or a dict of numbers: the user's code failing is a user error
    that stops the campaign, never a fault outcome (``crash``) and never reported as a bug in onnxfi."""

    def metric(*args: Any) -> Any:
        try:
            res = fn(*args)
        except Exception as e:
            raise MetricError(f"--metric {spec} raised {type(e).__name__}: {first_line(e)}") from e
        try:
            [float(v) for v in (res.values() if isinstance(res, dict) else [res])]
        except (TypeError, ValueError):
            raise MetricError(f"--metric {spec} returned {type(res).__name__}, not a number or a dict of numbers"
                              ) from None
        return res

    return metric


class Engine:
    """Loads the model and data once, keeps recent site runners, runs and classifies experiments."""

    def __init__(self, cfg: EngineConfig) -> None:
        if cfg.mode not in MODES:
            raise OnnxfiError(f"unknown execution mode {cfg.mode!r} (use {', '.join(MODES)})")
        self.cfg = cfg
        self.ctx = Context(cfg)
        self.custom = guard_metric(load_metric(cfg.metric), cfg.metric) if cfg.metric else None
        self.task: str = cfg.task or ""
        self._runners: OrderedDict[tuple[str, bool, bool, bool], Runner] = OrderedDict()
        self._ready: dict[int, dict[str, Any]] = {}  # rows of transient experiments computed ahead, by id

    @property
    def primary(self) -> str:
        """The output that decisions (top-1, pixel classes, the task metric) are taken from."""
        return self.ctx.primary

    def runner(self, site_name: str, needs_bits: bool, needs_values: bool, transient: bool = False) -> Runner:
        """The runner of a site (built on first use, kept while the session and cache budgets allow);
        ``transient``: the runner of one-inference faults at the site."""
        key = (site_name, needs_bits, needs_values, transient)
        r = self._runners.get(key)
        if r is not None:
            self._runners.move_to_end(key)
            return r
        if site_name == BER_SITE:
            from onnxfi.engine.ber import BerRunner

            r = BerRunner(self.ctx)
        elif transient:
            r = choose_transient(self.ctx, self.ctx.index.get(site_name)).runner
        else:
            r = choose(self.ctx, self.ctx.index.get(site_name), needs_bits, needs_values).runner
        self._runners[key] = r
        # runners that keep sessions count against max_sessions (a baked cone per fault keeps none, so a plan
        # spread over hundreds of weights does not rebuild them round after round)
        while len(self._runners) > 1 and (
            sum(x.sessions for x in self._runners.values()) > self.cfg.max_sessions
            or len(self._runners) > 16 * self.cfg.max_sessions
            or sum(x.cache_bytes for x in self._runners.values()) > self.cfg.cache_mb * 2**20
        ):
            self._runners.popitem(last=False)
        self.task = self.ctx.choice.task  # how the scored output is read (onnxfi.scoring; --task overrides)
        return r

    def prefetch(self, exps: list[Experiment], needs_bits: bool, needs_values: bool) -> None:
        """Compute ahead the results of transient experiments of one site that run together (the packed cone:
        one run executes the faults of different samples of a batch), for :meth:`run` to take. Best effort:
        where ONNX Runtime fails on the packed run, nothing is kept and each experiment runs alone, so a
        crash is the experiment's own."""
        exps = [e for e in exps if e.image is not None and e.id not in self._ready]
        if len(exps) < 2 or len({e.site for e in exps}) != 1:
            return
        r = self.runner(exps[0].site, needs_bits, needs_values, transient=True)
        many = getattr(r, "results", None)
        if many is None:
            return
        try:
            results = many(exps)
        except Exception as e:
            if not is_runtime_failure(e):
                raise
            return
        self._ready.update(self._rows([e for e in exps if e.id in results], results))

    def _rows(self, exps: list[Experiment], results: dict[int, Result]) -> dict[int, dict[str, Any]]:
        """The rows of transient experiments from their results, classified together, each on its own
        sample (its label alone)."""
        choice = self.ctx.choice
        labels = self.ctx.data.labels
        if labels is not None:
            labels = labels[np.array([e.image for e in exps], dtype=np.int64)]
        res = [results[e.id] for e in exps]
        rows = classify_samples([r.golden for r in res], [r.outputs for r in res], self.primary, choice.task, labels,
                                self.cfg.critical, self.custom, layout=choice.layout)
        out: dict[int, dict[str, Any]] = {}
        for e, r, row in zip(exps, res, rows):
            row["path"] = r.path
            if r.extra:
                row["metrics"] = {**row.get("metrics", {}), **r.extra}
            out[e.id] = row
        return out

    def run(self, exp: Experiment, needs_bits: bool, needs_values: bool) -> dict[str, Any]:
        """Run one experiment: its outcome flags and metrics (see :func:`onnxfi.outcomes.classify`) and
        ``path``, how it was executed (see :mod:`onnxfi.engine.chooser`). A transient experiment is classified
        on its own sample (its label alone)."""
        if exp.image is not None:
            ready = self._ready.pop(exp.id, None)
            if ready is not None:
                return ready
            res = self.runner(exp.site, needs_bits, needs_values, transient=True).result(exp)
            return self._rows([exp], {exp.id: res})[exp.id]
        res = self.runner(exp.site, needs_bits, needs_values).result(exp)
        choice = self.ctx.choice
        labels = self.ctx.data.labels
        row = classify(res.golden, res.outputs, self.primary, choice.task, labels, self.cfg.critical,
                       self.custom, layout=choice.layout)
        row["path"] = res.path
        if res.extra:
            row["metrics"] = {**row.get("metrics", {}), **res.extra}
        return row

    def clean_summary(self, fresh: bool = True) -> dict[str, Any]:
        """Metrics of the fault-free model on the campaign data (full session, no ports). ``fresh``: from a new
        session and run (``golden_time_s`` of a cold run: timeouts, bench); else the run the engine made when
        it loaded (a worker starting: one whole-model build and run less)."""
        chunks = self.ctx.model_outputs(fresh=fresh)  # kept for the cuts
        gold = concat_batches(chunks)
        choice = self.ctx.choice
        self.task = task = choice.task
        data = self.ctx.data
        name, value = output_metric(task, choice.layout, gold, gold, self.primary, data.labels)
        return {"task": task, "metric": name, "value": value, "golden_time_s": self.ctx.model_time,
                "samples": data.size, "data": data.source, "data_warnings": list(data.warnings),
                "primary_output": self.primary,
                "output_choice": {"name": choice.name, "reason": choice.reason, "runner_up": choice.runner_up,
                                  "layout": choice.layout},
                "warning": plausibility(choice, value) if name in ("accuracy", "miou") else None}
