"""Derive the fp16 and int8 variants of the Fashion-MNIST CNN from its ONNX exports.

Needs fashion_cnn.py to have run first (it writes fashion_cnn.onnx, fashion_cnn_bnfold.onnx
and build/.cache/fashion_calib.npz). Only ONNX tooling is used here:

* fashion_cnn_fp16: onnxconverter-common ``convert_float_to_float16(keep_io_types=True)`` of
  fashion_cnn (BN separate), so the graph computes in float16 but takes/returns float32.
* fashion_cnn_int8_qdq: onnxruntime ``quantize_static`` in QDQ format (QuantizeLinear /
  DequantizeLinear pairs around float ops), calibrated on 512 training images.
* fashion_cnn_int8_qop: the same in QOperator format (QLinearConv, ...).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxconverter_common
import onnxruntime
from onnxconverter_common import float16
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import FASHION_SOURCE, ZOO, Timer, record_entry, seed_everything
from fashion_cnn import CACHE, CLASSES

EVAL_NOTE = "Eval subset: fashion_eval.npz (1,000 test images, 100 per class)."


class CalibReader(CalibrationDataReader):
    def __init__(self, x: np.ndarray, batch: int = 64) -> None:
        self.batches = iter([{"input": x[i : i + batch]} for i in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def tidy(path: Path, producer: str) -> None:
    """Set the producer and drop opset imports of domains no node uses (the quantizer adds many)."""
    m = onnx.load(str(path))
    m.producer_name = producer
    used = {n.domain for n in m.graph.node}
    keep = [o for o in m.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def quantize(fmt: QuantFormat, name: str, calib: np.ndarray) -> None:
    src = ZOO / "fashion_cnn_bnfold.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(ZOO / f"{name}.onnx"),
            CalibReader(calib),
            quant_format=fmt,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=False,  # per-channel lost ~2 points here (0.911 vs 0.931), see README
            calibrate_method=CalibrationMethod.MinMax,
        )
    tidy(ZOO / f"{name}.onnx", f"onnxfi-model-zoo (onnxruntime.quantization {onnxruntime.__version__})")


def main() -> None:
    seed_everything()
    with np.load(CACHE / "fashion_calib.npz", allow_pickle=False) as z:
        calib = z["input"]
    common = dict(
        task="classification",
        eval_data="fashion_eval.npz",
        metric="accuracy",
        data_source=FASHION_SOURCE,
        extra={"classes": CLASSES},
    )
    framework = "pytorch (fashion_cnn) + onnx post-processing"

    with Timer("fashion_cnn_fp16"):
        m = onnx.load(str(ZOO / "fashion_cnn.onnx"))
        m16 = float16.convert_float_to_float16(m, keep_io_types=True)
        onnx.save(m16, str(ZOO / "fashion_cnn_fp16.onnx"))
        tidy(
            ZOO / "fashion_cnn_fp16.onnx",
            f"onnxfi-model-zoo (onnxconverter-common {onnxconverter_common.__version__})",
        )
    record_entry(
        "fashion_cnn_fp16",
        framework=framework,
        converter=(
            f"onnxconverter-common {onnxconverter_common.__version__} float16.convert_float_to_float16"
            "(keep_io_types=True)"
        ),
        notes=(
            "fashion_cnn (BN separate) with all float initializers and computation in float16; "
            "keep_io_types=True, so input/output stay float32 with Cast nodes at the boundary. " + EVAL_NOTE
        ),
        **common,  # type: ignore[arg-type]
    )

    with Timer("fashion_cnn_int8_qdq"):
        quantize(QuantFormat.QDQ, "fashion_cnn_int8_qdq", calib)
    record_entry(
        "fashion_cnn_int8_qdq",
        framework=framework,
        converter=(
            f"onnxruntime {onnxruntime.__version__} quant_pre_process + quantize_static(QuantFormat.QDQ, "
            "activations QUInt8, weights QInt8 per-tensor, MinMax calibration)"
        ),
        notes=(
            "Static int8 quantization of fashion_cnn_bnfold in QDQ form: int8 weight (and int32 bias) "
            "initializers feed DequantizeLinear, activations pass through QuantizeLinear/DequantizeLinear "
            "pairs; ReLU fused into Conv by quant_pre_process. "
            "Calibrated on 512 training images (not in the eval subset). " + EVAL_NOTE
        ),
        **common,  # type: ignore[arg-type]
    )

    with Timer("fashion_cnn_int8_qop"):
        quantize(QuantFormat.QOperator, "fashion_cnn_int8_qop", calib)
    record_entry(
        "fashion_cnn_int8_qop",
        framework=framework,
        converter=(
            f"onnxruntime {onnxruntime.__version__} quant_pre_process + quantize_static(QuantFormat.QOperator, "
            "activations QUInt8, weights QInt8 per-tensor, MinMax calibration)"
        ),
        notes=(
            "Static int8 quantization of fashion_cnn_bnfold in QOperator form: QuantizeLinear, QLinearConv "
            "(ReLU fused by quant_pre_process), uint8 MaxPool, com.microsoft QGemm for the classifier, "
            "DequantizeLinear; same calibration as fashion_cnn_int8_qdq. " + EVAL_NOTE
        ),
        **common,  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
