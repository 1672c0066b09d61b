"""Train a small vision transformer on scikit-learn's 8x8 digits; export digits_vit.onnx and
two ONNX Runtime derivatives of it.

Input ``input`` [N,1,8,8] float32 in [0,1] (pixel / 16), output ``logits`` [N,10]; the same
held-out split and eval subset (data/digits_eval.npz) as digits_cnn.

* digits_vit: 2x2 patches (Conv 2x2 stride 2) -> 16 tokens + CLS token, dim 64, 2 pre-LN
  encoder layers (4 heads, GELU MLP 128), final LayerNorm, Linear head on the CLS token.
  The attention is written like Hugging Face's ViTSelfAttention (separate query/key/value
  Linear layers, Reshape/Transpose, MatMul, Div, Softmax) so that ONNX Runtime's transformer
  optimizer recognises it. Exported at opset 17 (LayerNormalization op, Erf GELU).
* digits_vit_fused: ``onnxruntime.transformers.optimizer.optimize_model(model_type="vit")``
  of digits_vit: com.microsoft fused ops (see FUSED_NOTE / the registry's ``ops``).
* digits_vit_int4: ``MatMulNBitsQuantizer`` (4-bit, block 32, symmetric) of digits_vit: every
  MatMul with a constant weight becomes com.microsoft MatMulNBits.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import numpy_helper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DATA,
    DIGITS_SOURCE,
    ZOO,
    Timer,
    load_digits_split,
    op_counts,
    record_entry,
    seed_everything,
)
from _torch_utils import accuracy, export, train
from digits_cnn import shift_augment

DIM = 64
HEADS = 4
MLP = 128
LAYERS = 2
PATCH = 2
TOKENS = (8 // PATCH) ** 2
INT4_BLOCK = 32
EVAL_NOTE = (
    "Eval subset: digits_eval.npz, the fixed stratified held-out split of 360 images shared with "
    "digits_cnn (sklearn train_test_split random_state=0)."
)


class SelfAttention(nn.Module):
    """Multi-head self-attention in the layout of Hugging Face's ViTSelfAttention + ViTSelfOutput."""

    def __init__(self) -> None:
        super().__init__()
        self.head_size = DIM // HEADS
        self.query = nn.Linear(DIM, DIM)
        self.key = nn.Linear(DIM, DIM)
        self.value = nn.Linear(DIM, DIM)
        self.dense = nn.Linear(DIM, DIM)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        new_shape = x.size()[:-1] + (HEADS, self.head_size)
        return x.view(new_shape).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.split_heads(self.query(x))
        k = self.split_heads(self.key(x))
        v = self.split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        probs = nn.functional.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(ctx.size()[:-2] + (DIM,))
        return self.dense(ctx)


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: h = Attn(LN(x)) + x, then MLP(LN(h)) + h with a GELU MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(DIM, eps=1e-6)
        self.attention = SelfAttention()
        self.layernorm_after = nn.LayerNorm(DIM, eps=1e-6)
        self.intermediate = nn.Linear(DIM, MLP)
        self.output = nn.Linear(MLP, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # branch + residual, in this order: ORT's attention fusion takes the first Add parent of the
        # residual Add as the attention output; with x first, layer 0 (x = the embedding Add) is not fused
        h = self.attention(self.layernorm_before(x)) + x
        return self.output(nn.functional.gelu(self.intermediate(self.layernorm_after(h)))) + h


class DigitsViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, DIM, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.randn(1, TOKENS + 1, DIM) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer() for _ in range(LAYERS)])
        self.layernorm = nn.LayerNorm(DIM, eps=1e-6)
        self.classifier = nn.Linear(DIM, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # [N, 16, DIM]
        cls = self.cls_token.expand(tokens.size(0), -1, -1)
        h = torch.cat([cls, tokens], dim=1) + self.pos_embed
        h = self.layernorm(self.layers(h))
        return self.classifier(h[:, 0])


def name_matmul_weights(path: Path, model: nn.Module) -> None:
    """Name the transposed Linear weights that constant folding leaves as ``onnx::MatMul_<n>``
    after their module (``layers.0.attention.query.weight_t``, layout [in, out]), so fault sites
    and the derived files' weights say which layer they belong to."""
    m = onnx.load(str(path))
    linears = {
        name: mod.weight.detach().numpy().T
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear)
    }
    renames: dict[str, str] = {}
    for init in m.graph.initializer:
        if init.name.startswith("onnx::MatMul_"):
            value = numpy_helper.to_array(init)
            (owner,) = [n for n, w in linears.items() if w.shape == value.shape and np.array_equal(w, value)]
            renames[init.name] = init.name = f"{owner}.weight_t"
    for node in m.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def tidy(path: Path, producer: str) -> None:
    """Set the producer, keep only used opset domains and name the batch dim N."""
    m = onnx.load(str(path))
    m.producer_name = producer
    m.producer_version = onnxruntime.__version__
    used = {n.domain for n in m.graph.node}
    keep = [o for o in m.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    for value in list(m.graph.input) + list(m.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param != "N":
            dim.Clear()
            dim.dim_param = "N"
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def fuse(src: Path, dst: Path, model: DigitsViT) -> None:
    """ORT's transformer fusions; the packed Attention_<k>_qkv_weight / _bias (numbered in fusion
    order) are renamed after their layer: layers.<i>.attention.qkv.weight_t / .bias."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type="vit", num_heads=HEADS, hidden_size=DIM, opt_level=0)
    layers = [layer.attention for layer in model.layers]  # type: ignore[union-attr]
    packed = {
        f"layers.{i}.attention.qkv.weight_t": torch.cat([a.query.weight, a.key.weight, a.value.weight]).T
        for i, a in enumerate(layers)
    } | {
        f"layers.{i}.attention.qkv.bias": torch.cat([a.query.bias, a.key.bias, a.value.bias])
        for i, a in enumerate(layers)
    }
    renames: dict[str, str] = {}
    for init in opt.model.graph.initializer:
        if init.name.startswith("Attention_"):
            value = numpy_helper.to_array(init)
            (owner,) = [
                n
                for n, w in packed.items()
                if w.shape == value.shape and np.array_equal(w.detach().numpy(), value)
            ]
            renames[init.name] = init.name = owner
    for node in opt.model.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
    opt.save_model_to_file(str(dst), use_external_data_format=False)
    tidy(dst, "onnxfi-model-zoo (onnxruntime.transformers.optimizer)")


def quantize_int4(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quant = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=INT4_BLOCK, is_symmetric=True)
    quant.process()
    quant.model.save_model_to_file(str(dst), use_external_data_format=False)
    tidy(dst, "onnxfi-model-zoo (onnxruntime MatMulNBitsQuantizer)")


def main() -> None:
    rng = seed_everything()
    torch.set_num_threads(1)  # a tiny model: one thread is about as fast and leaves the other core free
    x_tr, y_tr, x_te, y_te = load_digits_split()
    with np.load(DATA / "digits_eval.npz", allow_pickle=False) as z:  # written by digits_cnn.py
        assert np.array_equal(z["input"], x_te) and np.array_equal(z["labels"], y_te)
    model = DigitsViT()
    with Timer("digits_vit training"):
        train(
            model,
            x_tr,
            y_tr,
            epochs=60,
            lr=2e-3,
            batch_size=64,
            rng=rng,
            weight_decay=0.05,
            augment=shift_augment,
            log="digits_vit",
        )
    acc = accuracy(model, x_te, y_te)
    print(f"[zoo] digits_vit torch test accuracy {acc:.4f}")
    base = ZOO / "digits_vit.onnx"
    # no BatchNormalization to keep separate: export with constant folding on
    export(model, torch.from_numpy(x_te[:2]), base, fold_bn=True)
    name_matmul_weights(base, model)
    fused, int4 = ZOO / "digits_vit_fused.onnx", ZOO / "digits_vit_int4.onnx"
    fuse(base, fused, model)
    quantize_int4(base, int4)
    torch_conv = "torch.onnx.export (TorchScript exporter, dynamo=False, do_constant_folding=True)"
    record_entry(
        "digits_vit",
        task="classification",
        eval_data="digits_eval.npz",
        metric="accuracy",
        framework=f"pytorch {torch.__version__}",
        converter=torch_conv,
        data_source=DIGITS_SOURCE,
        notes=(
            f"Small ViT: Conv 2x2/2 patch embedding -> {TOKENS} tokens + CLS, dim {DIM}, {LAYERS} pre-LN "
            f"encoder layers ({HEADS} heads, GELU MLP {MLP}), final LayerNormalization, Gemm head on the CLS "
            "token. Attention as separate query/key/value MatMul+Add, Reshape/Transpose, MatMul, Div, "
            "Softmax, MatMul; GELU as Erf; LayerNormalization op (opset 17). Trained 60 epochs with +-1 px "
            f"shifts. Torch accuracy on the same split: {acc:.4f}. " + EVAL_NOTE
        ),
    )
    fused_ops = ", ".join(k.split(".", 2)[2] for k in op_counts(fused) if k.startswith("com.microsoft."))
    record_entry(
        "digits_vit_fused",
        task="classification",
        eval_data="digits_eval.npz",
        metric="accuracy",
        framework="pytorch (digits_vit) + onnxruntime transformer optimizer",
        converter=(
            f"onnxruntime {onnxruntime.__version__} transformers.optimizer.optimize_model(model_type='vit', "
            f"num_heads={HEADS}, hidden_size={DIM}, opt_level=0)"
        ),
        data_source=DIGITS_SOURCE,
        notes=(
            f"digits_vit after ONNX Runtime's transformer fusions; com.microsoft ops: {fused_ops}. Attention "
            "holds the packed query/key/value weight [64,192] and bias [192] (renamed "
            "layers.<i>.attention.qkv.weight_t / .bias); SkipLayerNormalization fuses "
            "residual Add (+ bias Add) + LayerNormalization; BiasGelu fuses the MLP bias Add and the Erf "
            "GELU. The first encoder LayerNormalization (after the embedding Add) and the attention output "
            "projections / MLP MatMuls stay standard ops. " + EVAL_NOTE
        ),
        extra={"derived_from": "digits_vit"},
    )
    record_entry(
        "digits_vit_int4",
        task="classification",
        eval_data="digits_eval.npz",
        metric="accuracy",
        framework="pytorch (digits_vit) + onnxruntime weight-only quantization",
        converter=(
            f"onnxruntime {onnxruntime.__version__} quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer"
            f"(bits=4, block_size={INT4_BLOCK}, is_symmetric=True)"
        ),
        data_source=DIGITS_SOURCE,
        notes=(
            f"digits_vit with 4-bit weights: the {4 * LAYERS + 2 * LAYERS} MatMuls with a constant weight "
            f"(query/key/value/dense, MLP) are com.microsoft MatMulNBits (uint8-packed 4-bit weights, one "
            f"float scale per block of {INT4_BLOCK} along K, symmetric: no zero points); the activation "
            "MatMuls of the attention, the patch Conv and the Gemm head stay float32. " + EVAL_NOTE
        ),
        extra={"derived_from": "digits_vit", "weight_bits": 4, "block_size": INT4_BLOCK},
    )


if __name__ == "__main__":
    main()
