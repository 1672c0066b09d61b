"""Train a CNN on Fashion-MNIST and export it (BN separate, BN folded, magnitude-pruned 50% / 90%).

Input ``input`` [N,1,28,28] float32 in [0,1] (pixel / 255), output ``logits`` [N,10].
Writes fashion_cnn.onnx, fashion_cnn_bnfold.onnx, fashion_cnn_pruned50.onnx,
fashion_cnn_pruned90.onnx, data/fashion_eval.npz (1,000 test images, 100 per class) and
build/.cache/fashion_calib.npz (training images for int8 calibration, not committed).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils import prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FASHION_SOURCE, ZOO, Timer, load_fashion, record_entry, save_eval, seed_everything
from _torch_utils import accuracy, export, train

CACHE = Path(__file__).resolve().parent / ".cache"
FRAMEWORK = f"pytorch {torch.__version__}"
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


class FashionCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, 32),
            nn.MaxPool2d(2),  # 14x14
            *block(32, 64),
            nn.MaxPool2d(2),  # 7x7
            *block(64, 128),
            nn.MaxPool2d(2),  # 3x3
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 3 * 3, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def flip_augment(xb: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Horizontal flip of a random half of the batch."""
    mask = torch.from_numpy(rng.random(len(xb)) < 0.5)
    xb = xb.clone()
    xb[mask] = torch.flip(xb[mask], dims=(3,))
    return xb


def eval_subset(x: np.ndarray, y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])
    return np.sort(idx)


def onnx_sparsity(path: Path) -> float:
    m = onnx.load(str(path))
    total = zeros = 0
    for init in m.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim >= 2:  # conv / linear weights only
            total += w.size
            zeros += int(np.sum(w == 0))
    return zeros / total


def pruned_copy(
    base: nn.Module, amount: float, x_tr: np.ndarray, y_tr: np.ndarray, rng: np.random.Generator
) -> nn.Module:
    model = copy.deepcopy(base)
    params = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    # brief fine-tune with the masks in place (weight = weight_orig * weight_mask)
    train(
        model, x_tr, y_tr, epochs=2, lr=1e-3, batch_size=128, rng=rng,
        augment=flip_augment, log=f"prune{int(amount * 100)}",
    )  # fmt: skip
    for m, name in params:
        prune.remove(m, name)
    return model


def main() -> None:
    rng = seed_everything()
    x_tr, y_tr, x_te, y_te = load_fashion()
    model = FashionCNN()
    with Timer("fashion_cnn training"):
        train(
            model, x_tr, y_tr, epochs=6, lr=3e-3, batch_size=128, rng=rng,
            augment=flip_augment, log="fashion",
        )  # fmt: skip
    print(f"[zoo] fashion_cnn torch test accuracy (10k) {accuracy(model, x_te, y_te):.4f}")

    idx = eval_subset(x_te, y_te, 100, np.random.default_rng(1))
    save_eval("fashion_eval", {"input": x_te[idx], "labels": y_te[idx]})
    CACHE.mkdir(exist_ok=True)
    calib = np.random.default_rng(2).choice(len(x_tr), 512, replace=False)
    np.savez_compressed(CACHE / "fashion_calib.npz", input=x_tr[calib])
    example = torch.from_numpy(x_te[:2])
    common = dict(
        task="classification",
        eval_data="fashion_eval.npz",
        metric="accuracy",
        data_source=FASHION_SOURCE,
        extra={"classes": CLASSES},
    )
    arch = "3x (Conv3x3-BN-ReLU-MaxPool) 32/64/128 channels + Linear(1152,10) on 28x28 Fashion-MNIST"
    eval_note = "Eval subset: 1,000 images of the official test split, 100 per class (seeded)."

    export(model, example, ZOO / "fashion_cnn.onnx", fold_bn=False)
    record_entry(
        "fashion_cnn",
        framework=FRAMEWORK,
        converter="torch.onnx.export (TorchScript exporter, dynamo=False, do_constant_folding=False)",
        notes=f"{arch}; BatchNormalization kept separate. {eval_note}",
        **common,  # type: ignore[arg-type]
    )
    export(model, example, ZOO / "fashion_cnn_bnfold.onnx", fold_bn=True)
    record_entry(
        "fashion_cnn_bnfold",
        framework=FRAMEWORK,
        converter="torch.onnx.export (TorchScript exporter, dynamo=False, do_constant_folding=True)",
        notes=f"Same weights as fashion_cnn with BatchNormalization folded into Conv by the exporter. {eval_note}",
        **common,  # type: ignore[arg-type]
    )
    torch.save(model.state_dict(), CACHE / "fashion_cnn.pt")

    for amount in (0.5, 0.9):
        pct = int(amount * 100)
        with Timer(f"fashion_cnn_pruned{pct} prune + fine-tune"):
            pruned = pruned_copy(model, amount, x_tr, y_tr, rng)
        path = ZOO / f"fashion_cnn_pruned{pct}.onnx"
        export(pruned, example, path, fold_bn=False)
        sparsity = onnx_sparsity(path)
        record_entry(
            f"fashion_cnn_pruned{pct}",
            framework=FRAMEWORK,
            converter="torch.onnx.export (TorchScript exporter, dynamo=False, do_constant_folding=False)",
            notes=(
                f"fashion_cnn after global L1 magnitude pruning of {pct}% of Conv/Linear weights "
                "(torch.nn.utils.prune.global_unstructured), then 2 epochs of fine-tuning on the training "
                f"set with the mask fixed; BN kept separate. Measured weight sparsity {sparsity:.3f}. "
                f"{eval_note}"
            ),
            **{**common, "extra": {"classes": CLASSES, "weight_sparsity": round(sparsity, 4)}},  # type: ignore[arg-type]
        )


if __name__ == "__main__":
    main()
