"""PyTorch twins of the benchmark's ONNX models, with their weights loaded from the ONNX initializers.

Only imported where torch is installed (the ``.venv-bench`` that ``make bench`` creates).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["DigitsCNN", "ResNet18", "build_torch_model", "fuse_batchnorm", "load_onnx_weights"]


class DigitsCNN(nn.Module):
    """The module of model_zoo/build/digits_cnn.py (copied: that script imports the zoo's build helpers)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * 2 * 2, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _bn(c: int, fused: bool) -> nn.Module:
    return nn.Identity() if fused else nn.BatchNorm2d(c)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, fused: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=fused)
        self.bn1 = _bn(cout, fused)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=fused)
        self.bn2 = _bn(cout, fused)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=fused), _bn(cout, fused))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (CIFAR style: 3x3 stem, no max-pool), 11.2M parameters.

    ``fused=True``: every BatchNorm folded into the Conv before it (convolutions with a bias, the
    BatchNorms are identities), as an eval-mode export with constant folding leaves it.
    """

    def __init__(self, num_classes: int = 10, fused: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=fused)
        self.bn1 = _bn(64, fused)
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        cin = 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride, fused), BasicBlock(cout, cout, 1, fused)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.pool(x)))


def fuse_batchnorm(model: ResNet18) -> ResNet18:
    """The same network with every BatchNorm folded into its Conv (eval mode): a ``ResNet18(fused=True)``."""
    fused = ResNet18(fused=True)
    mods = dict(model.named_modules())
    fmods = dict(fused.named_modules())
    pairs = {"bn1": "conv1", "bn2": "conv2", "shortcut.1": "shortcut.0"}
    with torch.no_grad():
        for name, bn in mods.items():
            if not isinstance(bn, nn.BatchNorm2d):
                continue
            prefix, conv_name = "", ""
            for bn_suffix, conv_suffix in pairs.items():
                if name == bn_suffix or name.endswith("." + bn_suffix):
                    prefix = name[: len(name) - len(bn_suffix)]
                    conv_name = prefix + conv_suffix
            conv = mods[conv_name]
            assert isinstance(conv, nn.Conv2d) and bn.running_mean is not None and bn.running_var is not None
            w, b = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
            target = fmods[conv_name]
            assert isinstance(target, nn.Conv2d) and target.bias is not None
            target.weight.copy_(w)
            target.bias.copy_(b)
        fused.fc.load_state_dict(model.fc.state_dict())
    return fused.eval()


def load_onnx_weights(module: nn.Module, onnx_path: str) -> list[str]:
    """Copy every ONNX initializer into the parameter or buffer of the same name; returns the names copied.

    The zoo's and this bench's exports keep BatchNormalization separate and PyTorch's state-dict names,
    so initializers map one to one; a missing or extra tensor is an error, not a silent skip.
    """
    proto = onnx.load(onnx_path)
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    state = module.state_dict()
    wanted = {k for k, v in state.items() if v.is_floating_point()}
    missing = sorted(wanted - inits.keys())
    if missing:
        raise ValueError(f"{onnx_path}: no initializer for {missing[:5]}")
    with torch.no_grad():
        for name in wanted:
            arr = np.asarray(inits[name])
            if tuple(arr.shape) != tuple(state[name].shape):
                raise ValueError(f"{name}: ONNX shape {arr.shape} != torch shape {tuple(state[name].shape)}")
            state[name].copy_(torch.from_numpy(arr.copy()))
    module.eval()
    return sorted(wanted)


def build_torch_model(kind: str) -> nn.Module:
    if kind == "digits_cnn":
        return DigitsCNN()
    if kind == "resnet18":
        return ResNet18()
    if kind == "resnet18_fused":
        return ResNet18(fused=True)
    raise ValueError(f"no PyTorch twin for {kind!r}")
