"""Tests for onnxfi.metrics: hand-computed examples, NaN/Inf handling and property tests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from onnxfi import metrics as m
from onnxfi.errors import OnnxfiError

NAN = float("nan")
INF = float("inf")

# --------------------------------------------------------------------------------------------------
# softmax / is_probability / detect_task
# --------------------------------------------------------------------------------------------------


def test_softmax_hand_values() -> None:
    p = m.softmax(np.log([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(p, [[1 / 6, 2 / 6, 3 / 6], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-12)
    assert p.dtype == np.float64


def test_softmax_is_stable_for_huge_logits() -> None:
    p = m.softmax(np.array([[1000.0, 1001.0], [-1000.0, -1001.0]], dtype=np.float32))
    e = math.e
    np.testing.assert_allclose(p, [[1 / (1 + e), e / (1 + e)], [e / (1 + e), 1 / (1 + e)]], rtol=1e-6)


def test_softmax_other_axis() -> None:
    x = np.log(np.array([[1.0, 1.0], [3.0, 1.0]]))
    np.testing.assert_allclose(m.softmax(x, axis=0), [[0.25, 0.5], [0.75, 0.5]])
    np.testing.assert_allclose(m.softmax(x, axis=-1), [[0.5, 0.5], [0.75, 0.25]])


def test_softmax_nonfinite_rows() -> None:
    p = m.softmax([[INF, 0.0, INF], [1.0, NAN, 0.0], [-INF, -INF, -INF], [-INF, 0.0, 0.0]])
    np.testing.assert_array_equal(p[0], [0.5, 0.0, 0.5])
    assert np.all(np.isnan(p[1]))
    assert np.all(np.isnan(p[2]))
    np.testing.assert_array_equal(p[3], [0.0, 0.5, 0.5])


def test_softmax_rejects_bad_input() -> None:
    with pytest.raises(OnnxfiError):
        m.softmax(np.float32(1.0))
    with pytest.raises(OnnxfiError):
        m.softmax(np.zeros((2, 3)), axis=2)
    with pytest.raises(OnnxfiError):
        m.softmax(np.zeros((2, 0)))
    with pytest.raises(OnnxfiError):
        m.softmax(np.array([["a", "b"]]))


def test_is_probability() -> None:
    assert m.is_probability(m.softmax(np.arange(12.0).reshape(4, 3)))
    assert m.is_probability(np.array([[0.2, 0.8]], dtype=np.float16))
    assert not m.is_probability(np.arange(12.0).reshape(4, 3))  # logits
    assert not m.is_probability([[0.9, 0.8]])  # sigmoid multi-label: in [0, 1] but sums to 1.7
    assert not m.is_probability([[0.5, NAN]])
    assert not m.is_probability(np.zeros((0, 3)))
    assert not m.is_probability([[1.5, -0.5]])
    probs_nchw = m.softmax(np.random.default_rng(0).normal(size=(2, 3, 4, 4)), axis=1)
    assert m.is_probability(probs_nchw, axis=1)
    assert not m.is_probability(probs_nchw, axis=2)


@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [
        ((8, 10), None, "classification"),
        ((8, 2), np.float32, "classification"),
        (("batch", 1000), None, "classification"),
        ((8, 1), None, "regression"),
        ((8, 1000, 1, 1), None, "classification"),
        ((8, 21, 64, 64), None, "segmentation"),
        ((None, 21, "h", "w"), np.float32, "segmentation"),
        ((8, 1, 64, 64), np.int64, "segmentation"),
        ((8, 1, 64, 64), np.float32, "regression"),
        ((8, 64, 64), None, "segmentation"),
        ((8, 64, 64), np.int64, "segmentation"),
        ((8, 64, 64), np.float32, "regression"),
        ((8,), None, "regression"),
        ((), None, "regression"),
        ((2, 3, 4, 5, 6), None, "regression"),
    ],
)
def test_detect_task(shape: tuple[int | str | None, ...], dtype: type | None, expected: str) -> None:
    assert m.detect_task(shape, dtype) == expected


# --------------------------------------------------------------------------------------------------
# Top-k, SDC masks, accuracy
# --------------------------------------------------------------------------------------------------


def test_top1_and_topk_nan_order() -> None:
    x = np.array(
        [
            [1.0, NAN, 3.0, NAN],  # first NaN wins, like np.argmax
            [INF, NAN, 0.0, -INF],  # NaN beats +inf
            [2.0, 2.0, 1.0, 2.0],  # ties: lowest index first
            [-INF, 0.0, -1.0, 5.0],
        ]
    )
    np.testing.assert_array_equal(m.top1(x), [1, 1, 0, 3])
    np.testing.assert_array_equal(m.top1(x), np.argmax(x, axis=1))
    np.testing.assert_array_equal(
        m.topk_indices(x, 4), [[1, 3, 2, 0], [1, 0, 2, 3], [0, 1, 3, 2], [3, 1, 2, 0]]
    )
    np.testing.assert_array_equal(m.topk_indices(x, 10).shape, (4, 4))  # k capped at C
    # target 3 in row 0 is the second NaN: rank 1
    np.testing.assert_array_equal(m.topk_contains(x, [3, 0, 3, 0], 2), [True, True, False, False])
    np.testing.assert_array_equal(m.topk_contains(x, [0, 3, 2, 0], 4), [True, True, True, True])
    np.testing.assert_array_equal(m.topk_contains(x, [0, 3, 2, 1], 3), [False, False, False, True])


def test_top1_flattens_nc11() -> None:
    x = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]]).reshape(2, 3, 1, 1)
    np.testing.assert_array_equal(m.top1(x), [1, 0])


@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=7),
        elements=st.sampled_from([NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0, 2.5, 1e300]),
    ),
    st.integers(1, 8),
    st.data(),
)
def test_topk_consistency_property(x: np.ndarray, k: int, data: st.DataObject) -> None:
    n, c = x.shape
    target = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    idx = m.topk_indices(x, k)
    np.testing.assert_array_equal(idx[:, 0], np.argmax(x, axis=1))
    np.testing.assert_array_equal(m.top1(x), np.argmax(x, axis=1))
    expected = np.array([target[i] in idx[i] for i in range(n)])
    np.testing.assert_array_equal(m.topk_contains(x, target, k), expected)


def test_sdc_masks_hand_example() -> None:
    golden = np.array(
        [
            [5.0, 1.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 5.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 5.0, 4.0, 3.0, 2.0],
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ]
    )
    faulty = golden.copy()
    faulty[1] = [0.0, 5.0, 9.0, 0.0, 0.0, 0.0]  # top-1 changes to 2, golden 1 is 2nd: SDC-1 only
    faulty[2] = [9.0, 8.0, 0.0, 7.0, 6.0, 5.0]  # golden class 2 falls to 6th: SDC-1 and SDC-5
    faulty[3] = [NAN] * 6  # argmax -> 0; golden class 5 is the 6th NaN
    np.testing.assert_array_equal(m.sdc1_mask(faulty, golden), [False, True, True, True])
    np.testing.assert_array_equal(m.sdc5_mask(faulty, golden), [False, False, True, True])
    np.testing.assert_array_equal(m.sdc5_mask(faulty, golden, k=1), m.sdc1_mask(faulty, golden))
    assert not m.sdc1_mask(golden, golden).any()
    assert not m.sdc5_mask(golden, golden).any()


def test_sdc5_with_fewer_than_five_classes_uses_all_classes() -> None:
    golden = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    faulty = np.array([[0.0, 2.0, 9.0], [NAN, NAN, NAN]])
    np.testing.assert_array_equal(m.sdc1_mask(faulty, golden), [True, True])
    np.testing.assert_array_equal(m.sdc5_mask(faulty, golden), [False, False])


def test_sdc_masks_shape_mismatch() -> None:
    with pytest.raises(OnnxfiError, match="shapes differ"):
        m.sdc1_mask(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(OnnxfiError, match="shape"):
        m.sdc5_mask(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))


def test_accuracy_and_topk_accuracy() -> None:
    x = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]])
    labels = np.array([1, 1, 2, 0])
    assert m.accuracy(x, labels) == 0.5
    assert m.topk_accuracy(x, labels, 2) == 0.75  # row 3: label 0 is third
    assert m.topk_accuracy(x, labels, 3) == 1.0
    assert m.topk_accuracy(x, labels) == 1.0  # k=5 capped at C=3
    assert m.accuracy(x, labels.reshape(4, 1).astype(np.float32)) == 0.5
    assert math.isnan(m.accuracy(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)))


@pytest.mark.parametrize(
    "labels",
    [np.array([0, 3]), np.array([-1, 0]), np.array([0]), np.array([0.5, 1.0]), np.array([[0, 1]])],
)
def test_bad_labels_raise(labels: np.ndarray) -> None:
    with pytest.raises(OnnxfiError):
        m.accuracy(np.zeros((2, 3)), labels)


def test_bad_k_raises() -> None:
    with pytest.raises(OnnxfiError):
        m.topk_accuracy(np.zeros((2, 3)), [0, 1], 0)
    with pytest.raises(OnnxfiError):
        m.topk_indices(np.zeros((2, 3)), True)


# --------------------------------------------------------------------------------------------------
# DUE and error statistics
# --------------------------------------------------------------------------------------------------


def test_nonfinite_mask() -> None:
    x = np.zeros((4, 2, 2, 2), dtype=np.float16)
    x[1, 1, 0, 1] = np.nan
    x[3, 0, 0, 0] = -np.inf
    np.testing.assert_array_equal(m.nonfinite_mask(x), [False, True, False, True])
    np.testing.assert_array_equal(m.nonfinite_mask([1.0, INF, NAN]), [False, True, True])
    np.testing.assert_array_equal(m.nonfinite_mask(np.ones((3, 2), dtype=np.int8)), [False] * 3)
    assert m.nonfinite_mask(np.zeros((0, 5))).shape == (0,)
    with pytest.raises(OnnxfiError):
        m.nonfinite_mask(np.float32(1.0))


def test_error_stats_hand_example() -> None:
    s = m.error_stats([[1.0, 3.0], [NAN, INF]], [[1.0, 2.0], [0.0, 0.0]], eps=0.0)
    assert s == {
        "max_abs": 1.0,
        "mean_abs": 0.5,
        "max_rel": 0.5,
        "mean_rel": 0.25,
        "nan_frac": 0.25,
        "inf_frac": 0.25,
        "finite_frac": 0.5,
    }


def test_error_stats_epsilon_and_zero_golden() -> None:
    s = m.error_stats([1e-3, 0.0], [0.0, 0.0], eps=1e-8)
    assert s["max_rel"] == pytest.approx(1e-3 / 1e-8)
    assert s["mean_rel"] == pytest.approx(1e-3 / 1e-8 / 2)


def test_error_stats_all_nonfinite_and_overflow() -> None:
    s = m.error_stats([NAN, INF], [1.0, 1.0])
    assert all(math.isnan(s[key]) for key in ("max_abs", "mean_abs", "max_rel", "mean_rel"))
    assert (s["nan_frac"], s["inf_frac"], s["finite_frac"]) == (0.5, 0.5, 0.0)
    big = m.error_stats(np.array([1e308]), np.array([-1e308]))
    assert big["max_abs"] == INF
    f32 = m.error_stats(np.array([3e38], dtype=np.float32), np.array([-3e38], dtype=np.float32))
    assert f32["max_abs"] == pytest.approx(6e38, rel=1e-6)  # float64 arithmetic: no overflow
    json.dumps(s)
    with pytest.raises(OnnxfiError, match="shapes differ"):
        m.error_stats([1.0, 2.0], [1.0])


def test_error_stats_large_array_across_chunks() -> None:
    rng = np.random.default_rng(7)
    golden = rng.normal(size=(3, 1_100_000)).astype(np.float32)
    faulty = golden.copy()
    faulty[2, -1] += 1000.0  # the largest deviation sits in the last chunk
    faulty[0, 5] = np.nan
    s = m.error_stats(faulty, golden)
    d = np.abs(faulty.astype(np.float64) - golden)
    assert s["max_abs"] == pytest.approx(1000.0, rel=1e-6)
    assert s["mean_abs"] == pytest.approx(np.nanmean(d), rel=1e-9)
    assert s["mean_rel"] == pytest.approx(
        np.nanmean(d / (np.abs(golden.astype(np.float64)) + 1e-8)), rel=1e-9
    )
    assert s["nan_frac"] == pytest.approx(1 / golden.size)


# --------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------

TARGET_2X2 = np.array([[[0, 0], [1, 1]]])
PRED_2X2 = np.array([[[0, 1], [1, 1]]])


def test_confusion_matrix_and_miou_2x2_by_hand() -> None:
    # class 0: TP 1, FN 1, FP 0 -> 1/2; class 1: TP 2, FP 1, FN 0 -> 2/3
    np.testing.assert_array_equal(m.confusion_matrix(PRED_2X2, TARGET_2X2, 2), [[1, 1], [0, 2]])
    assert m.miou(PRED_2X2, TARGET_2X2, 2) == pytest.approx(7 / 12)
    assert m.pixel_accuracy(PRED_2X2, TARGET_2X2) == 0.75
    # a third, absent class is ignored by default, scores 1.0 otherwise
    assert m.miou(PRED_2X2, TARGET_2X2, 3) == pytest.approx(7 / 12)
    assert m.miou(PRED_2X2, TARGET_2X2, 3, ignore_absent=False) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)


def test_miou_accepts_logits() -> None:
    logits = np.moveaxis(np.eye(2)[PRED_2X2], -1, 1) * 3.0 - 1.0  # [1, 2, 2, 2]
    assert logits.shape == (1, 2, 2, 2)
    assert m.miou(logits, TARGET_2X2) == pytest.approx(7 / 12)
    assert m.pixel_accuracy(logits, TARGET_2X2) == 0.75
    np.testing.assert_array_equal(m.confusion_matrix(logits, TARGET_2X2), [[1, 1], [0, 2]])
    with pytest.raises(OnnxfiError, match="channels"):
        m.miou(logits, TARGET_2X2, 5)
    with pytest.raises(OnnxfiError, match="num_classes is required"):
        m.miou(PRED_2X2, TARGET_2X2)


def test_segmentation_ignore_and_invalid_predictions() -> None:
    target = np.array([[[0, 255], [1, 1]]])
    pred = np.array([[[0, 0], [7, 1]]])  # 7 is no class: a miss for class 1, no false positive
    # class 0: TP 1 -> 1; class 1: TP 1, FN 1 -> 1/2 ; the 255 pixel is ignored
    assert m.miou(pred, target, 2) == pytest.approx(0.75)
    assert m.pixel_accuracy(pred, target, 2) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(m.confusion_matrix(pred, target, 2), [[1, 0], [0, 1]])
    # float label maps: a NaN or fractional id is an invalid prediction
    fpred = np.array([[[0.0, 0.0], [NAN, 1.5]]])
    assert m.miou(fpred, target, 2) == pytest.approx((1 + 0) / 2)
    np.testing.assert_array_equal(m.confusion_matrix(fpred, target, 2), [[1, 0], [0, 0]])


def test_segmentation_nan_logits_use_argmax() -> None:
    logits = np.zeros((1, 3, 1, 2))
    logits[0, :, 0, 0] = [0.0, 1.0, 0.0]
    logits[0, :, 0, 1] = [0.0, 5.0, NAN]  # argmax -> 2
    target = np.array([[[1, 1]]])
    assert m.pixel_accuracy(logits, target) == 0.5
    # class 1: TP 1, FN 1 -> 1/2; class 2: FP 1 -> 0
    assert m.miou(logits, target) == pytest.approx(0.25)


def test_segmentation_shape_errors() -> None:
    with pytest.raises(OnnxfiError, match="shapes differ"):
        m.miou(np.zeros((1, 2, 2), dtype=int), np.zeros((1, 2, 3), dtype=int), 2)
    with pytest.raises(OnnxfiError, match="label map"):
        m.pixel_accuracy(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(OnnxfiError, match="2 channels"):
        m.miou(np.zeros((1, 1, 2, 2)), np.zeros((1, 2, 2), dtype=int), 2)


def test_keepdims_label_map() -> None:
    assert m.miou(PRED_2X2[:, None], TARGET_2X2[:, None], 2) == pytest.approx(7 / 12)


label_maps = hnp.arrays(
    np.int64, st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)), elements=st.integers(0, 3)
)


@given(label_maps, st.data())
def test_miou_properties(target: np.ndarray, data: st.DataObject) -> None:
    pred = data.draw(hnp.arrays(np.int64, target.shape, elements=st.integers(-1, 4)))
    value = m.miou(pred, target, 4)
    assert 0.0 <= value <= 1.0
    assert m.miou(target, target, 4) == 1.0
    assert m.miou(target, target, 4, ignore_absent=False) == 1.0
    assert m.pixel_accuracy(target, target, 4) == 1.0
    assert 0.0 <= m.pixel_accuracy(pred, target, 4) <= 1.0
    assert m.confusion_matrix(target, target, 4).sum() == target.size


# --------------------------------------------------------------------------------------------------
# Uncertainty
# --------------------------------------------------------------------------------------------------


def test_entropy_and_msp() -> None:
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [NAN, 1, 0, 0]])
    ent = m.predictive_entropy(probs)
    np.testing.assert_allclose(ent[:3], [math.log(4), 0.0, math.log(2)], atol=1e-15)
    assert math.isnan(ent[3])
    assert m.mean_entropy(probs) == pytest.approx((math.log(4) + math.log(2)) / 3)
    msp = m.max_softmax_probability(probs)
    np.testing.assert_array_equal(msp[:3], [0.25, 1.0, 0.5])
    assert math.isnan(msp[3])
    assert math.isnan(m.mean_entropy(np.full((2, 3), NAN)))
    per_pixel = m.predictive_entropy(np.full((2, 4, 3, 3), 0.25))
    assert per_pixel.shape == (2, 3, 3)
    np.testing.assert_allclose(per_pixel, math.log(4))
    with pytest.raises(OnnxfiError):
        m.predictive_entropy(np.ones(3))


ECE_PROBS = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
ECE_LABELS = np.array([0, 1, 1, 2])


def test_ece_hand_example() -> None:
    # confidences .7 (right), .6 (wrong), .5 (right), .8 (right); 5 bins of width .2:
    # (.4, .6]: {.6, .5} acc 1/2 conf .55 -> 2/4 * .05 ; (.6, .8]: {.7, .8} acc 1 conf .75 -> 2/4 * .25
    assert m.expected_calibration_error(ECE_PROBS, ECE_LABELS, n_bins=5) == pytest.approx(0.15, abs=1e-12)
    # one bin: |3/4 - mean(.7, .6, .5, .8)| = |.75 - .65|
    assert m.expected_calibration_error(ECE_PROBS, ECE_LABELS, n_bins=1) == pytest.approx(0.1, abs=1e-12)
    # 15 bins: each sample alone -> mean |correct - conf| = (.3 + .6 + .5 + .2) / 4
    assert m.expected_calibration_error(ECE_PROBS, ECE_LABELS) == pytest.approx(0.4, abs=1e-12)


def test_ece_confidence_on_a_bin_edge_goes_to_the_lower_bin() -> None:
    # bins (0, .5] and (.5, 1]: conf .5 (right) alone in the first; .9 (right) and .6 (wrong) in the second
    probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4]])
    labels = np.array([0, 0, 1])
    expected = (1 / 3) * abs(1 - 0.5) + (2 / 3) * abs(0.5 - 0.75)
    assert m.expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(expected, abs=1e-12)
    assert m.expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(
        _ece_reference(probs, labels, 2)
    )


def test_ece_skips_nonfinite_rows() -> None:
    probs = np.vstack([ECE_PROBS, [[NAN, NAN, NAN]]])
    labels = np.append(ECE_LABELS, 0)
    assert m.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.15, abs=1e-12)
    assert math.isnan(m.expected_calibration_error(np.full((2, 3), NAN), [0, 1]))
    with pytest.raises(OnnxfiError):
        m.expected_calibration_error(ECE_PROBS, ECE_LABELS, n_bins=0)


def _ece_reference(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """The loop from Guo et al.'s reference code: bins (lower, upper]."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lower, upper in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lower) & (conf <= upper)
        if in_bin.any():
            ece += abs(correct[in_bin].mean() - conf[in_bin].mean()) * in_bin.mean()
    return ece


