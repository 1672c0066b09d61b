"""What `pip install` puts in place (issue 15): the wheel ships the model zoo, exactly one ONNX Runtime per
extra, matplotlib in core, the README quick tour that `make check-install` runs, and `analyze --html`
refusing before its campaign when the report could not be written."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onnxfi import zoo
from onnxfi.cli import main
from onnxfi.errors import OnnxfiError
from onnxfi.report.html import preflight

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def _zoo_files() -> list[str]:
    """Every file of model_zoo/ that onnxfi reads: the registry and each entry's model and eval subset."""
    raw = json.loads((REPO / "model_zoo" / "registry.json").read_text(encoding="utf-8"))
    files = ["registry.json"]
    for spec in raw["models"].values():
        files += [spec["file"], spec["eval_data"]]
    return files


def test_every_package_is_listed() -> None:
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "onnxfi").rglob("__init__.py")}
    assert set(SETUPTOOLS["packages"]) == on_disk | {"onnxfi._zoo", "onnxfi._zoo.data"}
    assert SETUPTOOLS["package-dir"] == {"onnxfi._zoo": "model_zoo"}


def test_zoo_files_are_package_data() -> None:
    for rel in _zoo_files():
        assert (REPO / "model_zoo" / rel).is_file(), rel
        folder, _, name = rel.rpartition("/")
        package = ".".join(["onnxfi._zoo", *folder.split("/")]) if folder else "onnxfi._zoo"
        assert package in SETUPTOOLS["packages"], rel
        assert any(fnmatch.fnmatch(name, g) for g in SETUPTOOLS["package-data"][package]), rel


def test_exactly_one_runtime_per_extra() -> None:
    project = PYPROJECT["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert not core & RUNTIMES, "a runtime in core would be installed beside the [gpu] one"
    assert "matplotlib" in core  # the HTML report works after the plain install
    extras = {k: {_name(r) for r in v} for k, v in project["optional-dependencies"].items()}
    assert extras["cpu"] & RUNTIMES == {"onnxruntime"}
    assert extras["gpu"] & RUNTIMES == {"onnxruntime-gpu"}
    assert all(not deps & RUNTIMES for name, deps in extras.items() if name not in ("cpu", "gpu"))


def test_zoo_dir_prefers_installed_package_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(zoo.ZOO_ENV_VAR, raising=False)
    assert zoo.zoo_dir() == REPO / "model_zoo"  # this checkout (editable install): the repository's folder
    package = tmp_path / "site-packages" / "onnxfi"
    monkeypatch.setattr(zoo, "_PACKAGE", package)
    with pytest.raises(OnnxfiError, match="registry not found: .*_zoo.registry.json or .*model_zoo.registry.json"):
        zoo.names()
    (package / "_zoo").mkdir(parents=True)
    shutil.copy(REPO / "model_zoo" / "registry.json", package / "_zoo" / "registry.json")
    assert zoo.zoo_dir() == package / "_zoo"  # a wheel: the package data
    assert zoo.get("digits_cnn").file == package / "_zoo" / "digits_cnn.onnx"


def _tour() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("\n## Quick tour\n", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quick_tour_is_self_contained() -> None:
    """What scripts/check_install.sh runs: commands that need nothing but an install (no files of the checkout)."""
    tour = _tour()
    assert len(tour) >= 10
    for line in tour:
        assert line.startswith(("onnxfi ", 'cp "$(onnxfi zoo path ')), line
        assert "model_zoo/" not in line and ".venv" not in line, line
    script = (REPO / "scripts" / "check_install.sh").read_text(encoding="utf-8")
    assert "/^## Quick tour/" in script and "pip_ install ." in script


def test_build_ships_the_zoo(tmp_path: Path) -> None:
    """setuptools' build_py on this checkout (what goes into the wheel, offline) puts every zoo file under
    onnxfi/_zoo/ and none of the zoo's build scripts."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "onnxfi", src / "onnxfi", ignore=ignore)
    shutil.copytree(REPO / "model_zoo", src / "model_zoo", ignore=ignore)
    lib = tmp_path / "lib"
    proc = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py", "-d", str(lib)],
        cwd=src, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {p.relative_to(lib).as_posix() for p in lib.rglob("*") if p.is_file()}
    for rel in _zoo_files():
        assert f"onnxfi/_zoo/{rel}" in names, rel
    assert {"onnxfi/cli.py", "onnxfi/report/html.py", "onnxfi/py.typed"} <= names
    assert not [n for n in names if n.startswith("onnxfi/_zoo/build") or n.endswith("requirements-zoo.txt")]


# --------------------------------------------------------------------- analyze --html: refused up front


def test_preflight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    preflight(tmp_path / "report.html")  # a writable folder: nothing to say
    with pytest.raises(OnnxfiError, match="folder .*nowhere does not exist"):
        preflight(tmp_path / "nowhere" / "report.html")
    with pytest.raises(OnnxfiError, match="it is a folder"):
        preflight(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    with pytest.raises(OnnxfiError, match="needs matplotlib.*pip install"):
        preflight(tmp_path / "report.html")


@pytest.mark.parametrize("problem", ["folder", "matplotlib"])
def test_analyze_html_refused_before_the_campaign(
    problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "report.html"
    if problem == "folder":
        html = tmp_path / "no" / "report.html"
    else:
        monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    db = tmp_path / "run.db"
    assert main(["analyze", "digits_cnn", "--faults", "50", "--db", str(db), "--html", str(html)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("onnxfi: error: ") and ("does not exist" if problem == "folder" else "matplotlib") in line
    assert "experiments" not in captured.out  # no plan was made, no campaign ran
    assert not db.exists() and not html.exists()


def test_cli_without_an_onnx_runtime_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from onnxfi.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main(["zoo", "list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'onnxfi[cpu]'" in err[0] and "onnxfi[gpu]" in err[0]
