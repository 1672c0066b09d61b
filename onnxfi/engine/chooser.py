"""The one place that chooses how a site's experiments run: ``choose`` returns the runner, its path and
the reason the faster paths were not taken, so every row can say how it was computed.

Paths, fastest first: ``opt-cut`` (weights with two or more planned faults: the weight's forward cone cut
from ORT's own optimized whole model, with the weight as ORT rewrote it fed per fault, exact, float16
included; ``opt-slice`` for a convolution filter: the output block holding the fault computed alone and
the rest of the cone fed, see :mod:`onnxfi.engine.optslice`; ``opt-cut-baked`` where a kernel computes a
fed weight differently: the small cone built per fault; see :mod:`onnxfi.engine.optcone`), ``cone-opt``
(the same on ORT's optimization of the cone alone),
``cone`` (prefix cache + forward-cone session; weights: fed, with rounding-ambiguous experiments re-run
baked), ``cone-split`` (weights: a small baked head per fault + a shared rest), ``cone-baked`` (weights: a
baked cone session per fault), ``port`` (one whole-model session per site with the site opened to
faults), ``rebuild`` (weights: a whole-model session per fault), ``naive`` (the reference: the model
reloaded and rewritten per fault)."""

from __future__ import annotations

from dataclasses import dataclass

from onnxfi.cut import CutError, cone_macs, cone_weight_bytes, forward_cone, weight_head, weight_start
from onnxfi.engine import cost as cost_model
from onnxfi.engine.base import Runner, is_runtime_failure
from onnxfi.engine.cone import (
    ActivationConeRunner,
    BakedWeightRunner,
    FedWeightRunner,
    FoldedWeight,
    SplitWeightRunner,
    UnfaithfulCut,
    WeightCone,
)
from onnxfi.engine.context import Context
from onnxfi.engine.naive import NaiveRunner, RebuildRunner
from onnxfi.engine.optcone import OPT_MIN_FAULTS, OptCutRunner, OptWeightRunner
from onnxfi.engine.port import PortRunner
from onnxfi.engine.rounding import split_pays
from onnxfi.engine.transient import TransientConeRunner, TransientNaiveRunner, TransientOutputRunner
from onnxfi.errors import first_line
from onnxfi.sites import Site

__all__ = ["Choice", "choose", "choose_transient"]


@dataclass
class Choice:
    runner: Runner
    path: str
    reason: str  # why a faster path was not taken ("" when none was skipped)


def choose(ctx: Context, site: Site, needs_bits: bool, needs_values: bool) -> Choice:
    """Build the runner for ``site`` on the fastest path that computes what the naive path computes.

    A path whose fault-free sessions ONNX Runtime cannot build or run (e.g. it cannot return or be fed a
    bfloat16 tensor) is a limitation of that path, not an outcome: the next slower path is taken and the
    reason says why. Only the last path's failure propagates."""
    mode = ctx.cfg.mode
    runner: Runner
    if mode == "naive":
        runner = NaiveRunner(ctx, site)
    elif mode == "suffix":
        try:
            runner = _cone(ctx, site)
        except UnfaithfulCut as e:  # (opt-cut, which cuts ORT's own graph, was tried where it pays)
            runner = (RebuildRunner(ctx, site, _join(str(e), "one whole-model session per fault"))
                      if site.kind == "weight" else _port(ctx, site, needs_bits, needs_values, str(e)))
        except CutError as e:
            runner = _whole(ctx, site, needs_bits, needs_values, str(e))
        except Exception as e:
            if not is_runtime_failure(e):
                raise
            runner = _whole(ctx, site, needs_bits, needs_values, _cannot("the cone", e))
    else:
        runner = _whole(ctx, site, needs_bits, needs_values, "")
    return Choice(runner, runner.path, runner.reason)


def choose_transient(ctx: Context, site: Site) -> Choice:
    """The runner for transient faults at activation ``site``: the packed cone (suffix mode), else the
    naive reference (naive and port modes, and where the site cannot be cut or its cone cannot run)."""
    runner: Runner
    name = site.tensor_name
    if (ctx.cfg.mode == "suffix" and not site.graph and name in ctx.output_names
            and not forward_cone(ctx.model_proto().graph, [name])):  # an output no node reads
        runner = TransientOutputRunner(ctx, site)
    elif ctx.cfg.mode == "suffix":
        try:
            runner = TransientConeRunner(ctx, site)
        except CutError as e:
            runner = TransientNaiveRunner(ctx, site, str(e))
        except Exception as e:
            if not is_runtime_failure(e):
                raise
            runner = TransientNaiveRunner(ctx, site, _cannot("the cone", e))
    else:
        runner = TransientNaiveRunner(ctx, site)
    return Choice(runner, runner.path, runner.reason)


