"""Engine configuration: everything a worker needs to rebuild the same sessions and data."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["EngineConfig", "MODES"]

# "suffix": per site, a cached fault-free prefix and a session of the site's forward cone only (falls
# back to "port" where a model cannot be cut); "port": one whole-model session per site with the site
# opened to faults; "naive": a rebuilt model and a new session per fault.
MODES = ("suffix", "port", "naive")


@dataclass
class EngineConfig:
    """Everything a worker needs to rebuild the same sessions and data (plain, picklable values)."""

    model_path: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    check: bool = True
    data_path: str | None = None
    # a data-loader script, absolute "PATH.py:FUNC" (onnxfi.data.load_loader): each worker imports and calls
    # it itself, so it must give the same data every time; exclusive with data_path
    data_loader: str | None = None
    allow_cast: bool = False  # data of another dtype than its input's converted even where values change
    samples: int = 16
    data_seed: int = 0
    provider: str = "cpu"
    threads: int | None = None
    batch: int = 256
    output: str | None = None
    task: str | None = None
    critical: float = 0.01
    metric: str | None = None
    mode: str = "suffix"  # one of MODES
    max_sessions: int = 32
    cache_mb: float = 1024.0
    shortcuts: bool = True
    # suffix mode, weights: re-run with the weight baked in every experiment whose outcome the
    # rounding difference between a fed and a baked weight could change (exact against naive)
    verify: bool = True
    # suffix mode, float weights: split the baked cone into a per-fault head session and a shared rest
    # (exact, no re-runs) where that reproduces the baked cone; None: only where one cone run is at least
    # rounding.SPLIT_MIN_MACS (on small models a session build per fault costs more than the re-runs it saves)
    split: bool | None = None
    # persistent faults the campaign's plan puts at each site (run_campaign sets it, never stored): the
    # chooser's cost model (onnxfi.engine.cost) picks each weight's path from it and the cone's size, and
    # the prefix run exposes what all the planned baked cones read at once. Empty: counts not known (a plan
    # that grows), the cheapest path per fault. None (the API, tests): the chooser's default rules.
    site_faults: dict[str, int] | None = None
    # False: the chooser ignores site_faults and takes the fed/split paths by its default rules (what the
    # tests of those paths, and a comparison with the cost model, run)
    cost_model: bool = True
