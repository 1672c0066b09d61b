"""Start-up: ``onnxfi --version`` and a command's ``--help`` load no ONNX, ONNX Runtime or numpy; the parser of
one command is the parser it has among all of them; the names the CLI spells out agree with the library's;
the local executor's workers, forked from a server started early, see the parent's environment of now and
load their engines side by side; a campaign's own process never loads ONNX Runtime (quieted wherever it
loads); the command exits without the interpreter's teardown but after its exit handlers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from campaign_helpers import save_kat

from onnxfi.cli import build_parser, command_modules, main

HEAVY = ("onnx", "onnx_ir", "onnxruntime", "numpy")
# every command's module imports ONNX, ONNX Runtime and numpy when its command runs, not when it loads
LIGHT = ("inspect", "inject", "run", "analyze", "gate", "compare", "report", "results", "zoo", "harden",
         "critical-bits", "worst-case", "advise")


def _modules_after(argvs: list[list[str]]) -> dict[str, list[str]]:
    """For each argv, in one fresh interpreter: which of HEAVY ``main(argv)`` left in sys.modules."""
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from onnxfi.cli import main
        seen = {{}}
        for argv in {argvs!r}:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main(argv)
            seen[" ".join(argv)] = [m for m in {HEAVY!r} if m in sys.modules]
        print(json.dumps(seen))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    seen: dict[str, list[str]] = json.loads(out)
    return seen


def test_version_and_a_commands_help_load_no_onnx_runtime_or_numpy() -> None:
    argvs = [["--version"], *([c, "--help"] for c in LIGHT), ["zoo", "list", "--help"]]
    assert _modules_after(argvs) == {" ".join(a): [] for a in argvs}


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    from onnxfi import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"onnxfi {__version__}"


def _help(only: list[str] | None, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        build_parser(only).parse_args(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module", command_modules())
def test_a_command_alone_has_the_parser_it_has_among_all(module: str, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI registers only the module the command line names: that module defines the command of its
    name (``critical_bits``: ``critical-bits``), with the same options and help as among all commands."""
    monkeypatch.setenv("COLUMNS", "100")
    argv = [module.replace("_", "-"), "--help"]
    alone = _help([module], argv, capsys)
    assert alone.startswith(f"usage: onnxfi {argv[0]} ")
    assert alone == _help(None, argv, capsys)


def test_a_bad_command_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-command'" in err
    for module in command_modules():
        assert repr(module.replace("_", "-")) in err


def test_the_names_the_cli_spells_out_are_the_librarys() -> None:
    from onnxfi.advise import ADVISE_SCHEMA
    from onnxfi.commands._common import MODES as CLI_MODES
    from onnxfi.commands._common import TASKS as CLI_TASKS
    from onnxfi.commands._json import SCHEMAS
    from onnxfi.compare import COMPARE_SCHEMA
    from onnxfi.critical import CRITICAL_BITS_SCHEMA
    from onnxfi.engine import MODES
    from onnxfi.gate import GATE_SCHEMA
    from onnxfi.metrics import TASKS
    from onnxfi.worstcase import WORST_CASE_SCHEMA

    assert CLI_TASKS == TASKS and CLI_MODES == MODES
    assert (SCHEMAS["gate"], SCHEMAS["compare"], SCHEMAS["critical-bits"], SCHEMAS["worst-case"],
            SCHEMAS["advise"]) == (GATE_SCHEMA, COMPARE_SCHEMA, CRITICAL_BITS_SCHEMA, WORST_CASE_SCHEMA, ADVISE_SCHEMA)
    from onnxfi.commands import critical_bits, harden
    from onnxfi.critical import THRESHOLDS
    from onnxfi.harden import METHODS

    assert harden.METHODS == METHODS and tuple(critical_bits._MEANS) == THRESHOLDS
    # what the worker server imports, spelled out where it starts early (before the executor loads)
    from onnxfi import campaign
    from onnxfi.executors.local import SERVER_PRELOAD

    assert campaign._SERVER_PRELOAD == SERVER_PRELOAD


def test_starting_the_worker_server_early_leaves_ctrl_c_to_the_caller() -> None:
    from onnxfi.campaign import prestart_workers

    before = signal.getsignal(signal.SIGINT)
    prestart_workers("local")
    prestart_workers("local")  # once running, a no-op
    prestart_workers("ray")  # another executor: nothing
    assert signal.getsignal(signal.SIGINT) is before


