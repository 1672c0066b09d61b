"""What every runner works from: the model and its sites, the data, and the fault-free runs shared
between sites (the prefix cache and the whole model's outputs). Runners receive a Context; they never
import the engine, and report their path through their own attributes, never into the context."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxfi.cut import CutError
from onnxfi.data import Dataset, make_dataset
from onnxfi.engine.config import EngineConfig
from onnxfi.engine.rounding import noise_bounds
from onnxfi.errors import OnnxfiError
from onnxfi.model import LoadedModel, load_model
from onnxfi.runtime import concat_batches, make_session, run_batches, run_chunks
from onnxfi.scoring import OutputChoice, choose_output, describe_shapes
from onnxfi.sites import SiteIndex, enumerate_sites

__all__ = ["Context"]

Chunks = list[dict[str, np.ndarray]]


class Context:
    """The model, its site index and the campaign data, loaded once per worker, and the fault-free runs
    that several sites share."""

    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.loaded: LoadedModel = load_model(cfg.model_path, cfg.input_shapes, check=cfg.check)
        self.index: SiteIndex = enumerate_sites(self.loaded.model, self.loaded.value_shapes)
        specs = self.loaded.inputs()
        self.data: Dataset = make_dataset(specs, cfg.data_path, cfg.data_loader, seed=cfg.data_seed,
                                          samples=cfg.samples, overrides=cfg.input_shapes, allow_cast=cfg.allow_cast)
        self.output_names: list[str] = [o.name for o in self.loaded.outputs()]
        if cfg.output is not None and cfg.output not in self.output_names:  # before running the model
            shapes = describe_shapes((o.name, o.shape) for o in self.loaded.outputs())
            raise OnnxfiError(f"--output {cfg.output!r} is not a model output; outputs: {shapes}")
        self.prefix_runs = 0  # fault-free prefix runs made (sites that expose the same values share one)
        self._proto: onnx.ModelProto | None = None
        self._model_bytes: bytes | None = None
        self._value_map: dict[str, ir.Value] | None = None
        self._prefixes: OrderedDict[tuple[str, ...], tuple[Chunks, int]] = OrderedDict()
        self._model_outputs: Chunks | None = None
        self.model_time = 0.0  # seconds of the last whole-model fault-free run (without the session build)
        # The scored output and how it is read, chosen once per worker from the clean run over the eval data
        # (onnxfi.scoring: the same model and data give every worker the same choice); the run is kept.
        clean = concat_batches(self.model_outputs())
        self.choice: OutputChoice = choose_output(clean, self.data.labels, cfg.output, cfg.task,
                                                   samples=self.data.size)
        self.primary = self.choice.name

    def session(self, model: ir.Model | bytes, threads: int | None = None) -> Any:
        """A session on the configured provider (``threads`` overrides the configured thread count)."""
        return make_session(model, self.cfg.provider, threads=threads if threads is not None else self.cfg.threads)

    def run_all(self, session: Any, extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every model output of ``session`` over all the data (``extra`` feeds added to each batch)."""
        return run_batches(session, self.data, self.output_names, self.cfg.batch, extra)

    def model_proto(self) -> onnx.ModelProto:
        if self._proto is None:
            self._proto = ir.to_proto(self.loaded.model)
        return self._proto

    def prefix(self, expose: list[str]) -> tuple[Chunks, int]:
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
        exposed, used = set(expose), [0]

        def budget(chunk: dict[str, np.ndarray]) -> None:  # stop as soon as the cache would be over budget
            used[0] += sum(v.nbytes for k, v in chunk.items() if k in exposed)
            if used[0] > cfg.cache_mb * 2**20:
                raise CutError(f"prefix cache needs more than --cache-mb {cfg.cache_mb:g}")

        chunks = run_chunks(make_session(source, cfg.provider, threads=cfg.threads), self.data, batch=cfg.batch,
                            keep_feeds=True, each=budget)
        self.prefix_runs += 1
        self._prefixes[key] = (chunks, used[0])
        while len(self._prefixes) > 2:  # the runners keep what they use; this only shares runs
            self._prefixes.popitem(last=False)
        return chunks, used[0]

    def model_outputs(self, fresh: bool = False) -> Chunks:
        """The whole model's fault-free outputs per batch, as the naive path computes them (cached, or
        from a new session with ``fresh``; ``model_time`` is how long the run took, without the build)."""
        if self._model_outputs is None or fresh:
            sess = make_session(self.loaded.model, self.cfg.provider, threads=self.cfg.threads)
            t0 = time.perf_counter()
            self._model_outputs = run_chunks(sess, self.data, self.output_names, self.cfg.batch)
            self.model_time = time.perf_counter() - t0
        return self._model_outputs

    def near_model(self, outputs: dict[str, np.ndarray]) -> bool:
        """Whether ``outputs`` (over all the data) are the whole model's fault-free outputs up to
        rounding (``rounding.noise_bounds``: the same decisions and non-finite values, within 64 units
        in the last place)."""
        want = concat_batches(self.model_outputs())
        with np.errstate(invalid="ignore"):
            return noise_bounds({k: np.asarray(outputs[k]) for k in want}, want) is not None

    def _values(self) -> dict[str, ir.Value]:
        if self._value_map is None:
            g = self.loaded.model.graph
            vals: dict[str, ir.Value] = {v.name: v for v in g.inputs if v.name}
            vals.update({k: v for k, v in g.initializers.items() if k})
            for node in g:
                vals.update({o.name: o for o in node.outputs if o is not None and o.name})
            self._value_map = vals
        return self._value_map