@given(
    st.integers(1, 20),
    st.integers(2, 6),
    st.integers(1, 20),
    st.integers(0, 2**32 - 1),
)
def test_ece_properties(n: int, c: int, n_bins: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = m.softmax(rng.normal(scale=3.0, size=(n, c)))
    labels = rng.integers(0, c, size=n)
    ece = m.expected_calibration_error(probs, labels, n_bins)
    assert 0.0 <= ece <= 1.0
    assert ece == pytest.approx(_ece_reference(probs, labels, n_bins), abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------


def _all_plain_floats(d: dict[str, float]) -> bool:
    return all(type(v) is float for v in d.values())


def test_classification_metrics_hand_example() -> None:
    golden = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]))
    faulty = golden.copy()
    faulty[1] = np.log([0.1, 0.1, 0.8])  # SDC-1, still in top-3
    faulty[3, 0] = NAN  # DUE: argmax 0 == golden 0
    labels = np.array([0, 1, 1, 0])
    r = m.classification_metrics(faulty, golden, labels)
    assert _all_plain_floats(r)
    json.dumps(r)
    assert r["n"] == 4.0 and r["num_classes"] == 3.0
    assert r["due_frac"] == 0.25
    assert r["sdc1_frac"] == 0.25
    assert r["sdc5_frac"] == 0.0
    assert r["golden_agreement"] == 0.75
    assert r["accuracy"] == 0.5  # rows 0 and 3 (argmax of the NaN row is 0)
    assert r["top5_accuracy"] == 1.0
    assert r["mean_msp"] == pytest.approx((0.7 + 0.8 + 0.5) / 3)
    h = [-sum(p * math.log(p) for p in row) for row in ([0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5])]
    assert r["mean_entropy"] == pytest.approx(sum(h) / 3)
    # finite rows: conf .7 right, .8 wrong, .5 wrong; 15 bins, all apart: (.3 + .8 + .5) / 3
    assert r["ece"] == pytest.approx(1.6 / 3)
    assert r["err_nan_frac"] == pytest.approx(1 / 12)
    assert r["err_finite_frac"] == pytest.approx(11 / 12)
    assert r["err_max_abs"] == pytest.approx(math.log(8))


