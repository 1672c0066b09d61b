"""Train a scikit-learn MLPClassifier on flattened digits and convert it with skl2onnx.

Input ``input`` [N,64] float32 in [0,1] (pixel / 16); outputs ``label`` [N] int64 and
``probabilities`` [N,10] float32 (ZipMap disabled). The label path uses the ``ai.onnx.ml``
domain (ArrayFeatureExtractor). Eval subset: data/digits_eval_flat.npz, the digits_cnn
test split flattened.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import skl2onnx
import sklearn
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.neural_network import MLPClassifier

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
    x_tr, y_tr, x_te, y_te = load_digits_split()
    x_tr, x_te = x_tr.reshape(len(x_tr), 64), x_te.reshape(len(x_te), 64)
    model = MLPClassifier(hidden_layer_sizes=(128, 64), alpha=1e-3, max_iter=400, random_state=SEED % 2**31)
    with Timer("digits_mlp_skl training"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x_tr, y_tr)
    print(f"[zoo] digits_mlp_skl sklearn test accuracy {model.score(x_te, y_te):.4f}")
    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    for vi in (*onx.graph.input, *onx.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_param = "N"
    onx.producer_name = "onnxfi-model-zoo (skl2onnx)"
    onnx.checker.check_model(onx, full_check=True)
    path = ZOO / "digits_mlp_skl.onnx"
    onnx.save(onx, str(path))
    save_eval("digits_eval_flat", {"input": x_te.astype(np.float32), "labels": y_te})
    record_entry(
        "digits_mlp_skl",
        task="classification",
        eval_data="digits_eval_flat.npz",
        metric="accuracy",
        framework=f"scikit-learn {sklearn.__version__}",
        converter=f"skl2onnx {skl2onnx.__version__} (options zipmap=False)",
        data_source=DIGITS_SOURCE,
        notes=(
            "MLPClassifier(128, 64, relu) on the 64 flattened digit pixels scaled to [0,1]. Two outputs: "
            "'label' (ArgMax + ai.onnx.ml ArrayFeatureExtractor) and 'probabilities' (Softmax); the "
            "metric uses 'probabilities'. Eval subset: the digits_cnn test split, flattened."
        ),
        output="probabilities",
    )


if __name__ == "__main__":
    main()
