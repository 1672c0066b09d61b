"""Train a tiny YOLO-style detector on synthetic shapes and export shapes_det.onnx.

Each sample is a 64x64 grayscale image (noisy background, 8-bit pixel values k/255) holding
1-3 non-overlapping filled shapes: 0 square, 1 circle, 2 triangle (upright), 10-22 px wide,
brighter than the background. Everything is drawn with numpy from a seeded Generator (no
dataset download).

Input ``input`` [N,1,64,64] float32 in [0,1]; output ``detections`` [N,64,8]: one row per
cell of the 8x8 grid (stride 8, one anchor of 16 px per cell, cell order row-major), each
row (cx, cy, w, h) in input pixels, objectness after Sigmoid, 3 class probabilities after
Softmax. The box decoding (YOLOv5 style: cx = (gx + 2 sigmoid(tx) - 0.5) * 8,
w = 16 (2 sigmoid(tw))^2) is in the graph; score threshold and NMS are not.
Eval subset: data/shapes_det_eval.npz, 256 images (seed 5); labels [256,3,5] float32 rows
(class, x1, y1, x2, y2) in pixels (x2/y2 exclusive edge), class -1 = padding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DET_MATCH_IOU,
    DET_NMS_IOU,
    DET_SCORE_THRESHOLD,
    ZOO,
    Timer,
    detection_metrics,
    record_entry,
    save_eval,
    seed_everything,
)
from _torch_utils import export, predict

SIZE = 64
STRIDE = 8
GRID = SIZE // STRIDE
ANCHOR = 16.0
CLASSES = ["square", "circle", "triangle"]
NUM_CLASSES = len(CLASSES)
MAX_OBJECTS = 3
NOISE = 0.06  # std of the background noise
SHAPES_SOURCE = {
    "name": "synthetic shapes drawn with numpy by model_zoo/build/shapes_det.py (seeded)",
    "license": "CC0-1.0 (generated here)",
    "url": "model_zoo/build/shapes_det.py",
}

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5  # pixel centres


def shape_mask(kind: int, x1: int, y1: int, size: int) -> np.ndarray:
    """Boolean [64,64] mask of a filled shape whose bounding box is (x1, y1, x1+size, y1+size)."""
    inside = (_XX >= x1) & (_XX < x1 + size) & (_YY >= y1) & (_YY < y1 + size)
    if kind == 0:
        return inside
    if kind == 1:
        r = size / 2
        return (_XX - x1 - r) ** 2 + (_YY - y1 - r) ** 2 <= r * r
    # upright triangle: apex at the top centre, base along the bottom edge
    rel = (_YY - y1) / size  # 0 at the top, 1 at the bottom
    half = rel * size / 2
    return inside & (np.abs(_XX - x1 - size / 2) <= half + 0.5)


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n images [n,1,64,64] float32 and padded labels [n,3,5] float32 (class -1 = padding)."""
    imgs = np.empty((n, 1, SIZE, SIZE), np.float32)
    labels = np.full((n, MAX_OBJECTS, 5), -1.0, np.float32)
    for i in range(n):
        base = rng.uniform(0.0, 0.4)
        img = base + rng.normal(0.0, NOISE, size=(SIZE, SIZE))
        k = int(rng.integers(1, MAX_OBJECTS + 1))
        boxes: list[tuple[int, int, int]] = []
        tries = 0
        while len(boxes) < k:
            tries += 1
            if tries > 50:  # the first boxes can leave no room for the next one: start over
                boxes, tries = [], 0
            size = int(rng.integers(10, 23))
            x1, y1 = (int(v) for v in rng.integers(0, SIZE - size + 1, size=2))
            # at least 2 px of background between boxes
            if all(
                x1 >= bx + bs + 2 or bx >= x1 + size + 2 or y1 >= by + bs + 2 or by >= y1 + size + 2
                for bx, by, bs in boxes
            ):
                boxes.append((x1, y1, size))
        for j, (x1, y1, size) in enumerate(boxes):
            kind = int(rng.integers(NUM_CLASSES))
            level = base + rng.uniform(0.3, 0.6)
            img = np.where(shape_mask(kind, x1, y1, size), level + rng.normal(0.0, 0.05, (SIZE, SIZE)), img)
            labels[i, j] = (kind, x1, y1, x1 + size, y1 + size)
        # 8-bit pixels (/255) like a camera image; this also keeps the committed eval subset small
        imgs[i, 0] = np.round(np.clip(img, 0.0, 1.0) * 255.0) / 255.0
    return imgs, labels


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ShapesDet(nn.Module):
    """5 Conv-BN-ReLU (3 MaxPools to the 8x8 grid) + 1x1 head with in-graph box decoding."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16),
            nn.MaxPool2d(2),  # 32
            conv_bn(16, 32),
            nn.MaxPool2d(2),  # 16
            conv_bn(32, 48),
            nn.MaxPool2d(2),  # 8
            conv_bn(48, 64),
            conv_bn(64, 64),
        )
        self.head = nn.Conv2d(64, 5 + NUM_CLASSES, 1)
        gy, gx = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        self.register_buffer("grid", torch.stack([gx, gy], -1).reshape(1, GRID * GRID, 2).float())

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Head logits [N, 64, 8] (tx, ty, tw, th, objectness, class logits)."""
        return self.head(self.features(x)).flatten(2).transpose(1, 2)

    def decode(self, t: torch.Tensor) -> torch.Tensor:
        xy = (self.grid + 2.0 * torch.sigmoid(t[..., 0:2]) - 0.5) * STRIDE
        wh = ANCHOR * (2.0 * torch.sigmoid(t[..., 2:4])) ** 2
        obj = torch.sigmoid(t[..., 4:5])
        cls = torch.softmax(t[..., 5:], dim=-1)
        return torch.cat([xy, wh, obj, cls], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.raw(x))


def targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-cell objectness [n,64], class [n,64] (-1: no object) and box [n,64,4] (x1y1x2y2)."""
    n = len(labels)
    obj = np.zeros((n, GRID * GRID), np.float32)
    cls = np.full((n, GRID * GRID), -1, np.int64)
    box = np.zeros((n, GRID * GRID, 4), np.float32)
    for i, lab in enumerate(labels):
        for c, x1, y1, x2, y2 in lab[lab[:, 0] >= 0]:
            cell = int((y1 + y2) / 2 // STRIDE) * GRID + int((x1 + x2) / 2 // STRIDE)
            obj[i, cell], cls[i, cell], box[i, cell] = 1.0, int(c), (x1, y1, x2, y2)
    return obj, cls, box


def iou_xyxy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    union = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter
    return inter / union.clamp(min=1e-6)


def det_loss(
    model: ShapesDet, xb: torch.Tensor, obj: torch.Tensor, cls: torch.Tensor, box: torch.Tensor
) -> torch.Tensor:
    """Objectness BCE on every cell; (1 - IoU) + L1 box loss and class CE on the responsible cells."""
    t = model.raw(xb)
    pos = cls >= 0
    loss_obj = nn.functional.binary_cross_entropy_with_logits(t[..., 4], obj)
    d = model.decode(t)[pos]
    pred = torch.cat([d[:, :2] - d[:, 2:4] / 2, d[:, :2] + d[:, 2:4] / 2], 1)
    loss_box = (1.0 - iou_xyxy(pred, box[pos])).mean() + nn.functional.l1_loss(pred, box[pos]) / STRIDE
    loss_cls = nn.functional.cross_entropy(t[..., 5:][pos], cls[pos])
    return 5.0 * loss_obj + loss_box + loss_cls


def train_det(model: ShapesDet, rng: np.random.Generator, rounds: int, per_round: int, epochs: int) -> None:
    """AdamW + one-cycle over `rounds` fresh sets of `per_round` images, `epochs` epochs each."""
    batch = 32
    steps = rounds * epochs * (per_round // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    for rnd in range(rounds):
        x, labels = make_images(per_round, rng)
        obj, cls, box = (torch.from_numpy(a) for a in targets(labels))
        xt = torch.from_numpy(x)
        for ep in range(epochs):
            model.train()
            total = 0.0
            order = torch.from_numpy(rng.permutation(per_round))
            for s in range(per_round // batch):
                idx = order[s * batch : (s + 1) * batch]
                opt.zero_grad()
                loss = det_loss(model, xt[idx], obj[idx], cls[idx], box[idx])
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item()
            mean = total / (per_round // batch)
            print(f"  shapes r{rnd} epoch {ep + 1}/{epochs} loss {mean:.4f}", flush=True)


def fix_output_shape(path: Path) -> None:
    """Declare the output as [N, 64, 8]: the exporter names its last dim after the Concat."""
    m = onnx.load(str(path))
    dims = m.graph.output[0].type.tensor_type.shape.dim
    for dim, value in zip(dims, ("N", GRID * GRID, 5 + NUM_CLASSES), strict=True):
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def main() -> None:
    rng = seed_everything()
    torch.set_num_threads(1)  # a tiny model: one thread is about as fast and leaves the other core free
    model = ShapesDet()
    with Timer("shapes_det training"):
        train_det(model, rng, rounds=4, per_round=3000, epochs=2)
    x_ev, l_ev = make_images(256, np.random.default_rng(5))
    torch_m = detection_metrics(predict(model, x_ev, 64), l_ev, NUM_CLASSES)
    print(f"[zoo] shapes_det torch metrics {torch_m}")
    path = ZOO / "shapes_det.onnx"
    export(model, torch.from_numpy(x_ev[:2]), path, fold_bn=False, output_name="detections")
    fix_output_shape(path)
    save_eval("shapes_det_eval", {"input": x_ev, "labels": l_ev})
    record_entry(
        "shapes_det",
        task="detection",
        eval_data="shapes_det_eval.npz",
        metric="map50",
        framework=f"pytorch {torch.__version__}",
        converter="torch.onnx.export (TorchScript exporter, dynamo=False, do_constant_folding=False)",
        data_source=SHAPES_SOURCE,
        notes=(
            "Tiny YOLO-style detector: 5 Conv-BN-ReLU (16/32/48/64/64 channels, 3 MaxPools) + 1x1 Conv head "
            "on an 8x8 grid, one 16 px anchor per cell; box decoding, Sigmoid objectness and Softmax class "
            "probabilities are in the graph, output detections [N,64,8] = (cx, cy, w, h in pixels, "
            "objectness, p(square), p(circle), p(triangle)). Decoding outside the graph: score = "
            f"objectness x best class probability >= {DET_SCORE_THRESHOLD}, class-wise greedy NMS at IoU "
            f"{DET_NMS_IOU}; map50 = VOC all-point AP at IoU {DET_MATCH_IOU} averaged over the 3 classes. "
            "Data: 64x64 grayscale noisy backgrounds with 1-3 non-overlapping filled shapes (10-22 px), "
            "drawn with numpy; trained on 4x3,000 fresh images (2 epochs each). Eval subset: 256 images "
            "(seed 5), labels [256,3,5] float32 (class, x1, y1, x2, y2), class -1 = padding."
        ),
        extra={
            "classes": CLASSES,
            "num_classes": NUM_CLASSES,
            "detection": {
                "output_layout": "[N, A, 4+1+C]: cx, cy, w, h (pixels), objectness, C class probabilities",
                "grid": [GRID, GRID],
                "stride": STRIDE,
                "anchors_per_cell": 1,
                "score": "objectness * max class probability",
                "score_threshold": DET_SCORE_THRESHOLD,
                "nms": "class-wise greedy",
                "nms_iou": DET_NMS_IOU,
                "match_iou": DET_MATCH_IOU,
                "ap": "VOC all-point interpolation, mean over classes with ground truth",
                "labels": "[M, K, 5] float32 rows (class, x1, y1, x2, y2) in pixels, class -1 = padding",
            },
        },
    )


if __name__ == "__main__":
    main()
