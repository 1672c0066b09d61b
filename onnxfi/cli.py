"""Command-line entry point: one sub-command per module in :mod:`onnxfi.commands`."""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import pkgutil
import sys
import threading
import traceback
import types
from collections.abc import Sequence

from onnxfi import __version__
from onnxfi.errors import InternalError, OnnxfiError

__all__ = ["main", "console_main", "build_parser"]

_ORDER = ["inspect", "inject", "run", "analyze", "harden", "gate", "compare", "report", "zoo"]

_EPILOG = """examples:
  onnxfi inspect model.onnx                       sites, parameters, fault space
  onnxfi inject model.onnx --site conv1.weight --index 3,0,1,1 --bit 30 -o faulty.onnx
  onnxfi run model.onnx --data eval.npz           outputs, timing, accuracy with labels
  onnxfi zoo list                                 bundled models (a zoo name works as MODEL)
"""


def command_modules() -> list[str]:
    """The modules of :mod:`onnxfi.commands` that may define a sub-command, in help order (none imported)."""
    import onnxfi.commands as commands

    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    return names


def build_parser(only: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every sub-command, or of the modules in ``only`` (the rest are not imported: a module
    imports what its command's run needs when it runs)."""
    parser = argparse.ArgumentParser(
        prog="onnxfi",
        description="Fault injection and hardening for any ONNX model.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"onnxfi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        if only is not None and name not in only:
            continue
        module = importlib.import_module(f"onnxfi.commands.{name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def _needed(argv: Sequence[str]) -> list[str] | None:
    """The command modules that parsing ``argv`` needs: the one it names (``onnxfi analyze ...``), none for a
    bare ``--version``; None (all of them) for the full help, a bad command name or anything else.

    The top-level options take no value, so the first word not starting with ``-`` names the command;
    a module's name is its command's (``critical_bits``: ``critical-bits``)."""
    names = command_modules()
    for word in argv:
        if word in ("-h", "--help", "--"):
            return None
        if not word.startswith("-"):
            name = word.replace("-", "_")
            return [name] if name in names else None
    return [] if "--version" in argv else None


# onnxruntime is an extra (two distributions of one module that must not be installed together): say which
_NO_RUNTIME = ("ONNX Runtime is not installed: pip install 'onnxfi[cpu]' (or 'onnxfi[gpu]' for NVIDIA GPUs; "
               "one of the two, not both)")


def _quiet_libraries() -> None:
    """Only onnxfi's own lines on stderr: onnx_ir's warnings about a damaged model (onnxfi reports the
    damage itself) and ONNX Runtime's error log (its errors come back as exceptions) stay silent.

    ONNX Runtime is quieted when it loads, not loaded here: ``onnxfi analyze``'s own process never needs it
    (its workers run the sessions)."""
    logging.getLogger("onnx_ir").addHandler(logging.NullHandler())
    logging.getLogger("onnx_ir").propagate = False
    if "onnxruntime" in sys.modules:
        sys.modules["onnxruntime"].set_default_logger_severity(4)
    elif not any(isinstance(f, _QuietOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietOnImport())


class _QuietOnImport:
    """Finds ``onnxruntime`` as the import system would, with a loader that sets the package's log severity
    as soon as the package has loaded (then leaves the import path); every other module is left to the
    rest of the path."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "onnxruntime":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:  # not on sys.path: the rest of the import path decides
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_quiet(module: types.ModuleType) -> None:
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            module.set_default_logger_severity(4)

        # this spec's own loader (a new one per find): the loaded package keeps its usual loader class
        loader.exec_module = exec_and_quiet  # type: ignore[method-assign]
        return spec


def main(argv: Sequence[str] | None = None) -> int:
    if importlib.util.find_spec("onnxruntime") is None:
        print(f"onnxfi: error: {_NO_RUNTIME}", file=sys.stderr)
        return 2
    words = list(argv) if argv is not None else sys.argv[1:]
    parser = build_parser(_needed(words))
    args = parser.parse_args(words)
    func = getattr(args, "func", None)
    if func is None:  # no command: argv named none, so the parser has every command
        parser.print_help()
        return 2
    # what a command starts before it loads what it runs on (analyze: the process its workers fork from,
    # whose imports then run alongside this process's)
    start_early = getattr(args, "start_early", None)
    if start_early is not None:
        start_early(args)
    _quiet_libraries()
    try:
        return int(func(args) or 0)
    except OnnxfiError as e:  # the user's input: one line, no traceback
        print(f"onnxfi: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("onnxfi: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in onnxfi (InternalError, or any other exception): the whole traceback
        traceback.print_exc()
        print(f"onnxfi: internal error ({type(e).__name__}): this is a bug in onnxfi, not a fault outcome; "
              "please report it with the traceback above (a campaign's stored rows are kept: --resume "
              "continues it)", file=sys.stderr)
        return InternalError.exit_code


def console_main() -> int:
    """The ``onnxfi`` command and ``python -m onnxfi``: :func:`main`, then the process ends without the
    interpreter's teardown (freeing every object and module one by one: about 0.1 s after a campaign, with
    nothing to show for it). What the exit does that is seen from outside still happens first: stdout and
    stderr flushed, the atexit handlers run (multiprocessing stops its helpers, weakref.finalize removes
    temporary folders, Ray shuts down, logging flushes). Where that is not enough, the usual exit is taken:
    a flush that fails (e.g. on a closed pipe: the interpreter reports it), a thread the exit would wait
    for, a profiler or tracer that writes its results once the program returns (``python -m cProfile -m
    onnxfi``, coverage, a debugger)."""
    rc = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        return rc
    if sys.getprofile() is not None or sys.gettrace() is not None or any(
            t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return rc
    atexit._run_exitfuncs()  # each handler once: the registry is empty after
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        return rc
    os._exit(rc)
