"""Memory guards (issue 18): allocations sized by a model's dims, --input-shape, --samples or an .npz header
are checked against the budget (onnxfi.memory) before anything is allocated: one line, exit 2, no MemoryError."""

from __future__ import annotations

import io
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import make_model, save, vi
from onnx import TensorProto
from onnx import helper as oh

from onnxfi import memory
from onnxfi.cli import main
from onnxfi.data import load_data, random_data
from onnxfi.errors import DataError, OnnxfiError
from onnxfi.memory import ENV_VAR, FLOOR_BYTES, UNKNOWN_BYTES, MemoryBudgetError, budget_bytes, check_bytes
from onnxfi.model import InputSpec, load_model

F = ir.DataType.FLOAT
HUGE = 10**14  # 3 x 10^14 float32 values: 1,092 TiB, past any machine and the 128 TiB address space


@pytest.fixture(autouse=True)
def default_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the default budget, whatever the environment running the tests sets."""
    monkeypatch.delenv(ENV_VAR, raising=False)


def relu_model(shape: list[int | str]) -> onnx.ModelProto:
    return make_model([oh.make_node("Relu", ["x"], ["y"])], [vi("x", TensorProto.FLOAT, shape)],
                      [vi("y", TensorProto.FLOAT, shape)])


def peak_bytes(fn: Callable[[], object]) -> tuple[BaseException | None, int]:
    """What ``fn`` raised (or None), and the most memory traced while it ran (numpy reports its arrays)."""
    tracemalloc.start()
    try:
        fn()
        raised: BaseException | None = None
    except Exception as e:  # the test asserts on it
        raised = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


def one_line_cli_error(capsys: pytest.CaptureFixture[str], args: list[object], *needles: str) -> str:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxfi: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------- the budget


def test_the_default_budget_is_half_the_memory_with_a_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "physical_memory", lambda: 64 * 2**30)
    assert budget_bytes() == 32 * 2**30
    monkeypatch.setattr(memory, "physical_memory", lambda: 512 * 2**20)
    assert budget_bytes() == FLOOR_BYTES
    monkeypatch.setattr(memory, "physical_memory", lambda: None)
    assert budget_bytes() == UNKNOWN_BYTES


def test_the_physical_memory_is_read_here() -> None:
    phys = memory.physical_memory()
    assert phys is not None and phys > 2**20 and budget_bytes() >= min(FLOOR_BYTES, phys)


@pytest.mark.parametrize(("value", "expected"), [("1", 2**20), ("0.5", 2**19), (" 2048 ", 2**31)])
def test_the_environment_variable_sets_the_budget(monkeypatch: pytest.MonkeyPatch, value: str, expected: int) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    assert budget_bytes() == expected


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "1e999", "12MB"])
def test_a_bad_environment_variable_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(OnnxfiError) as ei:
        budget_bytes()
    msg = str(ei.value)
    assert "\n" not in msg and ENV_VAR in msg and repr(value) in msg and "MiB" in msg


def test_check_bytes_says_what_how_much_the_budget_and_how_to_raise_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "1024")
    check_bytes("a thing", 2**30)  # at the budget: fine
    with pytest.raises(MemoryBudgetError) as ei:
        check_bytes("random data for input 'x' [1,3,100000,1000] float32", 3 * 2**30)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith("random data for input 'x' [1,3,100000,1000] float32 needs 3.0 GiB")
    assert "budget of 1.0 GiB" in msg and f"{ENV_VAR}=1024" in msg and f"set {ENV_VAR} to raise it" in msg
    assert isinstance(ei.value, OnnxfiError) and not isinstance(ei.value, MemoryError)


# ---------------------------------------------------------------------------------------------- random inputs


def test_a_huge_fixed_dim_in_the_model_is_refused_before_allocating(tmp_path: Path) -> None:
    specs = load_model(save(relu_model([1, 3, HUGE]), tmp_path / "huge.onnx")).inputs()
    raised, peak = peak_bytes(lambda: random_data(specs))
    assert isinstance(raised, MemoryBudgetError), raised
    msg = str(raised)
    assert "\n" not in msg and f"input 'x' [1,3,{HUGE}] float32 needs 1,117,587.1 GiB" in msg
    assert ENV_VAR in msg and peak < 2**20


def test_a_huge_input_shape_override_is_refused_before_allocating(tmp_path: Path) -> None:
    specs = load_model(save(relu_model(["N", 3, "H", "W"]), tmp_path / "dyn.onnx")).inputs()
    raised, peak = peak_bytes(lambda: random_data(specs, overrides={"x": (1, 3, 10**7, 10**7)}))
    assert isinstance(raised, MemoryBudgetError), raised
    assert "input 'x' [1,3,10000000,10000000] float32" in str(raised) and peak < 2**20


def test_the_budget_counts_every_input_and_the_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [InputSpec("a", F, ("N", 1000)), InputSpec("b", ir.DataType.INT32, ("N", 2000))]
    # 300 samples: a 1.2 MB float32, b 2.4 MB int32 plus its 4.8 MB int64 draws = 8.4 MB
    monkeypatch.setenv(ENV_VAR, "7")
    raised, peak = peak_bytes(lambda: random_data(specs, batch=300))
    assert isinstance(raised, MemoryBudgetError), raised
    assert "input 'b' [300,2000] int32 (and 1 more input(s)), 300 samples, needs 8.0 MiB" in str(raised)
    assert peak < 2**20
    monkeypatch.setenv(ENV_VAR, "9")
    ds = random_data(specs, batch=300)
    assert ds.feeds["a"].shape == (300, 1000) and ds.feeds["b"].shape == (300, 2000)


def test_raising_the_budget_lets_a_moderate_input_through(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = [InputSpec("x", F, (1, 3, 1000, 1000))]  # 12 MB
    monkeypatch.setenv(ENV_VAR, "1")
    with pytest.raises(MemoryBudgetError, match=r"input 'x' \[1,3,1000,1000\] float32 needs 11.4 MiB"):
        random_data(specs)
    monkeypatch.setenv(ENV_VAR, "64")
    assert random_data(specs).feeds["x"].shape == (1, 3, 1000, 1000)


def test_the_same_random_data_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check draws nothing: the seeded values are those numpy gives directly."""
    specs = [InputSpec("x", F, ("N", 5)), InputSpec("h", ir.DataType.FLOAT16, ("N", 2)),
             InputSpec("i", ir.DataType.INT64, ("N", 3))]
    ds = random_data(specs, seed=7, batch=4)
    rng = np.random.default_rng(7)
    np.testing.assert_array_equal(ds.feeds["x"], rng.random((4, 5), dtype=np.float32))
    np.testing.assert_array_equal(ds.feeds["h"], rng.random((4, 2), dtype=np.float32).astype(np.float16))
    np.testing.assert_array_equal(ds.feeds["i"], rng.integers(0, 10, size=(4, 3)))


