"""Execute experiments: per site one ONNX Runtime session with the site opened to faults, a golden run
from that same session, then each fault's outputs classified against it.

Outcomes (one per experiment, first match wins): ``crash`` (runtime error, dead worker, timeout),
``due`` (NaN/Inf in an output the golden run had finite), ``critical`` (task metric drops by more than
the threshold), ``sdc5`` (golden top-1 leaves the top-5 on some image), ``sdc1`` (top-1 changes on
some image; for segmentation: some pixel's class), ``tolerable`` (outputs differ, no decision does),
``masked`` (every output bitwise equal to golden). The flags are kept separately, so the SDC-1 rate
counts every experiment that changed a decision, SDC-5 and critical ones included.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir

from onnxfi import metrics
from onnxfi.bits import dtype_info
from onnxfi.data import Dataset, load_data, random_data
from onnxfi.errors import OnnxfiError
from onnxfi.faults import BitFault, BitFlip, Fault, RandomValue, SetValue, inject_element
from onnxfi.model import LoadedModel, load_model
from onnxfi.outcomes import OUTCOMES, classify, load_metric, task_metric
from onnxfi.passes.activation_fault import InsertActivationFault, required_opset
from onnxfi.passes.fault_port import (
    PORT_AND,
    PORT_OR,
    PORT_SEL,
    PORT_VAL,
    PORT_XOR,
    AddActivationPort,
    WeightToInput,
    identity_ports,
)
from onnxfi.passes.opset import upgrade_opset
from onnxfi.plan import Experiment
from onnxfi.runtime import make_session
from onnxfi.sites import Site, SiteIndex, enumerate_sites
from onnxfi.suffix import (
    Cut,
    CutError,
    boundary,
    cone_macs,
    cut_model,
    forward_cone,
    is_quantized_weight,
    weight_head,
    weight_start,
)

__all__ = ["EngineConfig", "Engine", "classify", "OUTCOMES", "task_metric", "MODES"]

MODES = ("suffix", "port", "naive")



@dataclass
class EngineConfig:
    """Everything a worker needs to rebuild the same sessions and data (plain, picklable values)."""

    model_path: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    check: bool = True
    data_path: str | None = None
    samples: int = 16
    data_seed: int = 0
    provider: str = "cpu"
    threads: int | None = None
    batch: int = 256
    output: str | None = None
    task: str | None = None
    critical: float = 0.01
    metric: str | None = None
    # "suffix": per site, a cached fault-free prefix and a session of the site's forward cone only
    # (falls back to "port" where a model cannot be cut); "port": one whole-model session per site
    # with the site opened to faults; "naive": a rebuilt model and a new session per fault.
    mode: str = "suffix"
    max_sessions: int = 8
    cache_mb: float = 1024.0
    shortcuts: bool = True
    # suffix mode, weights: re-run with the weight baked in every experiment whose outcome the
    # rounding difference between a fed and a baked weight could change (exact against naive)
    verify: bool = True
    # suffix mode, float weights: split the baked cone into a per-fault head session and a shared rest
    # (exact, no re-runs) where that reproduces the baked cone; None: only where one cone run is at least
    # SPLIT_MIN_MACS (on small models a session build per fault costs more than the re-runs it saves)
    split: bool | None = None


class _SiteRunner:
    """One site's session: feeds that inject a fault, and the golden outputs of the same session."""

    def __init__(
        self, engine: Engine, site: Site, needs_bits: bool, needs_values: bool, rebuild: bool = False
    ) -> None:
        self.engine, self.site = engine, site
        cfg = engine.cfg
        loaded = load_model(cfg.model_path, cfg.input_shapes, check=False)
        self.extra: dict[str, np.ndarray] = {}
        model: ir.Model = loaded.model
        if site.kind == "weight":
            if site.graph or rebuild:  # subgraph weights cannot be fed; rebuild per fault
                self.mode = "rebuild"
                self.loaded = loaded
                self.index = enumerate_sites(loaded.model, loaded.value_shapes)
                self.original = self.index.weight_array(self.index.get(site.name)).copy()
                self.session = make_session(loaded.model, cfg.provider, threads=cfg.threads)  # the golden
            else:
                self.mode = "weight"
                self.original = engine.index.weight_array(site).copy()
                WeightToInput(site.tensor_name)(model)
                self.session = make_session(model, cfg.provider, threads=cfg.threads)
        else:
            self.mode = "activation"
            if needs_bits:
                model = upgrade_opset(model, required_opset(site, _BIT_PROBE))
            port = AddActivationPort(site, needs_bits, needs_values)
            port(model)
            self.port_shape = port.port_shape()
            ident = identity_ports(site, self.port_shape)
            keep = ([PORT_AND, PORT_OR, PORT_XOR] if needs_bits else []) + ([PORT_SEL, PORT_VAL] if needs_values else [])
            self.identity = {k: ident[k] for k in keep}
            self.session = make_session(model, cfg.provider, threads=cfg.threads)
        t0 = time.perf_counter()
        self.golden = self._run(self._clean_feeds())
        self.golden_time = time.perf_counter() - t0

    def run_with_golden(self, exp: Experiment) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The experiment's outputs and the golden outputs to classify them against."""
        return self.run(exp), self.golden

    def _clean_feeds(self) -> dict[str, np.ndarray]:
        if self.mode == "weight":
            return {self.site.tensor_name: self.original}
        if self.mode == "activation":
            return dict(self.identity)
        return {}

    def _run(self, extra: dict[str, np.ndarray], session: Any = None) -> dict[str, np.ndarray]:
        sess = session if session is not None else self.session
        assert sess is not None
        data = self.engine.data
        names = self.engine.output_names
        chunks: list[list[np.ndarray]] = []
        n = max(1, data.size)
        bs = self.engine.cfg.batch
        for start in range(0, n, bs):
            feeds = data.batch(start, min(n, start + bs))
            feeds.update(extra)
            chunks.append(sess.run(names, feeds))
        return {
            name: (np.concatenate([c[i] for c in chunks]) if len(chunks) > 1 else np.asarray(chunks[0][i]))
            for i, name in enumerate(names)
        }

    def run(self, exp: Experiment) -> dict[str, np.ndarray]:
        fault = exp.fault_obj()
        rng = np.random.default_rng(exp.seed)
        if self.mode == "weight":
            arr = inject_element(self.original, exp.index, fault, rng)
            return self._run({self.site.tensor_name: arr})
        if self.mode == "rebuild":
            site = self.index.get(self.site.name)
            arr = inject_element(self.original, exp.index, fault, rng)
            self.index.set_weight_array(site, arr)
            try:
                sess = make_session(self.loaded.model, self.engine.cfg.provider, threads=self.engine.cfg.threads)
            finally:
                self.index.set_weight_array(site, self.original)
            return self._run({}, sess)
        feeds = {k: v.copy() for k, v in self.identity.items()}
        info = dtype_info(self.site.dtype)
        if isinstance(fault, RandomValue):
            fault = SetValue(float(fault.draw(rng, (1,), info.numpy)[0]))
        if isinstance(fault, BitFault):
            m = fault.masks(info)
            word_np = info.word if info.is_float else info.numpy
            for key, value in ((PORT_AND, m.and_mask), (PORT_OR, m.or_mask), (PORT_XOR, m.xor_mask)):
                feeds[key].reshape(-1)[exp.index] = np.array(value, dtype=info.word).view(word_np)
        else:
            assert isinstance(fault, SetValue)
            feeds[PORT_SEL].reshape(-1)[exp.index] = True
            feeds[PORT_VAL].reshape(-1)[exp.index] = fault.apply(np.zeros(1, info.numpy))[0]
        return self._run(feeds)


