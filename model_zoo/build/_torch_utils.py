"""PyTorch training and ONNX export helpers shared by the zoo build scripts."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = rng.permutation(len(x))
    out = []
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        out.append((torch.from_numpy(x[idx]), torch.from_numpy(y[idx])))
    return out


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    outs = [model(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict(model, x).argmax(1) == y))


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    rng: np.random.Generator,
    weight_decay: float = 1e-4,
    augment: Callable[[torch.Tensor, np.random.Generator], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    log: str = "",
) -> None:
    """Adam + one-cycle schedule, cross-entropy (per-pixel for [N,C,H,W] outputs)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    for ep in range(epochs):
        model.train()
        total = 0.0
        for xb, yb in batches(x, y, batch_size, rng):
            if augment is not None:
                xb = augment(xb, rng)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
            if after_step is not None:
                after_step()
            total += loss.item() * len(xb)
        print(f"  {log} epoch {ep + 1}/{epochs} loss {total / len(x):.4f}", flush=True)


def export(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    fold_bn: bool,
    output_name: str = "logits",
    opset: int = 17,
) -> None:
    """TorchScript-based torch.onnx export with a dynamic batch dimension.

    ``fold_bn=False`` turns off constant folding, which keeps BatchNormalization nodes
    (the eval-mode Conv+BN fusion pass only runs when constant folding is on).
    """
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["input"],
            output_names=[output_name],
            dynamic_axes={"input": {0: "N"}, output_name: {0: "N"}},
            opset_version=opset,
            do_constant_folding=fold_bn,
            training=torch.onnx.TrainingMode.EVAL,
            dynamo=False,
        )
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    n_bn = sum(n.op_type == "BatchNormalization" for n in m.graph.node)
    has_bn = any(isinstance(mod, nn.BatchNorm2d) for mod in model.modules())
    if has_bn and not fold_bn:
        assert n_bn > 0, "expected BatchNormalization nodes in the unfolded export"
    if fold_bn:
        assert n_bn == 0, "expected BatchNormalization folded into Conv"
    # strip the producer-specific doc strings so rebuilds are byte-stable
    m.producer_name = "onnxfi-model-zoo (torch.onnx, TorchScript exporter)"
    m.producer_version = torch.__version__
    onnx.save(m, str(path))