PROBE = '''
import os
from pathlib import Path


def probe(faulty, golden, labels):
    """Write the worker's pid and the value of ONNXFI_TEST_STARTUP it sees next to the marker folder."""
    folder = Path(os.environ["ONNXFI_TEST_STARTUP"])
    (folder / str(os.getpid())).write_text(os.getcwd())
    return 0.0
'''


def test_workers_started_after_the_server_see_the_callers_environment_and_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server that local workers fork from may have started long before (by another campaign of this
    process): a worker still sees the environment, the import paths and the working folder of its parent
    at the time it starts, as a spawned one does."""
    from onnxfi.campaign import prestart_workers
    from onnxfi.engine import EngineConfig
    from onnxfi.executors import make_executor
    from onnxfi.model import load_model
    from onnxfi.plan import make_plan
    from onnxfi.sites import enumerate_sites

    prestart_workers("local")  # before the variable, the module folder and the working folder exist
    model, data = save_kat(tmp_path)
    loaded = load_model(str(model))
    plan = make_plan(model, enumerate_sites(loaded.model, loaded.value_shapes).select("all", "^W$"), bits=[30],
                     n_faults=4)
    (tmp_path / "startup_probe.py").write_text(PROBE)
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = tmp_path / "seen"
    seen.mkdir()
    monkeypatch.setenv("ONNXFI_TEST_STARTUP", str(seen))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ex = make_executor("local", EngineConfig(str(model), data_path=str(data), metric="startup_probe:probe"))
    try:
        rows = list(ex.run(plan.experiments, lambda site: (True, False)))
    finally:
        ex.close()
    assert len(rows) == len(plan.experiments) and all(r["error"] is None for r in rows)
    written = list(seen.iterdir())
    assert len(written) == 1 and int(written[0].name) != os.getpid()  # one worker, not this process
    assert written[0].read_text() == str(work)


def _children_after(argv: list[str]) -> list[str]:
    """In a fresh interpreter: ``main(argv)``, then the command lines of the processes it left running."""
    script = textwrap.dedent(f"""
        import json, os
        from pathlib import Path
        from onnxfi.cli import main
        rc = main({argv!r})
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == os.getpid():
                    kids.append((stat.parent / "cmdline").read_bytes().replace(b"\\0", b" ").decode())
            except (OSError, IndexError, ValueError):
                pass
        print(json.dumps([rc, kids]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    rc, kids = json.loads(out.splitlines()[-1])
    assert rc == 2
    return list(kids)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers fork from a server on Linux only")
def test_an_analyze_that_stops_on_its_database_starts_no_worker_server(tmp_path: Path) -> None:
    model, data = save_kat(tmp_path)
    db = tmp_path / "taken.db"
    db.write_bytes(b"")
    argv = ["analyze", str(model), "--data", str(data), "--faults", "4"]
    assert _children_after([*argv, "--db", str(db)]) == []
    assert _children_after([*argv, "--db", str(tmp_path / "missing.db"), "--resume"]) == []


def test_onnx_ir_loads_without_sympy_and_symbolic_dimensions_still_work() -> None:
    """onnxfi stands in for SymPy until it is used (0.3 s of every start): ``import onnxfi, onnx_ir`` and
    a model load leave it unloaded; a symbolic dimension expression then loads it and evaluates."""
    script = textwrap.dedent("""
        import json, sys
        import onnxfi, onnx_ir
        from onnxfi.model import load_model
        from onnxfi.zoo import model_path
        load_model(str(model_path("digits_cnn")), {}, check=True)
        before = "sympy.core" in sys.modules
        value = onnx_ir.SymbolicDim("N * 2 + 1").evaluate({"N": 3})
        import sympy
        print(json.dumps([before, "sympy.core" in sys.modules, int(value), str(sympy.Symbol("x") + 1)]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [False, True, 7, "x + 1"]


def test_auto_workers_one_per_core_with_one_thread_within_memory(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    from onnxfi import campaign
    from onnxfi.engine import EngineConfig

    model = tmp_path / "m.onnx"
    model.write_bytes(b"x" * 2**20)  # 1 MiB
    cfg = EngineConfig(model_path=str(model), cache_mb=100)
    monkeypatch.setattr(campaign, "usable_cores", lambda: 4)
    monkeypatch.setattr(campaign, "_available_memory", lambda: 2**40)
    assert campaign.auto_workers(cfg) == (4, 1)
    monkeypatch.setattr(campaign, "usable_cores", lambda: 64)
    assert campaign.auto_workers(cfg) == (campaign.MAX_AUTO_WORKERS, 64 // campaign.MAX_AUTO_WORKERS)
    monkeypatch.setattr(campaign, "usable_cores", lambda: 4)
    # threads given: cores // threads workers
    assert campaign.auto_workers(EngineConfig(model_path=str(model), cache_mb=100, threads=2)) == (2, 2)
    # memory: half of what is available must hold each worker (5 x model + cache)
    need = 5 * 2**20 + 100 * 2**20
    monkeypatch.setattr(campaign, "_available_memory", lambda: 2 * need * 2 + 1)
    assert campaign.auto_workers(cfg) == (2, 2)
    monkeypatch.setattr(campaign, "_available_memory", lambda: need)
    assert campaign.auto_workers(cfg) == (1, 4)
    monkeypatch.setattr(campaign, "_available_memory", lambda: None)  # unknown: one worker
    assert campaign.auto_workers(cfg) == (1, 4)
    monkeypatch.setattr(campaign, "_available_memory", lambda: 2**40)
    # one device, or Ray's own resources: one worker, threads as configured
    assert campaign.auto_workers(EngineConfig(model_path=str(model), provider="cuda")) == (1, None)
    assert campaign.auto_workers(cfg, executor="ray") == (1, None)
    # an explicit count is kept; the cores are shared between its workers unless threads are given
    assert campaign.auto_workers(cfg, workers=2) == (2, 2)
    assert campaign.auto_workers(cfg, workers=1) == (1, None)
    assert campaign.auto_workers(EngineConfig(model_path=str(model), threads=3), workers=2) == (2, 3)


def test_analyze_json_says_the_workers_and_threads_it_used(tmp_path: Path) -> None:
    from onnxfi.campaign import usable_cores

    out = tmp_path / "a.json"
    assert main(["analyze", "digits_mlp_skl", "--faults", "8", "--db", str(tmp_path / "a.db"),
                 "--json", str(out)]) == 0
    w = json.loads(out.read_text())["workers"]
    assert 1 <= w["workers"] <= usable_cores() and w["threads"] == max(1, usable_cores() // w["workers"])
    assert main(["analyze", "digits_mlp_skl", "--faults", "8", "--db", str(tmp_path / "b.db"), "--workers", "1",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["workers"] == {"workers": 1, "threads": None}


def test_an_analyze_leaves_onnx_runtime_to_its_workers(tmp_path: Path) -> None:
    """A campaign's own process plans, stores and reports: ONNX Runtime and the engine load in its workers
    (and the server they fork from) only. The versions it stores still name ONNX Runtime's."""
    import onnxruntime

    from onnxfi.store import load_campaign

    model, data = save_kat(tmp_path)
    db = tmp_path / "a.db"
    argv = ["analyze", str(model), "--data", str(data), "--faults", "8", "--db", str(db)]
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from onnxfi.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main({argv!r})
        print(json.dumps([rc, [m for m in ("onnxruntime", "onnxfi.engine.engine") if m in sys.modules]]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == [0, []]
    assert load_campaign(db).versions["onnxruntime"] == onnxruntime.__version__


def test_onnx_runtime_loaded_after_the_cli_started_is_quiet_all_the_same(tmp_path: Path) -> None:
    """The CLI silences ONNX Runtime's log when the runtime loads: also where it loads only after the
    command ran (``inspect`` leaves it unloaded), as it does where a command's library code loads it."""
    model, _ = save_kat(tmp_path)
    script = textwrap.dedent(f"""
        import contextlib, io, sys
        import onnx.helper as oh
        if sys.argv[1] == "cli":
            from onnxfi.cli import main
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(["inspect", {str(model)!r}]) == 0
            assert "onnxruntime" not in sys.modules
        import onnxruntime as ort
        # an initializer no node uses: ONNX Runtime removes it with a warning (at its default severity)
        graph = oh.make_graph([oh.make_node("Identity", ["x"], ["y"])], "g",
                              [oh.make_tensor_value_info("x", 1, [1])], [oh.make_tensor_value_info("y", 1, [1])],
                              [oh.make_tensor("unused", 1, [1], [1.0])])
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    """)

    def stderr(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True).stderr

    # the precondition: without the CLI this ONNX Runtime warns (if a version stops warning, pick another warning)
    assert "Removing initializer" in stderr("alone")
    assert "Removing initializer" not in stderr("cli")


def test_the_command_exits_with_mains_code_once_the_exit_handlers_ran(tmp_path: Path) -> None:
    """``onnxfi`` (:func:`onnxfi.cli.console_main`) skips the interpreter's teardown, not what its exit is
    seen to do: the output flushed, the atexit handlers and finalizers run (a temporary folder removed), the
    exit code :func:`onnxfi.cli.main`'s."""
    script = textwrap.dedent("""
        import atexit, sys, tempfile
        from onnxfi.cli import console_main
        held = tempfile.TemporaryDirectory()  # removed by its finalizer at exit
        print(held.name, file=sys.stderr)
        atexit.register(lambda: print("atexit ran"))
        sys.argv = ["onnxfi", *sys.argv[1:]]
        sys.exit(console_main())
    """)

    def command(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)

    ok = command("zoo", "list")
    assert ok.returncode == 0, ok.stderr
    assert "digits_cnn" in ok.stdout and ok.stdout.endswith("atexit ran\n")
    assert not Path(ok.stderr.splitlines()[0]).exists()
    bad = command("inspect", str(tmp_path / "missing.onnx"))
    assert bad.returncode == 2 and "onnxfi: error" in bad.stderr and bad.stdout == "atexit ran\n"
    assert not Path(bad.stderr.splitlines()[0]).exists()


LOADER = '''
import os
import time
from pathlib import Path

import numpy as np


def feeds():
    """Mark that this worker loads its data, then wait (at most 60 s) until two workers have; say how many did."""
    folder = Path(os.environ["ONNXFI_TEST_STARTUP"])
    mine = folder / str(os.getpid())
    mine.write_text("")
    deadline = time.monotonic() + 60
    while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    mine.write_text(str(len(list(folder.iterdir()))))
    with np.load(os.environ["ONNXFI_TEST_DATA"]) as d:
        return [{"x": d["x"], "labels": d["labels"]}]
'''


def test_workers_load_their_engines_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local executor launches every worker before it waits for the first: each loads its model and
    data while the others do (each worker here waits to see the other load)."""
    from onnxfi.engine import EngineConfig
    from onnxfi.executors import make_executor

    model, data = save_kat(tmp_path)
    loader = tmp_path / "loader.py"
    loader.write_text(LOADER)
    seen = tmp_path / "seen"
    seen.mkdir()
    monkeypatch.setenv("ONNXFI_TEST_STARTUP", str(seen))
    monkeypatch.setenv("ONNXFI_TEST_DATA", str(data))
    ex = make_executor("local", EngineConfig(str(model), data_loader=f"{loader}:feeds"), workers=2)
    try:
        clean = ex.start()
    finally:
        ex.close()
    assert clean["samples"] == 2
    assert sorted(p.read_text() for p in seen.iterdir()) == ["2", "2"]


def test_workers_import_this_onnxfi_even_from_inside_another_checkout(tmp_path: Path) -> None:
    """The worker server starts with ``python -c``, whose import path begins with its working folder (Python
    3.11 ignores the path multiprocessing hands it): run from a folder holding another ``onnxfi``, the
    workers would import that one. They import the command's own."""
    import shutil

    model, data = save_kat(tmp_path)
    other = tmp_path / "checkout"
    (other / "onnxfi").mkdir(parents=True)
    (other / "onnxfi" / "__init__.py").write_text("raise RuntimeError('the wrong onnxfi was imported')\n")
    exe = shutil.which("onnxfi", path=str(Path(sys.executable).parent))
    assert exe is not None  # the console script the package installs
    p = subprocess.run([exe, "analyze", str(model), "--data", str(data), "--faults", "8", "--workers", "2",
                        "--db", str(tmp_path / "a.db")], cwd=other, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[-800:] + p.stderr[-800:]
    assert "wrong onnxfi" not in p.stderr
