"""One JSON convention for every command: ``--json FILE`` writes the document, ``--json -`` puts only the document
on stdout (the rest on stderr), every document has its ``schema``, and docs/json.md names every key."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, ZOO

from onnxfi.cli import main
from onnxfi.commands._json import SCHEMAS, jsonable, write_json
from onnxfi.errors import InternalError

MODEL = ZOO / "digits_cnn.onnx"
DATA = ZOO / "data" / "digits_eval.npz"
DOCS = REPO / "docs" / "json.md"


def _commands(tmp: Path) -> dict[str, Callable[[str], list[str]]]:
    """Per schema name: the argv of a small run of that command, for a given tag (outputs do not collide)."""
    gate_cfg = tmp / "onnxfi.toml"
    gate_cfg.write_text(f"""
[gate]
model = "{MODEL.as_posix()}"
data = "{DATA.as_posix()}"
db = "{(tmp / 'gate.db').as_posix()}"

[gate.plan]
faults = 6
seed = 1

[gate.thresholds]
sdc1 = 1.0
clean_min = 0.5
""")
    return {
        "inspect": lambda tag: ["inspect", str(MODEL)],
        "run": lambda tag: ["run", str(MODEL), "--data", str(DATA), "--repeat", "1"],
        "inject": lambda tag: ["inject", str(MODEL), "--site", "features.0.weight", "--index", "0", "--bit", "30",
                               "-o", str(tmp / f"inject-{tag}.onnx")],
        "harden": lambda tag: ["harden", str(MODEL), "--method", "ranger", "--calib", str(DATA), "--repeat", "1",
                               "-o", str(tmp / f"harden-{tag}.onnx")],
        "analyze": lambda tag: ["analyze", str(MODEL), "--data", str(DATA), "--faults", "6", "--bits", "23-31",
                                "--db", str(tmp / f"analyze-{tag}.db")],
        "results": lambda tag: ["results", str(tmp / "analyze-file.db")],
        "gate": lambda tag: ["gate", "--config", str(gate_cfg)],
        "compare": lambda tag: ["compare", str(MODEL), "--data", str(DATA), "--providers", "reference,cpu", "--faults", "2",
                                "--fault-samples", "8", "--repeat", "1", "--warmup", "0"],
        "zoo list": lambda tag: ["zoo", "list"],
        "zoo eval": lambda tag: ["zoo", "eval", "digits_cnn"],
        "critical-bits": lambda tag: ["critical-bits", str(MODEL), "--data", str(DATA), "--sites", "classifier.2.bias",
                                      "--elements", "2", "--db", str(tmp / f"critical-{tag}.db")],
        "worst-case": lambda tag: ["worst-case", str(MODEL), "--data", str(DATA), "--target-accuracy", "0.2",
                                   "--candidates", "8", "-o", str(tmp / f"wc-{tag}.plan.json")],
        "advise": lambda tag: ["advise", str(MODEL), "--data", str(DATA), "--faults", "20", "--repeat", "5",
                               "--no-verify"],
    }


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every command once with ``--json FILE`` and once with ``--json -`` (in this order: results reads the
    analyze store of the FILE run)."""
    tmp = tmp_path_factory.mktemp("json")
    got: dict[str, dict[str, Any]] = {}
    for name, argv in _commands(tmp).items():
        target = tmp / f"{name.replace(' ', '-')}.json"
        rc_file, out_file, _ = _main([*argv("file"), "--json", str(target)])
        rc_dash, out_dash, err_dash = _main([*argv("dash"), "--json", "-"])
        got[name] = {"rc_file": rc_file, "out_file": out_file, "target": target,
                     "rc_dash": rc_dash, "out_dash": out_dash, "err_dash": err_dash}
    return got


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_file_writes_the_document_with_its_schema(produced: dict[str, dict[str, Any]], name: str) -> None:
    run = produced[name]
    assert run["rc_file"] == 0, run["out_file"]
    doc = json.loads(run["target"].read_text())
    assert doc["schema"] == SCHEMAS[name] == f"onnxfi.{name.replace(' ', '.')}/1"
    assert next(iter(doc)) == "schema"
    # the usual terminal output is still there, and says where the document went
    assert f"wrote {run['target']}" in run["out_file"]
    assert not run["out_file"].lstrip().startswith("{")


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_dash_puts_only_the_document_on_stdout(produced: dict[str, dict[str, Any]], name: str) -> None:
    run = produced[name]
    assert run["rc_dash"] == 0, run["err_dash"]
    doc = json.loads(run["out_dash"])  # the whole of stdout is one document
    assert doc["schema"] == SCHEMAS[name]
    assert run["err_dash"].strip(), "the tables go to stderr"
    assert "wrote -" not in run["err_dash"] and "wrote -" not in run["out_dash"]
    file_doc = json.loads(produced[name]["target"].read_text())
    assert set(doc) == set(file_doc)


def _documented() -> set[str]:
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", DOCS.read_text()))


