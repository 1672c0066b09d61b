"""Shared helpers for the model-zoo build scripts (run with the .venv-zoo interpreter).

Every script seeds its random generators with :func:`seed_everything`, writes its
``.onnx`` files next to ``registry.json``, writes its eval subsets to ``data/`` and
records each entry with :func:`record_entry`, which measures the metric by running
the exported model with onnxruntime on the committed eval subset (never the
framework's own number).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

ZOO = Path(__file__).resolve().parent.parent
DATA = ZOO / "data"
REGISTRY = ZOO / "registry.json"

DIGITS_SOURCE = {
    "name": "scikit-learn load_digits (UCI Optical Recognition of Handwritten Digits)",
    "license": "CC BY 4.0",
    "url": "https://archive.ics.uci.edu/dataset/80",
}
FASHION_SOURCE = {
    "name": "Fashion-MNIST (Debian package dataset-fashion-mnist)",
    "license": "MIT",
    "url": "https://github.com/zalandoresearch/fashion-mnist",
}
FASHION_DIR = Path("/usr/share/dataset-fashion-mnist")

SEED = 20241122


def seed_everything(seed: int = SEED) -> np.random.Generator:
    """Seed python, numpy and (when imported) torch; return a numpy Generator."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return np.random.default_rng(seed)


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """sklearn digits scaled to [0, 1], shape [N,1,8,8]; fixed stratified 80/20 split (360 test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=360, random_state=0, stratify=y)
    return x_tr, y_tr, x_te, y_te


def _read_idx(path: Path) -> np.ndarray:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_fashion_file(stem: str) -> Path:
    """Locate a Fashion-MNIST idx file (e.g. 'train-images-idx3-ubyte') installed by Debian."""
    for root in (FASHION_DIR, Path("/usr/share")):
        if not root.exists():
            continue
        for cand in sorted(root.rglob(stem + "*")):
            if cand.is_file():
                return cand
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem!r} not found; install it with: apt-get install -y dataset-fashion-mnist"
    )


def load_fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST as float32 [N,1,28,28] in [0,1] plus int64 labels (train, test)."""
    x_tr = _read_idx(find_fashion_file("train-images-idx3-ubyte"))
    y_tr = _read_idx(find_fashion_file("train-labels-idx1-ubyte"))
    x_te = _read_idx(find_fashion_file("t10k-images-idx3-ubyte"))
    y_te = _read_idx(find_fashion_file("t10k-labels-idx1-ubyte"))
    f = np.float32
    return (
        (x_tr.astype(f) / 255.0)[:, None],
        y_tr.astype(np.int64),
        (x_te.astype(f) / 255.0)[:, None],
        y_te.astype(np.int64),
    )


