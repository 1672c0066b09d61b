"""Transient faults: one activation element of one inference is corrupted (a particle strike during one
run), and the outcome is that inference's.

Both runners classify an experiment on its own sample: ``Result.outputs`` and ``Result.golden`` hold the
sample's slice of every output that has a sample axis (outputs without one are kept whole).

``TransientConeRunner`` (path ``transient-cone``) works from the activation cone of :mod:`onnxfi.engine.cone`:
the fault-free prefix is cached per eval batch, and the experiments whose samples lie in one cached batch run
*together*: each faulty sample carries its own fault in the site tensor (computed in numpy), so one cone run
executes up to B experiments. The golden of a sample is the same cone run on the same batch without faults,
so which other samples share a run cannot change an outcome as long as the samples of a batch are computed
independently; every packed run checks that by requiring its fault-free rows to stay bitwise golden, and
where they do not (a model that mixes samples), the run's experiments are re-run one per run
(path ``+alone``). A fault that the site's only consumer (ReLU, MaxPool, Clip) removes is masked without
running the cone (``+shortcut``), as for persistent faults.

``TransientOutputRunner`` (path ``transient-output``): a site that is a model output no node reads; the
faulty sample's outputs are the fault-free ones with the fault written into that output, no run needed.

``TransientNaiveRunner`` (path ``transient-naive``) is the reference: per fault, the model reloaded with a fault
node that hits one image of the batch (:class:`onnxfi.passes.activation_fault.InsertActivationFault` with
``image``), run on the eval batch holding the sample, against the same model with an identity fault node.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import islice
from typing import Any

import numpy as np

from onnxfi.bits import dtype_info, is_float_dtype
from onnxfi.engine.base import Outputs, Result, Runner
from onnxfi.engine.cone import ActivationConeRunner, _run_cut
from onnxfi.engine.context import Context
from onnxfi.errors import InternalError, SiteError
from onnxfi.faults import Fault, RandomValue, SetValue
from onnxfi.model import load_model
from onnxfi.passes.activation_fault import InsertActivationFault, required_opset
from onnxfi.passes.opset import upgrade_opset
from onnxfi.plan import Experiment
from onnxfi.runtime import run_chunks
from onnxfi.sites import Site, enumerate_sites

__all__ = ["TransientConeRunner", "TransientOutputRunner", "TransientNaiveRunner", "sample_slice", "locate"]


def sample_slice(outputs: Outputs, row: int, rows: int) -> Outputs:
    """Sample ``row`` of a batch of ``rows`` samples: every output whose first axis has ``rows`` entries
    is cut to ``[row:row+1]``; the others (no sample axis) are kept whole."""
    out: Outputs = {}
    for k, v in outputs.items():
        a = np.asarray(v)
        out[k] = a[row:row + 1] if a.ndim and a.shape[0] == rows else a
    return out


def locate(starts: Sequence[int], sizes: Sequence[int], image: int) -> tuple[int, int]:
    """(batch, row) of eval sample ``image`` in batches starting at ``starts`` with ``sizes`` samples."""
    k = int(np.searchsorted(np.asarray(starts), image, side="right")) - 1
    if k < 0 or image >= starts[k] + sizes[k]:
        raise SiteError(f"sample {image} is outside the eval data ({sum(sizes)} samples)")
    return k, image - starts[k]


def _fixed_fault(exp: Experiment, numpy_dtype: np.dtype) -> Fault:
    """The experiment's fault, a random value drawn once from its seed (as the fault node draws it)."""
    fault = exp.fault_obj()
    if isinstance(fault, RandomValue):
        fault = SetValue(float(fault.draw(np.random.default_rng(exp.seed), (1,), numpy_dtype)[0]))
    return fault


def _put(flat: np.ndarray, row: int, e: Experiment, dtype: np.dtype) -> bool:
    """Write ``e``'s fault into sample ``row`` of the flattened site tensor; whether the exact shortcut may
    decide it (no NaN, Inf or zero written: fusions may treat those differently)."""
    old = flat[row, e.index:e.index + 1].copy()
    new = _fixed_fault(e, dtype).apply(old)
    flat[row, e.index:e.index + 1] = new
    if old.tobytes() != new.tobytes() and is_float_dtype(new.dtype):
        return bool(np.all(np.isfinite(new)) and np.all(new != 0))
    return True


