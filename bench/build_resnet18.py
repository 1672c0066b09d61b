"""Export a seeded, untrained ResNet-18 (32x32 inputs) to ONNX and a seeded random input batch for the bench.

Usage: .venv-bench/bin/python bench/build_resnet18.py [--out bench/.cache] [--batch 64] [--force]
Writes (input ``input`` [N,3,32,32], output ``logits`` [N,10]; every initializer keeps its PyTorch name):
resnet18.onnx, BatchNormalization kept separate (every PyTorch tensor is a fault site);
resnet18_fused.onnx, the same network with each BatchNorm folded into its Conv, as an eval-mode export
with constant folding ships it; and resnet18_batch<B>.npz. No download.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_models import ResNet18, fuse_batchnorm

SEED = 0


def _export(model: torch.nn.Module, example: np.ndarray, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.from_numpy(example),), str(path),
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
            opset_version=17, do_constant_folding=False,
            training=torch.onnx.TrainingMode.EVAL, dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    proto.producer_name = "onnxfi bench (torch.onnx, TorchScript exporter)"
    onnx.save(proto, str(path))


def build(out: Path, batch: int, force: bool = False) -> tuple[Path, Path, Path]:
    """(resnet18.onnx, resnet18_fused.onnx, the input batch .npz), built unless they exist."""
    out.mkdir(parents=True, exist_ok=True)
    model_path, fused_path = out / "resnet18.onnx", out / "resnet18_fused.onnx"
    data_path = out / f"resnet18_batch{batch}.npz"
    if model_path.exists() and fused_path.exists() and data_path.exists() and not force:
        return model_path, fused_path, data_path
    torch.manual_seed(SEED)
    model = ResNet18()
    # Untrained, but with non-trivial BatchNorm statistics so activations stay in a realistic range
    # and the ten logits differ between images.
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1.0 + 0.1 * torch.randn(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    model.eval()
    x = np.random.default_rng(SEED).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    _export(model, x[:2], model_path)
    fused = fuse_batchnorm(model)
    with torch.no_grad():
        diff = float((fused(torch.from_numpy(x)) - model(torch.from_numpy(x))).abs().max())
    assert diff < 1e-4, f"folding BatchNorm changed the outputs by {diff}"
    _export(fused, x[:2], fused_path)
    np.savez(data_path, input=x)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[bench] wrote {model_path} ({n_params / 1e6:.1f}M parameters), {fused_path.name} and {data_path.name}")
    return model_path, fused_path, data_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / ".cache")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--force", action="store_true", help="rebuild even if the files exist")
    args = ap.parse_args(argv)
    build(args.out, args.batch, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