_BIT_PROBE: Fault = BitFlip((0,))


class _NaiveRunner(_SiteRunner):
    """Reference path: per fault, a model rewritten with the fault baked in and a new session."""

    def __init__(self, engine: Engine, site: Site) -> None:
        self.engine, self.site = engine, site
        cfg = engine.cfg
        self.loaded = load_model(cfg.model_path, cfg.input_shapes, check=False)
        self.index = enumerate_sites(self.loaded.model, self.loaded.value_shapes)
        self.mode = "naive"
        self.session = make_session(self.loaded.model, cfg.provider, threads=cfg.threads)
        t0 = time.perf_counter()
        self.golden = self._run({})
        self.golden_time = time.perf_counter() - t0

    def run(self, exp: Experiment) -> dict[str, np.ndarray]:
        fault = exp.fault_obj()
        rng = np.random.default_rng(exp.seed)
        loaded = load_model(self.engine.cfg.model_path, self.engine.cfg.input_shapes, check=False)
        index = enumerate_sites(loaded.model, loaded.value_shapes)
        site = index.get(self.site.name)
        if site.kind == "weight":
            arr = inject_element(index.weight_array(site), exp.index, fault, rng)
            index.set_weight_array(site, arr)
            model = loaded.model
        else:
            p = InsertActivationFault(site, exp.index, fault, None, rng)
            model = upgrade_opset(loaded.model, required_opset(site, p.fault))
            p(model)
        sess = make_session(model, self.engine.cfg.provider, threads=self.engine.cfg.threads)
        return self._run({}, sess)


def _is_float(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" or a.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2")


