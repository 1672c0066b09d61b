"""Train a small CNN on scikit-learn's bundled 8x8 digits and export digits_cnn.onnx.

Input ``input`` [N,1,8,8] float32 in [0,1] (pixel / 16), output ``logits`` [N,10].
BatchNormalization nodes are kept separate (not folded into Conv).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DIGITS_SOURCE, ZOO, Timer, load_digits_split, record_entry, save_eval, seed_everything
from _torch_utils import accuracy, export, train


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 2x2
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * 2 * 2, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def shift_augment(xb: torch.Tensor, rng: object) -> torch.Tensor:
    """Random +-1 pixel translation (zero padded)."""
    assert hasattr(rng, "integers")
    dy, dx = (int(v) for v in rng.integers(-1, 2, size=2))
    out = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
    if dy == 1:
        out[:, :, 0, :] = 0
    elif dy == -1:
        out[:, :, -1, :] = 0
    if dx == 1:
        out[:, :, :, 0] = 0
    elif dx == -1:
        out[:, :, :, -1] = 0
    return out


def main() -> None:
    rng = seed_everything()
    x_tr, y_tr, x_te, y_te = load_digits_split()
    model = DigitsCNN()
    with Timer("digits_cnn training"):
        train(
            model, x_tr, y_tr, epochs=40, lr=3e-3, batch_size=64, rng=rng, augment=shift_augment, log="digits"
        )
    acc = accuracy(model, x_te, y_te)
    print(f"[zoo] digits_cnn torch test accuracy {acc:.4f}")
    export(model, torch.from_numpy(x_te[:2]), ZOO / "digits_cnn.onnx", fold_bn=False)
    save_eval("digits_eval", {"input": x_te, "labels": y_te})
    record_entry(
        "digits_cnn",
        task="classification",
        eval_data="digits_eval.npz",
        metric="accuracy",
        framework=f"pytorch {torch.__version__}",
        converter="torch.onnx.export (TorchScript exporter, dynamo=False, do_constant_folding=False)",
        data_source=DIGITS_SOURCE,
        notes=(
            "3x Conv-BN-ReLU + Linear on 8x8 digits scaled to [0,1] (pixel/16); BatchNormalization kept "
            "separate. Eval subset: fixed stratified held-out split of 360 images (sklearn "
            "train_test_split random_state=0)."
        ),
    )


if __name__ == "__main__":
    main()