# the fault count the cost model assumes where the plan does not say (an adaptive plan): setup costs vanish
UNKNOWN_FAULTS = 10**6


@dataclass
class _Plan:
    """What the cost model (:mod:`onnxfi.engine.cost`) says for a weight with ``k`` planned faults."""

    baked: bool  # a baked cone per fault is the cheapest path
    split: bool  # else: try the split (cheaper than fed and baked)
    baked_over_fed: bool  # where the split cannot be made: baked rather than fed
    reason: str
    reason_fed: str


def _plan_costs(ctx: Context, site: Site) -> _Plan | None:
    """The cost model's choice for a main-graph weight of a plan with known fault counts
    (``cfg.site_faults``), from the sizes of its cone and head: nodes, weight bytes and multiply-adds over
    the campaign data. None without counts (the default rules of ``_cone`` apply)."""
    cfg = ctx.cfg
    if cfg.site_faults is None or cfg.mode != "suffix" or not cfg.cost_model:
        return None
    k = cfg.site_faults.get(site.name, 0)
    if k <= 0:  # counts unknown (a plan that grows): the cheapest path per fault, setup left out
        k = UNKNOWN_FAULTS
    proto = ctx.model_proto()
    name = site.tensor_name
    shapes, n = ctx.sample_shapes(), max(1, ctx.data.size)
    batches = -(-n // max(1, cfg.batch))
    try:
        start = weight_start(proto, name)
        nodes = forward_cone(proto.graph, start)
    except CutError:
        return None

    def cost(part: list[int], macs: int) -> cost_model.ConeCost:
        return cost_model.ConeCost(cost_model.session_s(len(part), cone_weight_bytes(proto, part, [name])),
                                   cost_model.run_s(len(part), batches, macs * n))

    cone_per_sample = cone_macs(proto, nodes, shapes)
    cone = cost(nodes, cone_per_sample)
    head: cost_model.ConeCost | None = None
    # the split only where a cone run is big (rounding.split_pays): on small cones a head session costs as
    # much as the whole cone's (measured on digits_cnn: 2.8 ms for Conv+BatchNormalization+Relu, 1.4 ms
    # for the six-node cone)
    if cfg.verify and (cfg.split or (cfg.split is None and split_pays(cone_per_sample, n))):
        try:
            head_nodes = weight_head(proto, name, start)[0]
            head = cost(head_nodes, cone_macs(proto, head_nodes, shapes))
        except CutError:
            head = None
    baked = cost_model.baked_s(k, cone)
    fed = cost_model.fed_s(k, cone, cost_model.FED_RERUN if cfg.verify else 0.0)
    split = cost_model.split_s(k, cone, head) if head is not None else float("inf")
    faults = (f"{k} fault{'s' if k != 1 else ''} planned at this weight" if k != UNKNOWN_FAULTS
              else "faults at this weight not known in advance")
    if cfg.split:  # forced by the caller
        split = 0.0
    # baked unless another path is clearly cheaper: the estimates are rough, and a baked cone has no
    # rounding question to re-run
    best = min(baked * cost_model.MARGIN, split, fed)
    est = f"estimated {baked:.2g} s baked, {fed:.2g} s fed" + (f", {split:.2g} s split" if head is not None else "")
    return _Plan(baked * cost_model.MARGIN == best, split == best, baked * cost_model.MARGIN <= fed,
                 f"{faults}: a baked cone per fault is the cheapest path ({est})" if baked * cost_model.MARGIN == best
                 else f"{faults}: {'split' if split == best else 'fed'} cone ({est})",
                 f"{faults}: a baked cone per fault costs less than a fed cone ({est})")


def _cannot(what: str, e: BaseException) -> str:
    return f"onnxruntime cannot run {what} ({type(e).__name__}: {first_line(e, limit=200)})"


def _join(*reasons: str) -> str:
    return "; ".join(r for r in reasons if r)


def _whole(ctx: Context, site: Site, needs_bits: bool, needs_values: bool, reason: str) -> Runner:
    if site.kind == "weight" and site.graph:  # subgraph weights cannot be fed: rebuild per fault
        return RebuildRunner(ctx, site, _join(reason, "weight inside a subgraph"))
    return _port(ctx, site, needs_bits, needs_values, reason)


def _port(ctx: Context, site: Site, needs_bits: bool, needs_values: bool, reason: str) -> Runner:
    """The port path, or (where ONNX Runtime cannot run the site's ports) a whole model per fault."""
    try:
        return PortRunner(ctx, site, needs_bits, needs_values, reason)
    except Exception as e:
        if not is_runtime_failure(e):
            raise
        why = _join(reason, _cannot("the fault port", e))
        return RebuildRunner(ctx, site, why) if site.kind == "weight" else NaiveRunner(ctx, site, why)


def _opt_pays(ctx: Context, site: Site) -> bool:
    """Whether to try the ``opt-cut`` and ``cone-opt`` paths (:mod:`onnxfi.engine.optcone`) for a main-graph weight: in
    campaigns with the cost model (planned counts known, or a growing plan) where at least
    ``OPT_MIN_FAULTS`` faults are planned at it. Deterministic: a function of the plan alone."""
    cfg = ctx.cfg
    if cfg.mode != "suffix" or not cfg.cost_model or cfg.site_faults is None:
        return False
    k = cfg.site_faults.get(site.name, 0)
    return k <= 0 or k >= OPT_MIN_FAULTS


def _cone(ctx: Context, site: Site) -> Runner:
    if site.kind != "weight":
        return ActivationConeRunner(ctx, site)
    if site.graph:
        raise CutError("site is inside a subgraph")
    plan = _plan_costs(ctx, site)
    opt_reason = ""
    if _opt_pays(ctx, site):
        try:
            return OptCutRunner(ctx, site)
        except CutError as e:
            opt_reason = f"not opt-cut: {e}"
        except Exception as e:
            if not is_runtime_failure(e):
                raise
            opt_reason = _cannot("the cone of the optimized model", e)
        try:
            return _cone_rest(ctx, site, plan, opt_reason)
        except UnfaithfulCut as e:
            raise UnfaithfulCut(_join(str(e), opt_reason)) from None
    return _cone_rest(ctx, site, plan, "")


def _cone_rest(ctx: Context, site: Site, plan: _Plan | None, opt_reason: str) -> Runner:
    """The weight paths after ``opt-cut``: ``cone-opt`` (where it pays), then those of the cost model."""
    cfg = ctx.cfg
    baked_cone: WeightCone | None = None  # the cone cone-opt was tried on: the baked path's too
    if _opt_pays(ctx, site):
        cone0 = baked_cone = WeightCone(ctx, site, False, fed=False)
        if not cone0.quantized:
            try:
                opt = OptWeightRunner(cone0, opt_reason)
                if cfg.verify:
                    opt.check_faithful()
                return opt
            except CutError as e:  # UnfaithfulCut included: the other paths check for themselves
                opt_reason = _join(opt_reason, f"not cone-opt: {e}")
            except Exception as e:
                if not is_runtime_failure(e):
                    raise
                opt_reason = _join(opt_reason, _cannot("the optimized cone", e))
    if plan is not None and plan.baked:
        few = BakedWeightRunner(baked_cone or WeightCone(ctx, site, False, fed=False), _join(opt_reason, plan.reason))
        if cfg.verify:
            few.check_faithful()
        return few
    proto = ctx.model_proto()
    if plan is not None:
        want_head = cfg.verify and plan.split
    else:
        want_head = cfg.verify and (cfg.split or (cfg.split is None and split_pays(
            cone_macs(proto, forward_cone(proto.graph, [site.tensor_name]), ctx.loaded.value_shapes),
            ctx.data.size)))
    cone = WeightCone(ctx, site, bool(want_head))
    runner: BakedWeightRunner | SplitWeightRunner | FedWeightRunner
    if cone.quantized:
        runner = BakedWeightRunner(cone, "quantized weight, computed in integer kernels: one cone session per fault")
    else:
        split: SplitWeightRunner | None = None
        split_reason = ""
        if cone.head is not None:
            try:
                split = SplitWeightRunner(cone, plan.reason if plan is not None else "")
            except CutError:
                split = None
            except Exception as e:
                if not is_runtime_failure(e):
                    raise
                split_reason = _cannot("the split cone", e)
        if split is not None:
            runner = split
        elif plan is not None and plan.baked_over_fed:  # the split was the cheaper plan but cannot be made
            runner = BakedWeightRunner(cone, _join(split_reason, plan.reason_fed))
        else:
            try:
                runner = FedWeightRunner(cone, _join(split_reason, plan.reason if plan is not None else ""))
            except FoldedWeight as e:
                runner = BakedWeightRunner(cone, _join(split_reason, str(e)), golden=e.reference)
            except Exception as e:
                if not is_runtime_failure(e):
                    raise
                runner = BakedWeightRunner(cone, _join(split_reason, _cannot("the cone with the weight fed", e)))
    if cfg.verify:
        runner.check_faithful()
    return runner