def _noise_bounds(fed: dict[str, np.ndarray], baked: dict[str, np.ndarray]) -> dict[str, float] | None:
    """How far rounding alone moves each float output between the fed and the baked cone (a bound to
    call a difference "within noise"), or None when they differ by more than rounding: other shapes,
    other non-finite values, other integer values or other decisions (argmax over axis 1), or a float
    difference above 64 units in the last place of the output's largest value."""
    bounds: dict[str, float] = {}
    for k, y in baked.items():
        x = fed[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            return None
        if not _is_float(y):
            if not np.array_equal(x, y):
                return None
            continue
        xf, yf = x.astype(np.float64), y.astype(np.float64)
        fin = np.isfinite(yf)
        if not np.array_equal(fin, np.isfinite(xf)) or not np.array_equal(xf[~fin], yf[~fin], equal_nan=True):
            return None
        d = float(np.max(np.abs(xf[fin] - yf[fin]), initial=0.0))
        scale = float(np.max(np.abs(yf[fin]), initial=0.0))
        ulp = float(np.spacing(np.asarray(scale, dtype=y.dtype)).astype(np.float64)) if scale > 0 else 0.0
        if d > 64 * ulp:
            return None
        if yf.ndim >= 2 and yf.shape[1] >= 2 and not np.array_equal(np.argmax(xf, axis=1), np.argmax(yf, axis=1)):
            return None
        bounds[k] = max(4 * d, 8 * ulp)
    return bounds


# Multiply-adds of one cone run (over all samples) from which splitting a weight's cone pays by default.
# Measured on 2 cores (bench/RESULTS.md): a head session build costs 2-3 ms on the zoo's small CNNs,
# more than a fed cone run plus its share of baked re-runs (digits_cnn: 0.2 GMAC per run, fed 562 vs
# split 345 exp/s); on ResNet-18 (2.4-70 GMAC per run at batch 64) the split is 1.2x (1.4x steady) faster.
SPLIT_MIN_MACS = 10**9


class UnfaithfulCut(CutError):
    """A cut model whose fault-free outputs differ from the whole model's beyond rounding."""


def _split_pays(cone_macs_per_sample: int, samples: int) -> bool:
    """Whether a weight's cone is split by default: when one run of it is big enough for a head session
    build per fault to cost less than the baked re-runs it saves. Deterministic (no timing), so that
    every worker and every rerun of a plan takes the same path and gets the same metrics."""
    return cone_macs_per_sample * max(1, samples) >= SPLIT_MIN_MACS


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality (NaN payloads and the sign of zero included)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "OUS":
        return bool(np.array_equal(a, b))
    return bool(np.array_equal(np.require(a, requirements="C").reshape(-1).view(np.uint8),
                               np.require(b, requirements="C").reshape(-1).view(np.uint8)))


def _extreme(value: np.ndarray) -> bool:
    """A faulty weight value near the top of its float range (at or above the square root of the
    largest finite value) or not finite: whether its products overflow depends on the order ORT
    computes in, and on folding (w * gamma / sigma)."""
    v = np.asarray(value)
    if not _is_float(v):
        return False
    with np.errstate(invalid="ignore"):  # a flipped bit can make a signalling NaN
        f = v.astype(np.float64)
    return bool(not np.all(np.isfinite(f)) or np.any(np.abs(f) >= np.sqrt(float(ml_dtypes.finfo(v.dtype).max))))


def _change_class(old: np.ndarray, new: np.ndarray) -> float:
    """floor(log2(|new - old| / |old|)) of one weight element (inf when not finite or old is 0)."""
    with np.errstate(invalid="ignore"):
        a, b = float(np.asarray(old).astype(np.float64)), float(np.asarray(new).astype(np.float64))
    if a == 0 or not np.isfinite(a) or not np.isfinite(b):
        return float("inf")
    d = abs(b - a) / abs(a)
    return float(np.floor(np.log2(d))) if d > 0 else float("-inf")


def _decision_ambiguous(f: np.ndarray, g: np.ndarray, b: float) -> bool:
    """Whether rounding of size ``b`` could change a decision taken from output ``f`` (axis 1: classes):
    the argmax (a near tie of the top two) or, with more than five classes, whether golden ``g``'s top-1
    class is in f's top five."""
    if f.ndim < 2 or f.shape[1] < 2:
        return False
    c = f.shape[1]
    ff = np.moveaxis(f.astype(np.float64), 1, -1).reshape(-1, c)
    top2 = -np.partition(-ff, 1, axis=1)[:, :2]
    if np.any(top2[:, 0] - top2[:, 1] <= b):
        return True
    if c > 5:
        gi = np.moveaxis(np.argmax(g, axis=1)[:, None], 1, -1).reshape(-1)
        fg = ff[np.arange(len(ff)), gi][:, None]
        above = (ff > fg + b).sum(axis=1)
        maybe = (ff >= fg - b).sum(axis=1) - 1
        if np.any((above < 5) & (maybe >= 5)):
            return True
    return False


def _ambiguous(out: dict[str, np.ndarray], golden: dict[str, np.ndarray], bounds: dict[str, float]) -> bool:
    """Whether rounding noise (``bounds`` per float output) could change this experiment's outcome:
    every output within noise of golden (masked or not is then decided by rounding), a non-finite
    value, or a decision near a tie."""
    near = True
    for k, g in golden.items():
        f = out[k]
        if k not in bounds:
            near = near and np.array_equal(f, g)
            continue
        ff = f.astype(np.float64)
        if not np.all(np.isfinite(ff)):
            return True
        b = bounds[k]
        if near and float(np.max(np.abs(ff - g.astype(np.float64)), initial=0.0)) > b:
            near = False
        if _decision_ambiguous(f, g, b):
            return True
    return near


class _SuffixRunner(_SiteRunner):
    """Prefix cache + suffix session: the fault-free model runs once with every tensor the site's
    forward cone reads exposed; each fault then runs only the cone, fed from that cache.

    Activation faults are applied to the cached site tensor in numpy (the same element of every image,
    as the port does), so no fault node and no opset upgrade is needed. When the site's only consumer is
    a ReLU, MaxPool or Clip and that node's output on the faulty tensor is bitwise equal to its golden
    output, the fault is masked and the cone is not run (``shortcuts``).

    Weight faults (``split``): the weight's head (the node computing with it and what ORT fuses into
    that node, see ``weight_head``) runs as a small session with the faulty weight baked in, the rest of
    the cone as one shared session fed with the head's output; used where this reproduces the baked
    cone's fault-free outputs bit for bit. A fault that leaves the head's output bitwise unchanged is
    masked without running the rest. Elsewhere the weight is fed to the cone, and experiments whose
    outcome rounding could decide are re-run with the weight baked in (``verified``).
    """

    def __init__(self, engine: Engine, site: Site) -> None:
        self.engine, self.site = engine, site
        self.mode = "suffix"
        self.shortcuts = 0
        self.verified = 0  # weight experiments run with the weight baked in although the site runs fed
        self._bake_bytes: dict[int, bytes] = {}  # id(cut) -> the cut serialized without the site input
        cfg = engine.cfg
        if site.graph:
            raise CutError("site is inside a subgraph")
        proto = engine.model_proto()
        name = site.tensor_name
        self.info = dtype_info(site.dtype)
        weight = site.kind == "weight"
        # Fed cone: starts at the site itself. Baked cone (weights): starts a few nodes earlier so the
        # patterns ORT fuses around a constant weight (Conv+BatchNormalization, QDQ) are whole in it.
        start = [name]
        bake_start = weight_start(proto, name) if weight else start
        # quantized weights always run baked; exposing the fed cone's float inputs would break the
        # QDQ fusions of the prefix, so only the baked cone's boundary is cached for them
        quantized = weight and is_quantized_weight(proto, name, self.info.numpy)
        if quantized:
            start = bake_start
        expose = list(dict.fromkeys(boundary(proto, start, [name]) + boundary(proto, bake_start, [name])))
        if not weight:
            expose.append(name)
        head: tuple[list[int], list[str]] | None = None
        if weight and not quantized and cfg.verify and (cfg.split or (cfg.split is None and _split_pays(
                cone_macs(proto, forward_cone(proto.graph, start), engine.loaded.value_shapes), engine.data.size))):
            try:
                head = weight_head(proto, name, bake_start)
                expose.extend(e for e in head[1] if e not in expose)
            except CutError:
                head = None
        self.chunks, used = engine.prefix(expose)
        self.cache_bytes = used
        if weight:
            self.original = engine.index.weight_array(site).copy()
        else:
            arr = self.chunks[0][name]
            if arr.dtype != self.info.numpy:
                raise CutError(f"ONNX Runtime returns {site.name} as {arr.dtype}, not {self.info.numpy}")
        values = {**self.chunks[0], name: self.original} if weight else self.chunks[0]
        cut: Cut = cut_model(proto, start, [name], values)
        self.cut = cut
        self.bake_cut = cut if bake_start == start else cut_model(proto, bake_start, [name], values)
        self.session = None
        self.checkpoint = None
        if cfg.shortcuts and not weight and cut.checkpoint is not None:
            self.checkpoint = make_session(cut.checkpoint.SerializeToString(), cfg.provider, threads=1)
            self.checkpoint_golden = [self._check(c[name]) for c in self.chunks]
        self.baked = quantized
        self.baked_golden: dict[str, np.ndarray] = {}
        self.bounds: dict[str, float] = {}
        self.split = False  # weights: a baked head session per fault + one shared session for the rest
        t0 = time.perf_counter()
        if quantized:
            self.golden = self._baked_run(self.original)
            engine.fallbacks[site.name] = "quantized weight, computed in integer kernels: one cone session per fault"
        elif head is not None and self._try_split(proto, bake_start, head, values):
            self.golden = self.baked_golden
        else:  # the fed cone (activations, and weights that are not split); quantized weights never get here
            self.session = make_session(cut.model.SerializeToString(), cfg.provider, threads=cfg.threads)
            self.golden = self._suffix_run((lambda c: self.original) if weight else (lambda c: c[name]))
            if weight:
                self._measure_rounding()
        self.golden_time = time.perf_counter() - t0
        if weight and cfg.verify and not engine.near_model(self.baked_golden or self.golden):
            # A cut computes what the whole model computes, up to rounding where ORT fuses across the cut
            # (a residual Add whose other input the cut reads from the cache: a few units in the last
            # place). Beyond that -- ORT keeps a float16 chain in float32 inside the whole model while a
            # cut rounds its cached boundary to float16 -- outcomes and metrics would drift from the
            # whole model's: rebuild it per fault instead. (--no-verify accepts rounding differences; an
            # activation fault materializes the site's tensor on every path, naive included.)
            raise UnfaithfulCut("the cut model's fault-free outputs differ from the whole model's beyond "
                                "rounding (e.g. float16 that ORT keeps in float32): one whole-model session "
                                "per fault")

    def _try_split(
        self, proto: onnx.ModelProto, bake_start: list[str], head: tuple[list[int], list[str]],
        values: dict[str, np.ndarray],
    ) -> bool:
        """Split the baked cone into the weight's head (baked per fault, small) and the rest (one session,
        every weight in it a prepacked constant), when the split reproduces the baked cone's fault-free
        outputs bit for bit: then every fault runs exactly as the baked cone would run it, with no fed
        weight and no rounding question."""
        nodes, ends = head
        try:
            self.head_cut = cut_model(proto, bake_start, [self.site.tensor_name], values, nodes=nodes, outputs=ends)
            rest_cut = None
            if forward_cone(proto.graph, ends):
                rest_cut = cut_model(proto, ends, ends, self.chunks[0])
        except CutError:
            return False
        self.rest_cut = rest_cut
        self.rest = (make_session(rest_cut.model.SerializeToString(), self.engine.cfg.provider,
                                  threads=self.engine.cfg.threads) if rest_cut is not None else None)
        self.baked_golden = self._baked_run(self.original)
        self.head_golden = self._head_run(self.original)
        split_golden = self._rest_run(self.head_golden)
        if not all(_same_bits(split_golden[k], g) for k, g in self.baked_golden.items()):
            self.rest = None
            return False
        self.split = True
        return True

    def _head_run(self, weight: np.ndarray) -> list[dict[str, np.ndarray]]:
        """The head's outputs per chunk, with ``weight`` baked in (one small session per call)."""
        cut, name = self.head_cut, self.site.tensor_name
        sess = self._baked_session(weight, cut)
        out = []
        for chunk in self.chunks:
            feeds = {k: chunk[k] for k in cut.inputs if k != name}
            out.append({k: np.asarray(v) for k, v in zip(cut.outputs, sess.run(cut.outputs, feeds))})
        return out

    def _rest_run(self, heads: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.engine.output_names}
        for chunk, h in zip(self.chunks, heads):
            got = dict(h)
            if self.rest is not None and self.rest_cut is not None:
                feeds = {k: (h[k] if k in h else chunk[k]) for k in self.rest_cut.inputs}
                got.update(zip(self.rest_cut.outputs, self.rest.run(self.rest_cut.outputs, feeds)))
            for k in self.engine.output_names:
                parts[k].append(np.asarray(got[k]) if k in got else chunk[k])
        return {k: (np.concatenate(v) if len(v) > 1 else v[0]) for k, v in parts.items()}

    def _split_run(self, weight: np.ndarray) -> dict[str, np.ndarray]:
        heads = self._head_run(weight)
        if self.engine.cfg.shortcuts and all(_same_bits(h[k], g[k]) for h, g in zip(heads, self.head_golden) for k in g):
            self.shortcuts += 1  # the fault did not change the head's output: nothing downstream changes
            return self.golden
        return self._rest_run(heads)

    def _measure_rounding(self) -> None:
        """A weight fed as an input stops ORT from folding it (Conv+BatchNormalization fusion,
        prepacked/NCHWc kernels), which changes the rounding. The site runs fed (one session, the fast
        path) against its own golden, with ``bounds``: how far the fed and the baked cone's fault-free
        outputs are apart; ``run_with_golden`` re-runs baked every experiment that this noise could
        decide. If they differ beyond rounding, every fault gets a baked cone session."""
        baked_golden = self.baked_golden or self._baked_run(self.original)
        with np.errstate(invalid="ignore"):
            bounds = _noise_bounds(self.golden, baked_golden)
        if bounds is None:
            self.baked = True
            self.golden = baked_golden
            self.engine.fallbacks[self.site.name] = ("weight is folded by ONNX Runtime (outputs differ beyond "
                                                     "rounding): one cone session per fault")
        else:
            self.bounds, self.baked_golden = bounds, baked_golden

    def _check(self, x: np.ndarray) -> bytes:
        assert self.checkpoint is not None
        return bytes(np.asarray(self.checkpoint.run(None, {self.site.tensor_name: x})[0]).tobytes())

    def _baked_session(self, weight: np.ndarray, cut: Cut | None = None) -> Any:
        """A session of ``cut`` (default: the baked cone) with ``weight`` as an initializer instead of
        an input.

        The cut without the site input is serialized once; a serialized ModelProto holding only the
        initializer is appended per fault (protobuf merges repeated fields of concatenated messages),
        so a fault costs the weight's bytes, not a copy of the cut's."""
        cut = cut if cut is not None else self.bake_cut
        head = self._bake_bytes.get(id(cut))
        if head is None:
            model = onnx.ModelProto()
            model.CopyFrom(cut.model)
            keep = [i for i in model.graph.input if i.name != self.site.tensor_name]
            del model.graph.input[:]
            model.graph.input.extend(keep)
            head = self._bake_bytes[id(cut)] = model.SerializeToString()
        extra = onnx.ModelProto(graph=onnx.GraphProto(
            initializer=[onnx.numpy_helper.from_array(weight, self.site.tensor_name)]))
        return make_session(head + extra.SerializeToString(), self.engine.cfg.provider,
                            threads=self.engine.cfg.threads)

    def _suffix_run(
        self, site_value: Callable[[dict[str, np.ndarray]], np.ndarray], session: Any = None
    ) -> dict[str, np.ndarray]:
        sess = session if session is not None else self.session
        assert sess is not None
        # a session passed in is a baked cone's (see _baked_session)
        cut, name = (self.cut if session is None else self.bake_cut), self.site.tensor_name
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.engine.output_names}
        for chunk in self.chunks:
            feeds = {k: chunk[k] for k in cut.inputs if k != name}
            value = site_value(chunk)
            if session is None:
                feeds[name] = value
            outs = sess.run(cut.outputs, feeds) if cut.outputs else []
            got = dict(zip(cut.outputs, outs))
            for k in self.engine.output_names:
                if k in got:
                    parts[k].append(np.asarray(got[k]))
                elif k == name:  # the site itself is a model output
                    parts[k].append(value)
                else:
                    parts[k].append(chunk[k])
        return {k: (np.concatenate(v) if len(v) > 1 else v[0]) for k, v in parts.items()}

    def run_with_golden(self, exp: Experiment) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if self.site.kind != "weight":
            return self._run_activation(exp), self.golden
        arr = inject_element(self.original, exp.index, exp.fault_obj(), np.random.default_rng(exp.seed))
        if self.split:
            return self._split_run(arr), self.golden
        if self.baked:
            return self._baked_run(arr), self.golden
        if not self.engine.cfg.verify:
            return self._suffix_run(lambda c: arr), self.golden
        # A fault no larger (relative to the weight) than faults whose fed runs were mostly ambiguous
        # (low mantissa bits: the change is as small as the rounding; pooled over this engine's sites)
        # goes straight to the baked cone: the same result, one run fewer.
        size = _change_class(self.original.reshape(-1)[exp.index], arr.reshape(-1)[exp.index])
        larger = [v for k, v in self.engine.ambiguity.items() if k >= size]
        runs, amb = sum(v[0] for v in larger), sum(v[1] for v in larger)
        direct = runs >= 4 and amb >= 0.75 * runs
        if direct or _extreme(arr.reshape(-1)[exp.index]):
            self.verified += 1
            return self._baked_run(arr), self.baked_golden
        out = self._suffix_run(lambda c: arr)
        stats = self.engine.ambiguity.setdefault(size, [0, 0])
        stats[0] += 1
        with np.errstate(invalid="ignore"):
            ambiguous = _ambiguous(out, self.golden, self.bounds)
        if ambiguous:
            stats[1] += 1
            self.verified += 1
            return self._baked_run(arr), self.baked_golden
        return out, self.golden

    def _baked_run(self, arr: np.ndarray) -> dict[str, np.ndarray]:
        return self._suffix_run(lambda c: arr, self._baked_session(arr))

    def run(self, exp: Experiment) -> dict[str, np.ndarray]:
        """The experiment's outputs; a weight experiment may be classified against ``baked_golden``,
        so callers that classify use ``run_with_golden``."""
        return self.run_with_golden(exp)[0]

    def _run_activation(self, exp: Experiment) -> dict[str, np.ndarray]:
        fault = exp.fault_obj()
        rng = np.random.default_rng(exp.seed)
        if isinstance(fault, RandomValue):  # one value for every image, drawn as the port draws it
            fault = SetValue(float(fault.draw(rng, (1,), self.info.numpy)[0]))
        name, batched = self.site.tensor_name, self.site.batched
        faulty: list[np.ndarray] = []
        guard = True
        for chunk in self.chunks:
            x = np.array(chunk[name], copy=True)
            flat = x.reshape(len(x), -1) if batched and x.ndim else x.reshape(1, -1)
            old = flat[:, exp.index].copy()
            new = fault.apply(old)
            flat[:, exp.index] = new
            faulty.append(x)
            changed = old.view(np.uint8).reshape(len(old), -1) != new.view(np.uint8).reshape(len(new), -1)
            moved = new[changed.any(axis=1)]
            if moved.dtype.kind == "f" and (not np.all(np.isfinite(moved)) or np.any(moved == 0)):
                guard = False  # NaN/Inf/±0 may be treated differently once fused: no shortcut
        if self.checkpoint is not None and guard and all(
            self._check(x) == g for x, g in zip(faulty, self.checkpoint_golden)
        ):
            self.shortcuts += 1
            return self.golden
        it = iter(faulty)
        return self._suffix_run(lambda c: next(it))