def test_classification_metrics_probabilities_not_softmaxed_twice() -> None:
    golden = np.array([[0.9, 0.1], [0.4, 0.6]], dtype=np.float32)
    faulty = np.array([[0.9, 0.1], [0.7, 0.3]], dtype=np.float32)
    r = m.classification_metrics(faulty, golden)
    assert r["mean_msp"] == pytest.approx(0.8, rel=1e-6)
    assert r["sdc1_frac"] == 0.5
    assert "accuracy" not in r and "ece" not in r


def test_classification_metrics_all_nan_output_does_not_crash() -> None:
    golden = np.eye(4)
    r = m.classification_metrics(np.full((4, 4), NAN), golden, [0, 1, 2, 3])
    assert r["due_frac"] == 1.0 and r["sdc1_frac"] == 0.0
    assert r["accuracy"] == 0.25  # every NaN row predicts class 0
    assert math.isnan(r["mean_entropy"]) and math.isnan(r["ece"]) and math.isnan(r["err_max_abs"])
    assert _all_plain_floats(r)


@settings(max_examples=50)
@given(st.integers(1, 8), st.integers(2, 10), st.integers(0, 2**32 - 1))
def test_classification_metrics_golden_vs_itself(n: int, c: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    golden = rng.normal(size=(n, c)).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    r = m.classification_metrics(golden, golden, labels)
    assert r["golden_agreement"] == 1.0
    assert r["sdc1_frac"] == r["sdc5_frac"] == r["due_frac"] == 0.0
    assert r["err_max_abs"] == 0.0
    assert 0.0 <= r["ece"] <= 1.0
    assert r["accuracy"] == m.accuracy(golden, labels)


def test_segmentation_metrics_logits() -> None:
    golden = np.moveaxis(np.eye(2)[np.array([[[0, 0], [1, 1]], [[1, 1], [1, 1]]])], -1, 1) * 4.0
    faulty = golden.copy()
    faulty[0, 1, 0, 1] = 10.0  # image 0: pixel (0, 1) becomes class 1
    r = m.segmentation_metrics(faulty, golden)
    assert _all_plain_floats(r)
    assert r["n"] == 2.0 and r["num_classes"] == 2.0
    assert r["pixel_change_frac"] == 1 / 8
    assert r["sdc_frac"] == 0.5
    assert r["due_frac"] == 0.0
    assert r["pixel_accuracy"] == 7 / 8
    # pooled: class 0 TP 1 FN 1 -> 1/2; class 1 TP 6 FP 1 -> 6/7
    assert r["miou"] == pytest.approx((1 / 2 + 6 / 7) / 2)
    assert r["err_max_abs"] == 10.0
    assert r["mean_msp"] == pytest.approx(float(np.mean(m.max_softmax_probability(m.softmax(faulty)))))
    assert r["mean_entropy"] == pytest.approx(m.mean_entropy(m.softmax(faulty)))
    labels = np.array([[[0, 1], [1, 1]], [[1, 1], [1, 0]]])
    rl = m.segmentation_metrics(faulty, golden, labels)
    assert rl["pixel_accuracy"] == 7 / 8  # wrong only on the last pixel of image 1
    assert rl["pixel_change_frac"] == 1 / 8
    with pytest.raises(OnnxfiError, match="channels"):
        m.segmentation_metrics(faulty, golden, num_classes=3)


def test_segmentation_metrics_label_maps_and_nan() -> None:
    golden = np.array([[[0, 1], [2, 2]], [[0, 0], [1, 1]]], dtype=np.int64)
    faulty = golden.copy()
    r = m.segmentation_metrics(faulty, golden)
    assert r["num_classes"] == 3.0 and r["miou"] == 1.0 and r["sdc_frac"] == 0.0
    assert "err_max_abs" not in r
    logits = np.zeros((2, 3, 2, 2))
    logits[1, :, 0, 0] = NAN
    r2 = m.segmentation_metrics(logits, np.moveaxis(np.eye(3)[golden], -1, 1))
    assert r2["due_frac"] == 0.5
    assert r2["sdc_frac"] == 0.5  # image 0 changed and finite; image 1 is DUE
    assert _all_plain_floats(r2)
    with pytest.raises(OnnxfiError, match="num_classes is required"):
        m.segmentation_metrics(np.full((1, 2, 2), -1), np.full((1, 2, 2), -1))


# --------------------------------------------------------------------------------------------------
# bfloat16 / float8 outputs and layouts


def test_bfloat16_output_is_float_and_nan_in_it_is_due() -> None:
    import ml_dtypes

    from onnxfi.outcomes import classify

    golden = np.array([[2.0, 1.0, 0.5], [0.25, 3.0, 1.0]], dtype=ml_dtypes.bfloat16)
    faulty = golden.copy()
    faulty[1, 2] = np.nan
    assert list(m.nonfinite_mask(faulty)) == [False, True]
    assert m.infer_layout(golden) == "classes" and list(m.top1(golden)) == [0, 1]
    assert m.is_probability(np.array([[0.5, 0.5]], dtype=ml_dtypes.bfloat16))
    row = classify({"y": golden}, {"y": faulty}, "y", "classification", np.array([0, 1]), 0.01)
    assert row["due"] and row["outcome"] == "due"
    assert row["metrics"]["due_frac"] == 0.5 and row["metrics"]["err_nan_frac"] == pytest.approx(1 / 6)
    inf8 = np.array([[1.0, np.nan]], dtype=ml_dtypes.float8_e4m3fn)
    row8 = classify({"y": np.array([[1.0, 0.5]], dtype=ml_dtypes.float8_e4m3fn)}, {"y": inf8}, "y",
                    "classification", None, 0.01)
    assert row8["due"]


def test_decisions_per_layout() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    assert list(m.decisions(scores, "classes")) == [1, 0]
    assert list(m.decisions(np.array([[3], [1]]), "ids")) == [3, 1]
    nhwc = np.zeros((1, 2, 2, 3), np.float32)
    nhwc[0, 1, 1, 2] = 1.0
    assert m.decisions(nhwc, "nhwc").tolist() == [[[0, 0], [0, 2]]]
    assert m.decisions(np.moveaxis(nhwc, -1, 1), "nchw").tolist() == [[[0, 0], [0, 2]]]
    mask = np.array([[[[0.2], [0.7]], [[np.nan], [0.5]]]], dtype=np.float32)  # [1, 2, 2, 1]
    assert m.decisions(mask, "mask-nhwc", 0.5).tolist() == [[[0, 1], [-1, 0]]]  # NaN is -1, 0.5 is not above
    assert m.decisions(np.moveaxis(mask, -1, 1), "mask-nchw", 0.5).tolist() == [[[0, 1], [-1, 0]]]
    with pytest.raises(ValueError, match="threshold"):
        m.decisions(mask, "mask-nhwc")
    with pytest.raises(OnnxfiError, match="makes no decisions"):
        m.decisions(scores, "raw")
    assert m.label_map_classes(np.array([[[0, 255], [3, -1]]])) == 4  # ignore ids left out


def test_infer_layout_shape_rules_and_forced_task() -> None:
    f32 = np.float32
    assert m.infer_layout(np.zeros((2, 10), f32)) == "classes"
    assert m.infer_layout(np.zeros((2, 10, 1, 1), f32)) == "classes"
    assert m.infer_layout(np.zeros((2,), np.int64)) == "ids"
    assert m.infer_layout(np.zeros((2, 8, 8), np.int64)) == "labelmap"
    assert m.infer_layout(np.zeros((2, 21, 16, 16), f32)) == "nchw"
    assert m.infer_layout(np.zeros((2, 8, 4, 4), f32)) == "nchw"  # ONNX's default when the last axis is not smaller
    assert m.infer_layout(np.zeros((2, 64, 64, 21), f32)) == "nhwc"
    softmaxed = m.softmax(np.random.default_rng(0).normal(size=(2, 16, 16, 21)), axis=3)
    assert m.infer_layout(softmaxed) == "nhwc"  # probabilities along the last axis decide
    assert m.infer_layout(np.full((2, 1, 8, 8), 0.3, f32)) == "mask-nchw"
    assert m.infer_layout(np.full((2, 1, 8, 8), 3.0, f32)) == "raw"  # one channel outside [0, 1]: not a mask
    assert m.infer_layout(np.full((2, 1, 8, 8), 3.0, f32), "segmentation") == "mask-nchw"
    assert m.infer_layout(np.zeros((2, 8, 8), f32)) == "raw"
    assert m.infer_layout(np.zeros((2, 8, 8), f32), "segmentation") == "mask"
    assert m.infer_layout(np.zeros((2, 10), f32), "regression") == "raw"
    with pytest.raises(OnnxfiError, match="cannot be read as classification"):
        m.infer_layout(np.zeros((2, 8, 8), f32), "classification")


def test_segmentation_metrics_binary_mask_layout() -> None:
    golden = np.array([[[[0.9], [0.1]], [[0.8], [0.2]]]], dtype=np.float32)  # [1, 2, 2, 1]
    faulty = golden.copy()
    faulty[0, 0, 1, 0] = 0.6  # one pixel crosses 0.5
    r = m.segmentation_metrics(faulty, golden, np.array([[[1, 0], [1, 0]]]), layout="mask-nhwc")
    assert r["num_classes"] == 2.0 and r["pixel_change_frac"] == 0.25 and r["sdc_frac"] == 1.0
    assert r["pixel_accuracy"] == 0.75 and r["err_max_abs"] == pytest.approx(0.5)