def _starts(sizes: Sequence[int]) -> list[int]:
    """The first eval sample of each cached batch of ``sizes`` samples."""
    return [int(s) for s in np.cumsum([0, *sizes[:-1]])]


def _check_transient(site: Site, exp: Experiment) -> int:
    if exp.image is None:
        raise InternalError(f"experiment {exp.id} is not transient (no image)")
    if not site.batched:
        raise SiteError(f"{site.name} has no batch dimension: a transient fault cannot hit one inference")
    return exp.image


class TransientConeRunner(ActivationConeRunner):
    """An activation site's cone, run on one cached eval batch with a different fault in each sample."""

    path = "transient-cone"

    def __init__(self, ctx: Context, site: Site, reason: str = "") -> None:
        if not site.batched:
            raise SiteError(f"{site.name} has no batch dimension: a transient fault cannot hit one inference")
        super().__init__(ctx, site, reason)
        name = site.tensor_name
        self.sizes = [int(c[name].shape[0]) for c in self.chunks]
        self.starts = _starts(self.sizes)
        t0 = time.perf_counter()
        self.chunk_golden = [self._run_batch(k, c[name]) for k, c in enumerate(self.chunks)]
        self.golden_time = time.perf_counter() - t0
        self.ck_golden: list[np.ndarray] = []
        if self.checkpoint is not None:
            self.ck_golden = [self._check_array(c[name]) for c in self.chunks]
        self.runs = 0  # cone runs made for experiments (the packing's figure: experiments per run)
        self.coupled = False  # a packed run changed a fault-free sample: experiments now run one per run
        self.reads: list[str] = []  # the cached tensors a cone run reads (gathered runs)
        self.width = max(self.sizes)  # most rows of a gathered run: the eval batch size
        self.gather = self.width > 1 and self._gatherable()

    def _run_batch(self, k: int, x: np.ndarray) -> Outputs:
        return _run_cut(self.ctx, [self.chunks[k]], self.cut, self.site.tensor_name, self.session,
                        lambda c: x, True)

    def _check_array(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.checkpoint.run(None, {self.site.tensor_name: x})[0])

    def result(self, exp: Experiment) -> Result:
        return self.results([exp])[exp.id]

    def _gatherable(self) -> bool:
        """Whether rows of different cached batches can be gathered into one run: every tensor the cone reads
        from the cache, and every model output, has the samples on its first axis."""
        name = self.site.tensor_name
        self.reads = [t for t in dict.fromkeys([*self.cut.inputs, *self.ctx.output_names])
                      if t != name and t not in self.cut.outputs and t in self.chunks[0]]
        names = [*self.reads, name]
        for k, chunk in enumerate(self.chunks):
            n = self.sizes[k]
            if any(np.ndim(chunk[t]) == 0 or np.shape(chunk[t])[0] != n for t in names):
                return False
            if any(np.ndim(v) == 0 or np.shape(v)[0] != n for v in self.chunk_golden[k].values()):
                return False
        return True

    def results(self, exps: Sequence[Experiment]) -> dict[int, Result]:
        """The results of ``exps`` (transient experiments of this site), packed into as few cone runs as
        their samples allow. Gathered (the default): a run holds up to the eval batch size less one of faulty
        rows (any samples, a sample twice for two faults; runs of a group split evenly) and fault-free samples
        up to the next power of two, which must come out bitwise golden: a small group does not pay for a
        whole batch, and ONNX Runtime sees few distinct shapes.
        Where it does not (a model whose samples interact, or whose kernels round by batch size or position),
        the runner falls back for good to runs of one cached batch, one per fault sharing a sample with
        another."""
        placed = [(locate(self.starts, self.sizes, _check_transient(self.site, e)), e) for e in exps]
        out: dict[int, Result] = {}
        if self.gather:
            n_runs = -(-len(placed) // (self.width - 1))
            for part in np.array_split(np.arange(len(placed)), n_runs):
                out.update(self._gathered([placed[i] for i in part.tolist()]))
            return out
        by_batch: dict[int, list[list[tuple[int, Experiment]]]] = {}
        for (k, row), e in placed:
            runs = by_batch.setdefault(k, [])
            for run in runs:  # the first run with this sample free
                if all(r != row for r, _ in run):
                    run.append((row, e))
                    break
            else:
                runs.append([(row, e)])
        for k, runs in by_batch.items():
            for run in runs:
                out.update(self._packed(k, run))
        return out

    def _pad(self, taken: set[tuple[int, int]], count: int) -> list[tuple[int, int]]:
        """``count`` fault-free (batch, row) samples for a gathered run, those not in ``taken`` first."""
        every = ((k, r) for k, n in enumerate(self.sizes) for r in range(n))
        free = list(islice((p for p in every if p not in taken), count)) or [(0, 0)]
        return [free[i % len(free)] for i in range(count)]

    def _gathered(self, placed: Sequence[tuple[tuple[int, int], Experiment]]) -> dict[int, Result]:
        name = self.site.tensor_name
        # rows rounded up to a power of two (at most the batch size): few distinct shapes, which ONNX Runtime
        # plans once each, and a small group does not pay for a whole batch
        rows = min(self.width, 1 << len(placed).bit_length())
        pad = self._pad({p for p, _ in placed}, rows - len(placed))
        where = [p for p, _ in placed] + pad
        chunk = {t: np.concatenate([self.chunks[k][t][r:r + 1] for k, r in where]) for t in self.reads}
        x = np.concatenate([self.chunks[k][name][r:r + 1] for k, r in where])
        flat = x.reshape(len(x), -1)
        guard: dict[int, bool] = {}
        for j, (_, e) in enumerate(placed):
            guard[e.id] = _put(flat, j, e, self.info.numpy)
        out: dict[int, Result] = {}
        if self.checkpoint is not None:
            ck = self._check_array(x)
            for j, ((k, r), e) in enumerate(placed):
                if guard[e.id] and ck[j].tobytes() == self.ck_golden[k][r].tobytes():
                    g = sample_slice(self.chunk_golden[k], r, self.sizes[k])
                    out[e.id] = Result(g, g, self.path + "+shortcut")
            if len(out) == len(placed):
                return out
        faulty = _run_cut(self.ctx, [chunk], self.cut, name, self.session, lambda c: x, True)
        self.runs += 1
        for j in range(len(placed), len(where)):
            k, r = where[j]
            gold = self.chunk_golden[k]
            if any(faulty[t][j].tobytes() != gold[t][r].tobytes() for t in faulty):
                self.gather = False  # not row-independent: runs of one cached batch from now on
                rest = [p_e for p_e in placed if p_e[1].id not in out]
                return out | self.results([e for _, e in rest])
        for j, ((k, r), e) in enumerate(placed):
            if e.id not in out:
                out[e.id] = Result(sample_slice(faulty, j, len(where)),
                                   sample_slice(self.chunk_golden[k], r, self.sizes[k]), self.path)
        return out

    def _faulty(self, k: int, run: Sequence[tuple[int, Experiment]]) -> tuple[np.ndarray, dict[int, bool]]:
        """The batch's site tensor with each experiment's fault in its sample, and per experiment whether
        the exact shortcut may decide it (see :func:`_put`)."""
        x = np.array(self.chunks[k][self.site.tensor_name], copy=True)
        flat = x.reshape(len(x), -1)
        guard = {e.id: _put(flat, row, e, self.info.numpy) for row, e in run}
        return x, guard

    def _packed(self, k: int, run: Sequence[tuple[int, Experiment]]) -> dict[int, Result]:
        n = self.sizes[k]
        gold = self.chunk_golden[k]
        x, guard = self._faulty(k, run)
        out: dict[int, Result] = {}
        todo = list(run)
        if self.checkpoint is not None:
            ck = self._check_array(x)
            ck_gold = self.ck_golden[k]
            for row, e in run:
                if guard[e.id] and ck[row].tobytes() == ck_gold[row].tobytes():
                    g = sample_slice(gold, row, n)
                    out[e.id] = Result(g, g, self.path + "+shortcut")
            todo = [(row, e) for row, e in run if e.id not in out]
        if not todo:
            return out
        if self.coupled or len(todo) == 1:
            for row, e in todo:
                out[e.id] = self._alone(k, row, e)
            return out
        faulty = self._run_batch(k, x)
        self.runs += 1
        busy = {row for row, _ in run}
        free = [r for r in range(n) if r not in busy]
        if any(sample_slice(faulty, r, n)[name].tobytes() != sample_slice(gold, r, n)[name].tobytes()
               for r in free for name in faulty):
            self.coupled = True  # the batch's samples are not computed independently
            for row, e in todo:
                out[e.id] = self._alone(k, row, e)
            return out
        for row, e in todo:
            out[e.id] = Result(sample_slice(faulty, row, n), sample_slice(gold, row, n), self.path)
        return out

    def _alone(self, k: int, row: int, e: Experiment) -> Result:
        """``e`` in a run of its own (its sample faulty, every other sample fault-free)."""
        n = self.sizes[k]
        x, _ = self._faulty(k, [(row, e)])
        faulty = self._run_batch(k, x)
        self.runs += 1
        suffix = "+alone" if self.coupled else ""
        return Result(sample_slice(faulty, row, n), sample_slice(self.chunk_golden[k], row, n), self.path + suffix)

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"runs": self.runs, "coupled": self.coupled, "gathered": self.gather}


