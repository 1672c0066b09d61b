"""Train a small CNN with PaddlePaddle on sklearn digits and convert it with paddle2onnx.

Runs in its own venv (.venv-zoo-paddle: paddlepaddle + paddle2onnx + scikit-learn +
onnxruntime), because paddle2onnx pins an older onnx than the torch venv uses.
Writes digits_cnn_paddle.onnx (input ``input`` [N,1,8,8], output ``logits`` [N,10]);
the eval subset is the same data/digits_eval.npz as digits_cnn.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import paddle
import paddle2onnx
from paddle import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DIGITS_SOURCE, SEED, ZOO, Timer, load_digits_split, record_entry, seed_everything


class PaddleDigitsCNN(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2D(1, 16, 3, padding=1),
            nn.BatchNorm2D(16),
            nn.ReLU(),
            nn.Conv2D(16, 32, 3, padding=1),
            nn.BatchNorm2D(32),
            nn.ReLU(),
            nn.MaxPool2D(2),  # 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10)
        )

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.classifier(self.features(x))


def tidy(path: Path, output_name: str) -> int:
    """Rename the output, name the batch dim 'N', drop dead nodes; return how many were dropped."""
    m = onnx.load(str(path))
    old = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = [output_name if o == old else o for o in node.output]
        node.input[:] = [output_name if i == old else i for i in node.input]
    m.graph.output[0].name = output_name
    for vi in (*m.graph.input, *m.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    # paddle2onnx leaves a few Constant nodes that nothing reads (onnxruntime warns about them)
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    dead = [n for n in m.graph.node if not any(o in used for o in n.output)]
    for n in dead:
        m.graph.node.remove(n)
    m.producer_name = "onnxfi-model-zoo (paddle2onnx)"
    m.producer_version = paddle2onnx.__version__
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return len(dead)


def main() -> None:
    rng = seed_everything()
    paddle.seed(SEED)
    paddle.set_device("cpu")
    x_tr, y_tr, x_te, y_te = load_digits_split()
    model = PaddleDigitsCNN()
    epochs, bs = 40, 64
    steps = epochs * ((len(x_tr) + bs - 1) // bs)
    sched = paddle.optimizer.lr.OneCycleLR(max_learning_rate=3e-3, total_steps=steps)
    opt = paddle.optimizer.AdamW(learning_rate=sched, parameters=model.parameters(), weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    with Timer("digits_cnn_paddle training"):
        for ep in range(epochs):
            model.train()
            order = rng.permutation(len(x_tr))
            total = 0.0
            for i in range(0, len(x_tr), bs):
                idx = order[i : i + bs]
                xb, yb = paddle.to_tensor(x_tr[idx]), paddle.to_tensor(y_tr[idx])
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                opt.clear_grad()
                sched.step()
                total += float(loss) * len(idx)
            if (ep + 1) % 10 == 0:
                print(f"  paddle epoch {ep + 1}/{epochs} loss {total / len(x_tr):.4f}", flush=True)
    model.eval()
    with paddle.no_grad():
        acc = float(np.mean(model(paddle.to_tensor(x_te)).numpy().argmax(1) == y_te))
    print(f"[zoo] digits_cnn_paddle paddle test accuracy {acc:.4f}")

    out = ZOO / "digits_cnn_paddle.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "model")
        spec = [paddle.static.InputSpec(shape=[None, 1, 8, 8], dtype="float32", name="input")]
        paddle.jit.save(model, prefix, input_spec=spec)
        files = sorted(p.name for p in Path(tmp).iterdir())
        print(f"[zoo] paddle.jit.save wrote {files}")
        model_file = prefix + (".json" if Path(prefix + ".json").exists() else ".pdmodel")
        logging.getLogger().setLevel(logging.ERROR)
        paddle2onnx.export(
            model_file,
            prefix + ".pdiparams",
            save_file=str(out),
            opset_version=17,
            auto_upgrade_opset=False,
            enable_onnx_checker=True,
            optimize_tool="None",
        )
    if not out.exists():
        raise SystemExit("paddle2onnx produced no model")
    n_dead = tidy(out, "logits")
    record_entry(
        "digits_cnn_paddle",
        task="classification",
        eval_data="digits_eval.npz",
        metric="accuracy",
        framework=f"paddlepaddle {paddle.__version__}",
        converter=f"paddle.jit.save ({Path(model_file).suffix}) + paddle2onnx {paddle2onnx.__version__}",
        data_source=DIGITS_SOURCE,
        notes=(
            "2x Conv-BN-ReLU + MLP head trained with PaddlePaddle on the digits_cnn training split; "
            "weights are stored in Constant nodes (not initializers), as paddle2onnx emits them. After "
            f"conversion the output was renamed to 'logits' and {n_dead} dead Constant nodes were dropped. "
            "Same eval subset as digits_cnn."
        ),
    )


if __name__ == "__main__":
    main()