def test_cli_run_with_a_huge_dim_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_cli_error(capsys, ["run", save(relu_model([1, 3, HUGE]), tmp_path / "huge.onnx")],
                       f"input 'x' [1,3,{HUGE}] float32 needs", "over the memory budget", ENV_VAR)
    dyn = save(relu_model(["N", 3, "H", "W"]), tmp_path / "dyn.onnx")
    one_line_cli_error(capsys, ["run", dyn, "--input-shape", "x:1x3x10000000x10000000"],
                       "input 'x' [1,3,10000000,10000000] float32 needs", ENV_VAR)


def test_cli_run_with_too_many_samples_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "4")
    dyn = save(relu_model(["N", 1000]), tmp_path / "dyn.onnx")
    one_line_cli_error(capsys, ["run", dyn, "--samples", "2000"], "[2000,1000] float32, 2000 samples, needs 7.6 MiB",
                       "budget of 4.0 MiB", f"{ENV_VAR}=4")


def test_cli_a_bad_budget_variable_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "lots")
    one_line_cli_error(capsys, ["run", save(relu_model(["N", 4]), tmp_path / "m.onnx")], f"{ENV_VAR}='lots'")


# ---------------------------------------------------------------------------------------------- .npz files


def npy_bytes(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    """A .npy file whose header declares ``shape`` and ``dtype`` and whose data is ``data`` (maybe far less)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def write_zip(path: Path, members: dict[str, bytes], compress: bool = False) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def bomb(tmp_path: Path) -> Path:
    """An .npz whose one member declares 10^15 float64 values (8 PB) and holds 16 bytes."""
    return write_zip(tmp_path / "bomb.npz", {"x.npy": npy_bytes((10**15,), "<f8", bytes(16))})


def test_an_npz_header_declaring_more_than_its_member_holds_is_refused(bomb: Path) -> None:
    raised, peak = peak_bytes(lambda: load_data(bomb, [InputSpec("x", F, ("N",))]))
    assert isinstance(raised, DataError), raised
    msg = str(raised)
    assert "\n" not in msg and msg.startswith("bomb.npz: array 'x' [1000000000000000] float64 needs")
    assert "holds 16" in msg and "truncated or forged" in msg and peak < 2**20


def test_an_npz_over_the_budget_is_refused_from_its_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real, honest .npz: 16 MB of zeros compress to a few KB (a zip bomb in small)."""
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, x=np.zeros((2000, 1000), np.float64), labels=np.zeros(2000, np.int64))
    assert path.stat().st_size < 2**20
    spec = [InputSpec("x", ir.DataType.DOUBLE, ("N", 1000))]
    monkeypatch.setenv(ENV_VAR, "8")
    raised, peak = peak_bytes(lambda: load_data(path, spec))
    assert isinstance(raised, MemoryBudgetError), raised
    assert str(raised).startswith("zeros.npz: array 'x' [2000,1000] float64 with the other arrays needs 15.3 MiB")
    assert peak < 2**20
    monkeypatch.setenv(ENV_VAR, "32")
    assert load_data(path, spec).size == 2000


def test_an_npz_member_that_is_not_an_array_is_refused(tmp_path: Path) -> None:
    """numpy hands such a member back as bytes (read whole); it is refused before."""
    path = write_zip(tmp_path / "odd.npz", {"x": b"\0" * (4 << 20)}, compress=True)
    raised, peak = peak_bytes(lambda: load_data(path, [InputSpec("x", F, ("N",))]))
    assert isinstance(raised, DataError) and "member 'x' is not a .npy array" in str(raised), raised
    assert peak < 2**20


def test_an_npz_with_a_negative_dim_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "neg.npz", {"x.npy": npy_bytes((-4,), "<f4", bytes(16))})
    with pytest.raises(DataError, match=r"member 'x.npy' declares the shape \[-4\]"):
        load_data(path, [InputSpec("x", F, ("N",))])


def test_cli_run_on_an_npz_bomb_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], bomb: Path) -> None:
    model = save(relu_model(["N"]), tmp_path / "m.onnx")
    one_line_cli_error(capsys, ["run", model, "--data", bomb], "bomb.npz", "truncated or forged")
