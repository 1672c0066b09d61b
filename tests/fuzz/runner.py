"""Runs fuzz cases: each case in a forked child that calls ``onnxfi.cli.main(argv)`` in-process with its
stdout/stderr redirected at the fd level, under an address-space limit, killed (with its process group) past
a wall-clock limit; then classifies the outcome.

The parent imports onnxfi once (so a fork costs milliseconds) and never creates an ONNX Runtime session
itself: a child builds its own mutant, so a bug in a mutator is reported as a harness error, not hidden.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shlex
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Case", "Result", "classify", "run_cases", "signature", "UNPICKLED_MARKER", "preload_onnxfi"]

# A mutated object array unpickles into a call that creates this file in the case folder: if it exists
# after the case, onnxfi unpickled data it was given.
UNPICKLED_MARKER = "UNPICKLED"

_MS_RE = re.compile(r"0x[0-9a-f]+|\d+(\.\d+)?")


@dataclass
class Case:
    """One fuzz case: the command line, the surface and mutation that made its input files."""

    seed: int
    index: int
    surface: str
    command: str
    mutation: str
    argv: list[str]
    folder: Path
    timeout_s: float = 30.0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"s{self.seed}-c{self.index}"


@dataclass
class Result:
    case: Case
    verdict: str  # "ok" or the kind of misbehaviour
    rc: int | None
    seconds: float
    stderr: str = ""
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def reproducer(self, script: str = "scripts/fuzz.py") -> str:
        c = self.case
        cmd = " ".join(shlex.quote(a) for a in ["onnxfi", *c.argv])
        return (f"cd {shlex.quote(str(c.folder))} && {cmd}\n"
                f"    (regenerate: python {script} --seed {c.seed} --case {c.index})")


def preload_onnxfi() -> None:
    """Import onnxfi and everything its commands import, once, before forking."""
    import onnxfi.cli as cli

    cli.build_parser()
    for mod in ("onnxruntime", "onnx.reference", "matplotlib", "onnxfi.report", "onnxfi.api"):
        try:
            __import__(mod)
        except ImportError:
            pass


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.lstrip().lower().startswith("warning")]


def classify(command: str, rc: int | None, stderr: str, timed_out: bool, sig: int | None,
             unpickled: bool = False) -> tuple[str, str]:
    """(verdict, detail): ``ok``, or the kind of misbehaviour with a one-line detail."""
    if unpickled:
        return "unpickled", "an object array in the data was unpickled"
    if timed_out:
        return "hang", "killed past the time limit"
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        return "signal", f"killed by signal {sig} ({name})"
    if "Traceback (most recent call last)" in stderr:
        return "traceback", _last_exception(stderr)
    if rc == 0:
        return "ok", ""
    if rc == 1 and command in ("gate", "compare"):  # documented verdicts: a check failed / outputs mismatch
        return "ok", ""
    if rc == 2:
        lines = _error_lines(stderr)
        if len(lines) == 1 and re.match(r"^onnxfi( \w+)?: error: \S", lines[0]):
            return "ok", ""
        if not lines:
            return "silent-error", "exit 2 with nothing on stderr"
        if any(ln.startswith("usage:") for ln in lines):
            return "usage-error", lines[-1][:300]
        return "error-lines", f"exit 2 with {len(lines)} stderr lines: " + " | ".join(x[:120] for x in lines[:4])
    return "exit-code", f"exit {rc}: " + " | ".join(x[:120] for x in _error_lines(stderr)[-3:])


def _last_exception(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    exc = ""
    for ln in lines:
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b", ln):
            exc = ln
    return exc[:300] or (lines[-1][:300] if lines else "")


def signature(res: Result) -> str:
    """A root-cause key: the verdict, the exception type and the innermost onnxfi frame of the traceback."""
    if res.verdict != "traceback":
        det = _MS_RE.sub("N", res.detail)[:140] if res.verdict in ("error-lines", "exit-code", "usage-error") else ""
        return f"{res.verdict} | {res.case.command} | {det}".rstrip(" |")
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', res.stderr)
    inner = ""
    for path, _line, func in frames:
        if "/onnxfi/" in path and "/site-packages/" not in path or path.endswith("onnxfi/cli.py"):
            inner = f"{path.split('/onnxfi/', 1)[-1]}:{func}"
    last = frames[-1] if frames else ("?", "?", "?")
    exc_type = res.detail.split(":", 1)[0]
    return f"traceback | {exc_type} | onnxfi/{inner} | raised in {Path(last[0]).name}:{last[2]}"


def _child(case: Case, build: Callable[[Case], str], rlimit_as: int | None) -> None:
    """The forked child: build the mutant, run the command, write the result, ``os._exit``."""
    os.setsid()  # its own process group: a timeout kills the spawned campaign workers too
    os.chdir(case.folder)
    out = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    # the Python-level streams too: under pytest sys.stdout/sys.stderr are capture objects, not fds 1 and 2
    sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
    status: dict[str, object] = {}
    try:
        if rlimit_as:
            resource.setrlimit(resource.RLIMIT_AS, (rlimit_as, rlimit_as))
        try:
            status["desc"] = build(case)
        except Exception:
            status["harness"] = traceback.format_exc()
            raise SystemExit(0) from None
        import onnxfi.cli as cli

        try:
            rc = cli.main(case.argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            rc = 99
        status["rc"] = rc
    except BaseException:
        status.setdefault("harness", traceback.format_exc())
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        try:
            Path(case.folder, "status.json").write_text(json.dumps(status))
        finally:
            os._exit(0)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _finish(case: Case, t0: float, wait_status: int | None, timed_out: bool) -> Result:
    secs = time.monotonic() - t0
    folder = case.folder
    stderr = _read(folder / "stderr.txt")
    status: dict[str, object] = {}
    try:
        status = json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        pass
    desc = str(status.get("desc", ""))
    if "harness" in status:
        return Result(case, "harness-error", None, secs, stderr, str(status["harness"]).strip().splitlines()[-1],
                      {"harness": str(status["harness"]), "desc": desc})
    sig = None
    if wait_status is not None and os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
    rc = status.get("rc")
    rc_i = rc if isinstance(rc, int) else None
    if not timed_out and sig is None and rc_i is None:
        sig = signal.SIGKILL  # died without writing its status (the OOM killer, an abort in native code)
    unpickled = (folder / UNPICKLED_MARKER).exists()
    verdict, detail = classify(case.command, rc_i, stderr, timed_out, sig, unpickled)
    return Result(case, verdict, rc_i, secs, stderr, detail, {"desc": desc})


def _read(p: Path, limit: int = 200_000) -> str:
    try:
        with open(p, "rb") as f:
            data = f.read(limit)
        return data.decode("utf-8", "replace")
    except OSError:
        return ""


def run_cases(cases: Iterable[Case], build: Callable[[Case], str], jobs: int = 2,
              rlimit_as: int | None = 4 << 30, keep_ok: bool = False) -> Iterator[Result]:
    """Run cases ``jobs`` at a time, each in a fresh forked child; yields results as they finish.

    A passing case's folder is removed unless ``keep_ok``; a misbehaving one keeps its mutant and output.
    """
    pending = iter(cases)
    running: dict[int, tuple[Case, float]] = {}
    exhausted = False
    try:
        while True:
            while not exhausted and len(running) < jobs:
                case = next(pending, None)
                if case is None:
                    exhausted = True
                    break
                if case.folder.exists():
                    shutil.rmtree(case.folder)
                case.folder.mkdir(parents=True)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(case, build, rlimit_as)
                running[pid] = (case, time.monotonic())
            if not running:
                return
            pid, st = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                now = time.monotonic()
                for p, (case, t0) in list(running.items()):
                    if now - t0 > case.timeout_s:
                        _kill_group(p)
                        os.waitpid(p, 0)
                        del running[p]
                        res = _finish(case, t0, None, True)
                        _cleanup(res, keep_ok)
                        yield res
                time.sleep(0.01)
                continue
            if pid not in running:
                continue
            case, t0 = running.pop(pid)
            _kill_group(pid)  # leftover campaign workers of a finished case
            res = _finish(case, t0, st, False)
            _cleanup(res, keep_ok)
            yield res
    finally:
        for p in running:
            _kill_group(p)
            try:
                os.waitpid(p, 0)
            except ChildProcessError:
                pass


def _cleanup(res: Result, keep_ok: bool) -> None:
    if res.ok and not keep_ok:
        shutil.rmtree(res.case.folder, ignore_errors=True)
