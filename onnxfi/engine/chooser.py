"""The one place that chooses how a site's experiments run: ``choose`` returns the runner, its path and
the reason the faster paths were not taken, so every row can say how it was computed.

Paths, fastest first: ``cone`` (prefix cache + forward-cone session; weights: fed, with rounding-ambiguous
experiments re-run baked), ``cone-split`` (weights: a small baked head per fault + a shared rest),
``cone-baked`` (weights: a baked cone session per fault), ``port`` (one whole-model session per site with
the site opened to faults), ``rebuild`` (weights: a whole-model session per fault), ``naive`` (the
reference: the model reloaded and rewritten per fault)."""

from __future__ import annotations

from dataclasses import dataclass

from onnxfi.cut import CutError, cone_macs, forward_cone
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
        except UnfaithfulCut as e:
            runner = (RebuildRunner(ctx, site, str(e)) if site.kind == "weight"
                      else _port(ctx, site, needs_bits, needs_values, str(e)))
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


def _cone(ctx: Context, site: Site) -> Runner:
    if site.kind != "weight":
        return ActivationConeRunner(ctx, site)
    cfg = ctx.cfg
    if site.graph:
        raise CutError("site is inside a subgraph")
    proto = ctx.model_proto()
    want_head = cfg.verify and (cfg.split or (cfg.split is None and split_pays(
        cone_macs(proto, forward_cone(proto.graph, [site.tensor_name]), ctx.loaded.value_shapes), ctx.data.size)))
    cone = WeightCone(ctx, site, bool(want_head))
    runner: BakedWeightRunner | SplitWeightRunner | FedWeightRunner
    if cone.quantized:
        runner = BakedWeightRunner(cone, "quantized weight, computed in integer kernels: one cone session per fault")
    else:
        split: SplitWeightRunner | None = None
        split_reason = ""
        if cone.head is not None:
            try:
                split = SplitWeightRunner(cone)
            except CutError:
                split = None
            except Exception as e:
                if not is_runtime_failure(e):
                    raise
                split_reason = _cannot("the split cone", e)
        if split is not None:
            runner = split
        else:
            try:
                runner = FedWeightRunner(cone, split_reason)
            except FoldedWeight as e:
                runner = BakedWeightRunner(cone, _join(split_reason, str(e)), golden=e.reference)
            except Exception as e:
                if not is_runtime_failure(e):
                    raise
                runner = BakedWeightRunner(cone, _join(split_reason, _cannot("the cone with the weight fed", e)))
    if cfg.verify:
        runner.check_faithful()
    return runner