# sub-objects whose keys are names (not data such as site names or opset domains), per document
_NESTED: dict[str, list[str]] = {
    "inspect": ["sites[]", "inputs[]"],
    "run": ["outputs[]", "latency_ms", "output_choice"],
    "inject": ["fault"],
    "harden": ["passes[]", "comparison", "comparison.latency_ms", "calibration", "output_choice"],
    "analyze": ["plan", "plan.strata[]", "plan.options", "clean", "clean.output_choice", "summary",
                "summary.progress", "summary.strata", "summary.layers[]", "summary.bits[]", "summary.layer_bit[]",
                "summary.rates.sdc1", "summary.per_inference.sdc1"],
    "results": ["versions", "rows[]"],
    "gate": ["checks[]", "plan", "clean", "summary"],
    "compare": ["runtimes[]", "runtimes[].outputs[]", "runtimes[].latency", "runtimes[].faults", "faults",
                "faults.plan", "clean", "output_choice"],
    "zoo list": ["models[]", "models[].inputs[]", "models[].data_source"],
    "zoo eval": [],
    "critical-bits": ["settings", "clean", "rate", "layers[]", "top[]"],
    "worst-case": ["flips[]", "settings", "output_choice"],
    "advise": ["choice", "choice.units[]", "recipe"],
}


def _at(doc: Any, path: str) -> list[dict[str, Any]]:
    objs = [doc]
    for part in path.split("."):
        key, many = (part[:-2], True) if part.endswith("[]") else (part, False)
        nxt = []
        for o in objs:
            v = o.get(key) if isinstance(o, dict) else None
            nxt.extend(v if many and isinstance(v, list) else [] if many or v is None else [v])
        objs = nxt
    return [o for o in objs if isinstance(o, dict)]


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_docs_name_every_key_of_each_document(produced: dict[str, dict[str, Any]], name: str) -> None:
    text = DOCS.read_text()
    assert f"`{SCHEMAS[name]}`" in text
    documented = _documented()
    doc = json.loads(produced[name]["target"].read_text())
    missing = {k for k in doc if k not in documented}
    for path in _NESTED[name]:
        objs = _at(doc, path)
        assert objs, f"{name}: nothing at {path}"
        missing |= {f"{path}.{k}" for o in objs for k in o if k not in documented}
    assert not missing, f"docs/json.md does not name: {sorted(missing)}"


def test_bare_json_is_stdout_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(MODEL), "--weights", "--json"]) == 0
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert doc["schema"] == "onnxfi.inspect/1" and {s["kind"] for s in doc["sites"]} == {"weight"}
    assert "Weight sites" in cap.err


def test_analyze_json_stdout_keeps_the_default_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", str(MODEL), "--data", str(DATA), "--faults", "3", "--json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["db"] == "digits_cnn.onnxfi.db" and (tmp_path / "digits_cnn.onnxfi.db").is_file()
    assert not (tmp_path / "-").exists() and not (tmp_path / "-.db").exists()


@pytest.mark.parametrize("suffix", [".json", ".textproto", ".onnxtxt"])
def test_inject_refuses_a_text_model_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    out = tmp_path / f"faulty{suffix}"
    rc = main(["inject", str(MODEL), "--site", "features.0.weight", "--index", "0", "--bit", "30", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.count("\n") == 1 and "binary .onnx" in err and "--json FILE" in err


def test_harden_and_report_refuse_json_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["harden", str(MODEL), "--method", "ranger", "-o", str(tmp_path / "h.json")])
    assert rc == 2 and "must be a .onnx file" in capsys.readouterr().err
    rc = main(["report", str(tmp_path / "missing.db"), "-o", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "HTML" in err and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("target", ["model.onnx", "run.db", "data.npz"])
def test_json_refuses_to_replace_a_model_or_store(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  target: str) -> None:
    victim = tmp_path / target
    victim.write_bytes(b"precious")
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(MODEL), "--json", str(victim)])
    assert exc.value.code == 2 and "refusing to write a JSON document" in capsys.readouterr().err
    assert victim.read_bytes() == b"precious"


def test_json_file_into_a_new_folder(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "zoo.json"
    rc, out, _ = _main(["zoo", "list", "--json", str(target)])
    assert rc == 0 and json.loads(target.read_text())["schema"] == "onnxfi.zoo.list/1"
    assert f"wrote {target}" in out


def test_write_json_is_standard_json_and_needs_a_schema(tmp_path: Path) -> None:
    target = tmp_path / "d.json"
    write_json(str(target), {"schema": "onnxfi.run/1", "nan": math.nan, "inf": np.float32(np.inf),
                             "arr": np.arange(3, dtype=np.int64), "x": np.float64(0.5), "flag": np.bool_(True),
                             "path": Path("m.onnx"), "t": (1, 2)})
    text = target.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"schema": "onnxfi.run/1", "nan": None, "inf": None, "arr": [0, 1, 2], "x": 0.5,
                                "flag": True, "path": "m.onnx", "t": [1, 2]}
    assert jsonable({1: [np.int8(-3)]}) == {"1": [-3]}
    with pytest.raises(InternalError):
        write_json(str(target), {"model": "m.onnx"})
    with pytest.raises(InternalError):
        write_json(str(target), {"schema": "something/1"})


def test_json_dash_end_to_end() -> None:
    proc = subprocess.run([sys.executable, "-m", "onnxfi", "zoo", "eval", "digits_cnn", "--json", "-"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "onnxfi.zoo.eval/1" and doc["name"] == "digits_cnn"
    assert "providers:" in proc.stderr