class Engine:
    """Loads the model and data once, keeps recent site sessions, runs and classifies experiments."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.loaded: LoadedModel = load_model(cfg.model_path, cfg.input_shapes, check=cfg.check)
        self.index: SiteIndex = enumerate_sites(self.loaded.model, self.loaded.value_shapes)
        specs = self.loaded.inputs()
        self.data: Dataset = (
            load_data(cfg.data_path, specs) if cfg.data_path
            else random_data(specs, seed=cfg.data_seed, batch=cfg.samples, overrides=cfg.input_shapes)
        )
        outs = [o.name for o in self.loaded.outputs()]
        self.output_names = outs
        primary = cfg.output or outs[0]
        if primary not in outs:
            raise OnnxfiError(f"--output {primary!r} is not a model output ({', '.join(outs)})")
        self.primary = primary
        self.custom = load_metric(cfg.metric) if cfg.metric else None
        self._runners: OrderedDict[tuple[str, bool, bool], _SiteRunner] = OrderedDict()
        self.task: str = cfg.task or ""
        self._proto: onnx.ModelProto | None = None
        self._model_bytes: bytes | None = None
        self._value_map: dict[str, ir.Value] | None = None
        # suffix mode, weights: per relative change class (floor(log2 |dw / w|)), fed runs and how many
        # were rounding-ambiguous, pooled over the sites this engine has run
        self.ambiguity: dict[float, list[int]] = {}
        self._prefixes: OrderedDict[tuple[str, ...], tuple[list[dict[str, np.ndarray]], int]] = OrderedDict()
        self._model_outputs: list[dict[str, np.ndarray]] | None = None
        self._model_time = 0.0
        self.fallbacks: dict[str, str] = {}  # site -> why the suffix path was not used
        if cfg.mode not in MODES:
            raise OnnxfiError(f"unknown execution mode {cfg.mode!r} (use {', '.join(MODES)})")

    def runner(self, site_name: str, needs_bits: bool, needs_values: bool) -> _SiteRunner:
        key = (site_name, needs_bits, needs_values)
        r = self._runners.get(key)
        if r is None:
            site = self.index.get(site_name)
            r = self._make_runner(site, needs_bits, needs_values)
            self._runners[key] = r
            while len(self._runners) > 1 and (
                len(self._runners) > self.cfg.max_sessions
                or sum(getattr(x, "cache_bytes", 0) for x in self._runners.values()) > self.cfg.cache_mb * 2**20
            ):
                self._runners.popitem(last=False)
            if not self.task:
                gold = r.golden[self.primary]
                self.task = metrics.detect_task(gold.shape, gold.dtype)
        else:
            self._runners.move_to_end(key)
        return r

    def model_proto(self) -> onnx.ModelProto:
        if self._proto is None:
            self._proto = ir.to_proto(self.loaded.model)
        return self._proto

    def prefix(self, expose: list[str]) -> tuple[list[dict[str, np.ndarray]], int]:
        """The fault-free model run once over the data with ``expose`` added to its outputs: per batch,
        every output, every exposed value and the feeds; and the bytes the exposed values take.

        Sites that need the same values (a layer's weight and bias) share one run. The exposed model is
        the serialized model with a ModelProto holding only the extra graph outputs appended (protobuf
        merges the repeated field), so no copy of the model is made."""
        key = tuple(sorted(expose))
        hit = self._prefixes.get(key)
        if hit is not None:
            self._prefixes.move_to_end(key)
            return hit
        cfg = self.cfg
        if self._model_bytes is None:
            self._model_bytes = self.model_proto().SerializeToString()
        present = {o.name for o in self.model_proto().graph.output}
        extra = [ir.serde.serialize_value(self._values()[n]) for n in expose if n not in present]
        source = self._model_bytes + onnx.ModelProto(graph=onnx.GraphProto(output=extra)).SerializeToString()
        prefix = make_session(source, cfg.provider, threads=cfg.threads)
        out_names = [o.name for o in prefix.get_outputs()]
        chunks: list[dict[str, np.ndarray]] = []
        budget = cfg.cache_mb * 2**20
        used = 0
        n = max(1, self.data.size)
        for lo in range(0, n, cfg.batch):
            feeds = self.data.batch(lo, min(n, lo + cfg.batch))
            outs = dict(zip(out_names, prefix.run(out_names, feeds)))
            chunk = {k: np.asarray(v) for k, v in outs.items()}
            chunk.update(feeds)
            used += sum(v.nbytes for k, v in outs.items() if k in expose)
            if used > budget:
                raise CutError(f"prefix cache needs more than --cache-mb {cfg.cache_mb:g}")
            chunks.append(chunk)
        self._prefixes[key] = (chunks, used)
        while len(self._prefixes) > 2:  # the runners keep what they use; this only shares runs
            self._prefixes.popitem(last=False)
        return chunks, used

    def model_outputs(self, fresh: bool = False) -> list[dict[str, np.ndarray]]:
        """The whole model's fault-free outputs per batch, as the naive path computes them (cached, or
        from a new session with ``fresh``; ``_model_time`` is how long the run took, without the build)."""
        if self._model_outputs is None or fresh:
            sess = make_session(self.loaded.model, self.cfg.provider, threads=self.cfg.threads)
            n = max(1, self.data.size)
            t0 = time.perf_counter()
            self._model_outputs = [
                dict(zip(self.output_names, (np.asarray(v) for v in sess.run(
                    self.output_names, self.data.batch(lo, min(n, lo + self.cfg.batch))))))
                for lo in range(0, n, self.cfg.batch)
            ]
            self._model_time = time.perf_counter() - t0
        return self._model_outputs

    def near_model(self, outputs: dict[str, np.ndarray]) -> bool:
        """Whether ``outputs`` (over all the data) are the whole model's fault-free outputs up to
        rounding (``_noise_bounds``: the same decisions and non-finite values, within 64 units in the
        last place)."""
        full = self.model_outputs()
        want = {k: (np.concatenate([c[k] for c in full]) if len(full) > 1 else full[0][k]) for k in self.output_names}
        with np.errstate(invalid="ignore"):
            return _noise_bounds({k: np.asarray(outputs[k]) for k in want}, want) is not None

    def _values(self) -> dict[str, ir.Value]:
        if self._value_map is None:
            g = self.loaded.model.graph
            vals: dict[str, ir.Value] = {v.name: v for v in g.inputs if v.name}
            vals.update({k: v for k, v in g.initializers.items() if k})
            for node in g:
                vals.update({o.name: o for o in node.outputs if o is not None and o.name})
            self._value_map = vals
        return self._value_map

    def _make_runner(self, site: Site, needs_bits: bool, needs_values: bool) -> _SiteRunner:
        if self.cfg.mode == "naive":
            return _NaiveRunner(self, site)
        if self.cfg.mode == "suffix":
            try:
                return _SuffixRunner(self, site)
            except UnfaithfulCut as e:
                self.fallbacks[site.name] = str(e)
                return _SiteRunner(self, site, needs_bits, needs_values, rebuild=site.kind == "weight")
            except CutError as e:
                self.fallbacks[site.name] = str(e)
        return _SiteRunner(self, site, needs_bits, needs_values)

    def golden(self, site_name: str) -> dict[str, np.ndarray]:
        return self.runner(site_name, False, False).golden

    def run(self, exp: Experiment, needs_bits: bool, needs_values: bool) -> dict[str, Any]:
        """Run one experiment; returns its row (without worker/time bookkeeping)."""
        r = self.runner(exp.site, needs_bits, needs_values)
        faulty, golden = r.run_with_golden(exp)
        return classify(golden, faulty, self.primary, self.task, self.data.labels, self.cfg.critical, self.custom)

    def clean_summary(self) -> dict[str, Any]:
        """Metrics of the fault-free model on the campaign data (full session, no ports)."""
        chunks = self.model_outputs(fresh=True)  # a cold run each call (timeouts, bench); kept for the cuts
        elapsed = self._model_time
        gold = np.concatenate([c[self.primary] for c in chunks]) if len(chunks) > 1 else chunks[0][self.primary]
        task = self.task or metrics.detect_task(gold.shape, gold.dtype)
        self.task = task
        name, value = task_metric(task, gold, gold, self.data.labels)
        return {"task": task, "metric": name, "value": value, "golden_time_s": elapsed,
                "samples": self.data.size, "data": self.data.source, "primary_output": self.primary}
