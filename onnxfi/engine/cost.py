"""The chooser's cost model for weight sites: which path runs a site's planned faults in the least time.

Every estimate is a function of the graph, the data's shapes and the plan (how many faults each site gets),
never of a clock: every worker, run and resume of a plan takes the same path for a site, so rows do not
depend on timing (the path is stored with each row).

A weight fault on the cone paths costs, per fault:

- ``cone-baked``: a session of the baked cone with the faulty weight in it, and a run of it;
- ``cone-split``: a session of the weight's head only (the node computing with it and what ORT fuses into
  it), a run of the head and of the rest of the cone (one shared session); set up once per site: the
  rest's session and a check run;
- ``cone`` (fed): a run of one fed cone session; about half of a random plan's faults (low mantissa bits,
  extreme values, rounding-ambiguous outcomes) are re-run baked; set up once per site: the fed session and
  its golden run.

The baked cone's fault-free run is shared by every path (and by the weights of one layer). So baked wins
where few faults share a site, and wherever building a session costs less than the run it saves; split
and fed win where a site has many faults and its cone is expensive to build (large weights, many nodes)
compared with the head.

Constants: measured on 2 cores with onnxruntime 1.32 CPU (``bench/RESULTS.md``, 2026-12-07 sparse section)
on digits_cnn, a PaddleOCR classifier and ResNet-18: a session build costs about 0.5 ms, plus 0.15 ms per
node and 2 ms per MB of weights (prepacking); a run costs about 0.15 ms per call (one per batch) plus
0.02 ms per node and batch, plus one second per 1e11 multiply-adds.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConeCost", "session_s", "run_s", "FED_RERUN", "MARGIN", "baked_s", "split_s", "fed_s"]

SESSION_BASE_S = 0.5e-3
SESSION_PER_NODE_S = 0.15e-3
SESSION_PER_BYTE_S = 2e-3 / 2**20
RUN_CALL_S = 0.15e-3  # per session.run call (one per batch of the data)
RUN_PER_NODE_S = 0.02e-3
MACS_PER_S = 1e11
# share of a fed cone's faults that are run again baked (measured 0.44 on digits_cnn, 0.6 on a PaddleOCR
# classifier, for proportional plans over every bit)
FED_RERUN = 0.5
# a fed run against a baked one: the fed weight is packed on every run and the outcome's rounding checked
# (measured 2-4x on digits_cnn's convolutions; about 1.1x on ResNet-18's, where compute dominates)
FED_RUN_FACTOR = 2.0
FED_CHECK_S = 0.3e-3
# another path is taken only where it is estimated at most this share of the baked cost
MARGIN = 0.8


@dataclass(frozen=True)
class ConeCost:
    """Estimated seconds to build a session of a cone and to run it over the campaign's data."""

    session_s: float
    run_s: float


def session_s(nodes: int, weight_bytes: int) -> float:
    return SESSION_BASE_S + SESSION_PER_NODE_S * nodes + SESSION_PER_BYTE_S * weight_bytes


def run_s(nodes: int, batches: int, macs: int) -> float:
    return (RUN_CALL_S + RUN_PER_NODE_S * nodes) * max(1, batches) + macs / MACS_PER_S


def baked_s(k: int, cone: ConeCost) -> float:
    """``k`` faults as baked cones: a cone session and run per fault."""
    return k * (cone.session_s + cone.run_s)


def split_s(k: int, cone: ConeCost, head: ConeCost) -> float:
    """``k`` faults split: a head session and a run of head and rest (the cone, one call more) per fault,
    plus, once, the rest's session and a check run."""
    return cone.session_s + cone.run_s + k * (head.session_s + cone.run_s + RUN_CALL_S)


def fed_s(k: int, cone: ConeCost, rerun: float = FED_RERUN) -> float:
    """``k`` faults fed: a fed run and its rounding check per fault, a share ``rerun`` of them again baked,
    plus, once, the fed session and its golden run."""
    fed_run = FED_RUN_FACTOR * cone.run_s
    return cone.session_s + fed_run + k * (fed_run + FED_CHECK_S + rerun * (cone.session_s + cone.run_s))
