"""The registry of hardening methods: names, options and calibration needs, and the template every pass follows."""

from __future__ import annotations

import numpy as np
import pytest
from harden_helpers import MIXED, parse, ranges

from onnxfi.data import Dataset
from onnxfi.harden import DATA_METHODS, METHOD_OPTIONS, METHODS, HardenOptions, harden
from onnxfi.passes import HARDENING_METHODS, Calibration, NanGuard, Protect, Ranger


def test_methods_declare_names_options_and_calibration() -> None:
    assert list(HARDENING_METHODS) == ["ranger", "clipact", "relumax", "protect", "nan-guard",
                                      "weight-clip"]
    assert all(cls.method == name and cls.summary for name, cls in HARDENING_METHODS.items())
    assert list(METHODS) == list(HARDENING_METHODS)
    needs = {name: cls.calibration for name, cls in HARDENING_METHODS.items()}
    assert needs == {
        "ranger": Calibration.RANGES, "clipact": Calibration.RANGES, "relumax": Calibration.RANGES,
        "protect": Calibration.NONE, "nan-guard": Calibration.NONE, "weight-clip": Calibration.NONE,
    }
    assert DATA_METHODS == ("ranger", "clipact", "relumax")
    assert METHOD_OPTIONS == {"percentile": "ranger", "search": "clipact", "level": "protect",
                              "guard_points": "nan-guard"}


def test_passes_are_built_from_the_settings_that_apply_to_them() -> None:
    options = HardenOptions(percentile=99.5, level=3, guard_points="^y$")
    ranger = HARDENING_METHODS["ranger"].from_settings(options)
    assert isinstance(ranger, Ranger) and ranger.percentile == 99.5
    assert ranger.profile_percentiles() == (99.5,) and ranger.report_settings() == {"percentile": 99.5}
    protect = HARDENING_METHODS["protect"].from_settings(options)
    assert isinstance(protect, Protect) and protect.level == 3 and protect.report_settings()["level"] == 3
    guard = HARDENING_METHODS["nan-guard"].from_settings(options)
    assert isinstance(guard, NanGuard) and guard.report_settings() == {"points": "^y$"}


@pytest.mark.parametrize("method", list(HARDENING_METHODS))
def test_every_candidate_is_either_changed_or_skipped_with_its_reason(method: str) -> None:
    model = parse(MIXED)
    pass_ = HARDENING_METHODS[method].from_settings(HardenOptions(guard_points="."))
    pass_.calibrate(ranges(x=(-1.0, 2.0), a=(0.0, 2.0), n=(-2.0, 1.0), e=(0.0, 1.0)))
    candidates = pass_.candidates(model)
    reasons = [pass_.check(c) for c in candidates]
    result = pass_(model)
    assert len(pass_.changes) == reasons.count(None) and result.modified == bool(pass_.changes)
    assert [s.reason for s in pass_.skips] == [r for r in reasons if r is not None]


def test_calibrated_methods_report_their_data_and_leave_hardened_values_alone() -> None:
    model = parse("g (float[N] x) => (float[N] y) { y = Relu(x) }")
    data = Dataset({"x": np.array([-1.0, 0.5, 3.0], dtype=np.float32)}, None, "t")
    result = harden(model, ["ranger", "relumax"], data)
    ranger, relumax = result.reports
    assert ranger.details == {"percentile": None, "samples": 3, "data": "t"}
    assert [c.detail for c in ranger.changes] == ["Clip [0, 3] after Relu"]
    assert relumax.details == {"samples": 3, "data": "t"}
    assert not relumax.changes  # profiled on the model ranger left: its Relu already feeds the clip
    assert [(s.node, s.reason) for s in relumax.skips] == [
        ("Relu(y__pre_onnxfi_ranger)", "output 'y__pre_onnxfi_ranger' already feeds the ranger hardening"),
        ("onnxfi_ranger_Clip", "part of the ranger hardening"),
    ]
