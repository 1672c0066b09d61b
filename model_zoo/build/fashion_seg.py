"""Train a small U-Net-style segmentation network on synthetic Fashion-MNIST canvases.

Each sample is a 64x64 canvas with 2-3 Fashion-MNIST items (28x28) pasted at random,
non-overlapping positions. Per-pixel labels: 0 background, 1..10 = Fashion-MNIST class + 1
(pixels of an item brighter than 0.05 after /255 scaling; darker pixels count as background).
Input ``input`` [N,1,64,64] float32, output ``logits`` [N,11,64,64].
Eval subset: data/fashion_seg_eval.npz, 256 canvases built from the official test split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    FASHION_SOURCE,
    ZOO,
    Timer,
    load_fashion,
    onnx_metric,
    record_entry,
    save_eval,
    seed_everything,
)
from _torch_utils import export, predict, train

SIZE = 64
ITEM = 28
NUM_CLASSES = 11
THRESHOLD = 0.05


def make_canvases(
    x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """n canvases [n,1,64,64] float32 and labels [n,64,64] int64."""
    imgs = np.zeros((n, 1, SIZE, SIZE), np.float32)
    labels = np.zeros((n, SIZE, SIZE), np.int64)
    for i in range(n):
        k = int(rng.integers(2, 4))
        boxes: list[tuple[int, int]] = []
        tries = 0
        while len(boxes) < k:
            tries += 1
            if tries > 50:  # the first boxes can leave no room for the next one: start over
                boxes, tries = [], 0
            r, c = (int(v) for v in rng.integers(0, SIZE - ITEM + 1, size=2))
            if all(abs(r - r2) >= ITEM or abs(c - c2) >= ITEM for r2, c2 in boxes):
                boxes.append((r, c))
        for r, c in boxes:
            j = int(rng.integers(len(x)))
            item = x[j, 0]
            imgs[i, 0, r : r + ITEM, c : c + ITEM] = item
            labels[i, r : r + ITEM, c : c + ITEM] = np.where(item > THRESHOLD, y[j] + 1, 0)
    return imgs, labels


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyUNet(nn.Module):
    def __init__(self, c: tuple[int, int, int, int] = (8, 16, 32, 64)) -> None:
        super().__init__()
        self.enc1 = conv_bn(1, c[0])  # 64
        self.enc2 = conv_bn(c[0], c[1])  # 32
        self.enc3 = conv_bn(c[1], c[2])  # 16
        self.bott = nn.Sequential(conv_bn(c[2], c[3]), conv_bn(c[3], c[3]))  # 8
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec3 = conv_bn(c[3] + c[2], c[2])
        self.dec2 = conv_bn(c[2] + c[1], c[1])
        self.dec1 = conv_bn(c[1] + c[0], c[0])
        self.head = nn.Conv2d(c[0], NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        e3 = self.enc3(self.pool(e2))
        b = self.bott(self.pool(e3))
        d3 = self.dec3(torch.cat([self.up(b), e3], 1))
        d2 = self.dec2(torch.cat([self.up(d3), e2], 1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], 1))
        return self.head(d1)


def seg_metrics(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    classes = np.union1d(np.unique(labels), np.unique(pred))
    ious = [
        np.logical_and(pred == c, labels == c).sum() / np.logical_or(pred == c, labels == c).sum()
        for c in classes
    ]
    return {"miou": float(np.mean(ious)), "pixel_accuracy": float(np.mean(pred == labels))}


def main() -> None:
    rng = seed_everything()
    x_tr, y_tr, x_te, y_te = load_fashion()
    model = TinyUNet()
    with Timer("fashion_seg training"):
        for rnd in range(4):
            xs, ls = make_canvases(x_tr, y_tr, 6000, rng)
            train(
                model,
                xs,
                ls,
                epochs=2,
                lr=3e-3 if rnd < 3 else 1e-3,
                batch_size=32,
                rng=rng,
                log=f"seg r{rnd}",
            )
    x_ev, l_ev = make_canvases(x_te, y_te, 256, np.random.default_rng(3))
    torch_m = seg_metrics(predict(model, x_ev, 64).argmax(1), l_ev)
    print(f"[zoo] fashion_seg torch metrics {torch_m}")
    baseline = seg_metrics(np.zeros_like(l_ev), l_ev)
    print(f"[zoo] fashion_seg all-background baseline {baseline}")
    path = ZOO / "fashion_seg.onnx"
    export(model, torch.from_numpy(x_ev[:2]), path, fold_bn=False)
    data = save_eval("fashion_seg_eval", {"input": x_ev, "labels": l_ev})
    onnx_m = onnx_metric(path, data, "segmentation")
    record_entry(
        "fashion_seg",
        task="segmentation",
        eval_data="fashion_seg_eval.npz",
        metric="miou",
        framework=f"pytorch {torch.__version__}",
        converter="torch.onnx.export (TorchScript exporter, dynamo=False, do_constant_folding=False)",
        data_source=FASHION_SOURCE,
        notes=(
            "Tiny U-Net (3 down / 3 up levels, Conv-BN-ReLU, nearest Upsample, skip Concat) on 64x64 "
            "canvases holding 2-3 non-overlapping Fashion-MNIST items; 11 classes (0 background, "
            "1..10 = Fashion-MNIST class + 1, item pixels > 0.05). mIoU is the mean IoU over the classes "
            "present in the labels or the prediction. Eval subset: 256 canvases from the test split "
            f"(seed 3). All-background baseline: mIoU {baseline['miou']:.4f}, "
            f"pixel accuracy {baseline['pixel_accuracy']:.4f}."
        ),
        extra={
            "num_classes": NUM_CLASSES,
            "baseline_all_background": {k: round(v, 6) for k, v in baseline.items()},
            "pixel_accuracy": round(onnx_m["pixel_accuracy"], 6),
        },
    )


if __name__ == "__main__":
    main()