def save_eval(name: str, arrays: dict[str, np.ndarray]) -> Path:
    """Write a compressed, pickle-free eval subset to data/<name>.npz."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"{name}.npz"
    for k, v in arrays.items():
        assert v.dtype != object, k
    np.savez_compressed(path, **arrays)
    return path


# Detection decoding used for the recorded map50 (the graph's output is the raw [N, A, 4+1+C] tensor).
DET_SCORE_THRESHOLD = 0.25
DET_NMS_IOU = 0.45
DET_MATCH_IOU = 0.5


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [P,4] and b [Q,4] given as (x1, y1, x2, y2)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def decode_detections(
    out: np.ndarray, score_threshold: float = DET_SCORE_THRESHOLD, nms_iou: float = DET_NMS_IOU
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Raw YOLO-style output [N, A, 4+1+C] (cx, cy, w, h, objectness, class probabilities) to
    per-image (boxes [D,4] x1y1x2y2, scores [D], classes [D]): score = objectness x best class
    probability, kept when >= score_threshold, then greedy class-wise NMS at nms_iou."""
    result = []
    for det in np.asarray(out, np.float64):
        cls = det[:, 5:].argmax(axis=1)
        score = det[:, 4] * det[:, 5:].max(axis=1)
        keep = np.flatnonzero(score >= score_threshold)
        cx, cy, w, h = (det[keep, i] for i in range(4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        score, cls = score[keep], cls[keep]
        chosen: list[int] = []
        for c in np.unique(cls):
            idx = np.flatnonzero(cls == c)
            idx = idx[np.argsort(-score[idx], kind="stable")]
            while idx.size:
                chosen.append(int(idx[0]))
                idx = idx[1:][box_iou(boxes[idx[:1]], boxes[idx[1:]])[0] < nms_iou]
        sel = np.array(sorted(chosen, key=lambda i: (-score[i], i)), dtype=np.int64)
        result.append((boxes[sel], score[sel], cls[sel]))
    return result


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point interpolated AP: area under the monotone precision envelope."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def detection_metrics(
    out: np.ndarray, labels: np.ndarray, num_classes: int, match_iou: float = DET_MATCH_IOU
) -> dict[str, float]:
    """map50 (VOC all-point AP at IoU match_iou, averaged over the classes that have ground
    truth) of a raw [N, A, 4+1+C] output against padded labels [N, K, 5] (class, x1, y1, x2, y2;
    class -1 = padding), plus ``ap50_<class id>`` and precision / recall of the kept detections."""
    dets = decode_detections(out)
    aps: dict[str, float] = {}
    tp_all = n_det = n_gt = 0
    for c in range(num_classes):
        records: list[tuple[float, int, int]] = []  # (score, image, detection index)
        gts = [lab[lab[:, 0] == c, 1:5] for lab in labels]
        npos = sum(len(g) for g in gts)
        for i, (_, scores, classes) in enumerate(dets):
            records.extend((float(scores[j]), i, int(j)) for j in np.flatnonzero(classes == c))
        records.sort(key=lambda r: (-r[0], r[1], r[2]))
        used = [np.zeros(len(g), bool) for g in gts]
        tp = np.zeros(len(records))
        for k, (_, i, j) in enumerate(records):
            if len(gts[i]) == 0:
                continue
            ious = box_iou(dets[i][0][j : j + 1], gts[i])[0]
            best = int(ious.argmax())
            if ious[best] >= match_iou and not used[i][best]:
                used[i][best] = True
                tp[k] = 1.0
        tp_all += int(tp.sum())
        n_det += len(records)
        n_gt += npos
        if npos == 0:
            continue
        ctp = np.cumsum(tp)
        recall = ctp / npos
        precision = ctp / np.arange(1, len(records) + 1)
        aps[f"ap50_{c}"] = voc_ap(recall, precision)
    return {
        "map50": float(np.mean(list(aps.values()))) if aps else 0.0,
        **aps,
        "precision": tp_all / n_det if n_det else 0.0,
        "recall": tp_all / n_gt if n_gt else 0.0,
    }


def onnx_metric(
    model_path: Path,
    data_path: Path,
    task: str,
    output: str | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """The metric of an exported model on its eval subset, measured with onnxruntime."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    with np.load(data_path, allow_pickle=False) as z:
        feeds = {i.name: z[i.name] for i in sess.get_inputs()}
        labels = z["labels"]
    out_name = output or sess.get_outputs()[0].name
    out = np.asarray(sess.run([out_name], feeds)[0]).astype(np.float32)
    if task == "detection":
        assert num_classes is not None, "detection needs num_classes"
        return detection_metrics(out, labels, num_classes)
    pred = out.argmax(axis=1)
    if task == "classification":
        return {"accuracy": float(np.mean(pred == labels))}
    classes = np.union1d(np.unique(labels), np.unique(pred))
    ious = []
    for c in classes:
        inter = np.logical_and(pred == c, labels == c).sum()
        union = np.logical_or(pred == c, labels == c).sum()
        ious.append(inter / union)
    return {"miou": float(np.mean(ious)), "pixel_accuracy": float(np.mean(pred == labels))}


def input_spec(model_path: Path) -> list[dict[str, Any]]:
    """Name, shape (symbolic dims as strings) and dtype of each graph input."""
    import onnx
    from onnx import helper

    m = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    specs = []
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape: list[int | str] = [d.dim_param if d.dim_param else d.dim_value for d in tt.shape.dim]
        specs.append(
            {
                "name": inp.name,
                "shape": shape,
                "dtype": str(helper.tensor_dtype_to_np_dtype(tt.elem_type)),
            }
        )
    return specs


def op_counts(model_path: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in m.graph.node:
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def record_entry(
    name: str,
    *,
    task: str,
    eval_data: str,
    metric: str,
    framework: str,
    converter: str,
    data_source: dict[str, str],
    notes: str,
    output: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure the model with onnxruntime and write/replace its entry in registry.json."""
    model_path = ZOO / f"{name}.onnx"
    data_path = DATA / eval_data
    num_classes = (extra or {}).get("num_classes")
    metrics = onnx_metric(model_path, data_path, task, output, num_classes)
    with np.load(data_path, allow_pickle=False) as z:
        n_samples = int(z["labels"].shape[0])
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    entry: dict[str, Any] = {
        "file": model_path.name,
        "task": task,
        "inputs": input_spec(model_path),
        "outputs": [o.name for o in m.graph.output],
        "metric_output": output or m.graph.output[0].name,
        "opsets": {(d.domain or "ai.onnx"): d.version for d in m.opset_import},
        "eval_data": f"data/{eval_data}",
        "eval_samples": n_samples,
        "metric": metric,
        "value": round(metrics[metric], 6),
        "metrics": {k: round(v, 6) for k, v in metrics.items()},
        "framework": framework,
        "converter": converter,
        "data_source": data_source,
        "size_bytes": model_path.stat().st_size,
        "ops": op_counts(model_path),
        "notes": notes,
    }
    if extra:
        entry.update(extra)
    registry: dict[str, Any] = {}
    if REGISTRY.exists():
        registry = json.loads(REGISTRY.read_text())
    models = registry.get("models", {})
    models[name] = entry
    registry = {
        "schema": 1,
        "description": "onnxfi model zoo: see model_zoo/README.md. Paths are relative to this file.",
        "models": dict(sorted(models.items())),
    }
    REGISTRY.write_text(json.dumps(registry, indent=2) + "\n")
    print(f"[zoo] {name}: {metric}={metrics[metric]:.4f} ({model_path.stat().st_size / 1024:.1f} KiB)")
    return entry


class Timer:
    def __init__(self, label: str) -> None:
        self.label = label

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        print(f"[zoo] {self.label}: {time.perf_counter() - self.t0:.1f} s")