class TransientOutputRunner(Runner):
    """A site that is a model output read by no node: the faulty sample's outputs are its fault-free ones with
    the fault written into the site's own output (nothing else can change); no run at all."""

    path = "transient-output"

    def __init__(self, ctx: Context, site: Site, reason: str = "") -> None:
        if not site.batched:
            raise SiteError(f"{site.name} has no batch dimension: a transient fault cannot hit one inference")
        super().__init__(ctx, site, reason)
        self.info = dtype_info(site.dtype)
        self.chunks = ctx.model_outputs()
        self.sizes = [int(c[site.tensor_name].shape[0]) for c in self.chunks]
        self.starts = _starts(self.sizes)

    def result(self, exp: Experiment) -> Result:
        k, row = locate(self.starts, self.sizes, _check_transient(self.site, exp))
        gold = sample_slice(self.chunks[k], row, self.sizes[k])
        out = dict(gold)
        x = np.array(gold[self.site.tensor_name], copy=True)
        _put(x.reshape(1, -1), 0, exp, self.info.numpy)
        out[self.site.tensor_name] = x
        return Result(out, gold, self.path)

    def results(self, exps: Sequence[Experiment]) -> dict[int, Result]:
        return {e.id: self.result(e) for e in exps}


class TransientNaiveRunner(Runner):
    """Reference path: per fault, the model reloaded with a fault node on one image of the eval batch
    holding the sample, a new session, that batch run; golden from the identity fault node."""

    path = "transient-naive"

    def __init__(self, ctx: Context, site: Site, reason: str = "") -> None:
        if not site.batched:
            raise SiteError(f"{site.name} has no batch dimension: a transient fault cannot hit one inference")
        super().__init__(ctx, site, reason)
        size, batch = ctx.data.size, ctx.cfg.batch
        self.starts = list(range(0, size, batch))
        self.sizes = [min(batch, size - s) for s in self.starts]
        self.identity_golden: dict[tuple[tuple[str, ...], int, int], Outputs] = {}

    def _model(self, exp: Experiment, row: int, identity: bool) -> tuple[Any, InsertActivationFault]:
        loaded = load_model(self.ctx.cfg.model_path, self.ctx.cfg.input_shapes, check=False)
        site = enumerate_sites(loaded.model, loaded.value_shapes).get(self.site.name)
        p = InsertActivationFault(site, exp.index, exp.fault_obj(), row, np.random.default_rng(exp.seed), identity)
        model = upgrade_opset(loaded.model, required_opset(site, p.fault))
        p(model)
        return model, p

    def _run(self, model: Any, k: int) -> Outputs:
        start, n = self.starts[k], self.sizes[k]
        data = self.ctx.data
        batch = type(data)(data.batch(start, start + n), None, data.source, {m: data.axis(m) for m in data.feeds})
        return run_chunks(self.ctx.session(model), batch, self.ctx.output_names, n)[0]

    def result(self, exp: Experiment) -> Result:
        k, row = locate(self.starts, self.sizes, _check_transient(self.site, exp))
        model, p = self._model(exp, row, identity=False)
        out = self._run(model, k)  # first: a failure here is the fault's (a crash)
        key = (p.structure, k, row)
        golden = self.identity_golden.get(key)
        if golden is None:
            golden = self.identity_golden[key] = self._run(self._model(exp, row, identity=True)[0], k)
        n = self.sizes[k]
        return Result(sample_slice(out, row, n), sample_slice(golden, row, n), self.path)
