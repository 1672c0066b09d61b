"""Train a small Keras CNN (TensorFlow backend) on sklearn digits and convert it with tf2onnx.

Runs in its own venv (.venv-zoo-tf: tensorflow-cpu + tf2onnx + scikit-learn + onnxruntime).
Keras 3 models cannot go through ``tf2onnx.convert.from_keras`` (KeyError on the Keras 3
output tensor names), so the model is wrapped in a ``tf.function`` and converted with
``tf2onnx.convert.from_function``. Keras is channels-last: input ``input`` [N,8,8,1]
float32, output ``logits`` [N,10]. Eval subset: data/digits_eval_nhwc.npz, the digits_cnn
test split transposed to NHWC.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np
import onnx
import tensorflow as tf
import tf2onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    DIGITS_SOURCE,
    SEED,
    ZOO,
    Timer,
    load_digits_split,
    record_entry,
    save_eval,
    seed_everything,
)


def main() -> None:
    seed_everything()
    tf.keras.utils.set_random_seed(SEED % 2**31)
    tf.config.experimental.enable_op_determinism()
    x_tr, y_tr, x_te, y_te = load_digits_split()
    x_tr, x_te = x_tr.transpose(0, 2, 3, 1).copy(), x_te.transpose(0, 2, 3, 1).copy()
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            tf.keras.Input((8, 8, 1), name="input"),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dropout(0.2),
            layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(2e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    with Timer("digits_cnn_keras training"):
        model.fit(x_tr, y_tr, epochs=60, batch_size=64, verbose=0, shuffle=True)
    acc = model.evaluate(x_te, y_te, verbose=0)[1]
    print(f"[zoo] digits_cnn_keras keras test accuracy {acc:.4f}")

    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)
    fn = tf.function(lambda x: {"logits": model(x, training=False)}, input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17, output_path=None)
    for vi in (*proto.graph.input, *proto.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    used_domains = {n.domain for n in proto.graph.node}
    keep = [o for o in proto.opset_import if o.domain in ("", "ai.onnx") or o.domain in used_domains]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)  # tf2onnx declares ai.onnx.ml without using it
    inits = sorted(proto.graph.initializer, key=lambda t: t.name)  # tf2onnx's order varies between runs
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    proto.producer_name = f"onnxfi-model-zoo (tf2onnx {tf2onnx.__version__})"
    onnx.checker.check_model(proto, full_check=True)
    path = ZOO / "digits_cnn_keras.onnx"
    onnx.save(proto, str(path))
    save_eval("digits_eval_nhwc", {"input": x_te.astype(np.float32), "labels": y_te})
    record_entry(
        "digits_cnn_keras",
        task="classification",
        eval_data="digits_eval_nhwc.npz",
        metric="accuracy",
        framework=f"tensorflow {tf.__version__} / keras {tf.keras.__version__}",
        converter=f"tf2onnx {tf2onnx.__version__} convert.from_function (from_keras fails with Keras 3)",
        data_source=DIGITS_SOURCE,
        notes=(
            "3x Conv-ReLU + 2 max-pools + Dense, channels-last (NHWC) input; tf2onnx inserts "
            "Transpose nodes around the convolutions. Eval subset: the digits_cnn test split in NHWC."
        ),
    )


if __name__ == "__main__":
    main()
