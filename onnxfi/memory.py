"""Memory budget for allocations sized by untrusted input (a model's fixed dims, ``--input-shape``,
``--samples``, the headers of an ``.npz``): the bytes an allocation would take -> go on, or a one-line
:class:`MemoryBudgetError` before anything is allocated.

Without a check, a dim of 10^8 makes numpy ask for hundreds of GiB and die with a ``MemoryError``
traceback (or the kernel's OOM killer ends the process without a word).

The budget (:func:`budget_bytes`):

- the environment variable ``ONNXFI_MEMORY_MB`` when set: a positive number of MiB (2**20 bytes, as
  ``--cache-mb`` counts), e.g. ``ONNXFI_MEMORY_MB=65536`` for 64 GiB; it may exceed the physical memory
  (the user's call); anything else is a one-line :class:`~onnxfi.errors.OnnxfiError`;
- else half of the memory this process can have: the physical memory (``os.sysconf``), or a cgroup's
  memory limit (a container) when that is lower; at least :data:`FLOOR_BYTES` (1 GiB), so a small machine
  still runs small models; :data:`UNKNOWN_BYTES` (8 GiB) where the memory cannot be read.

Half, because a checked allocation is rarely the only one: ONNX Runtime's buffers and the model's outputs
come on top of the inputs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from onnxfi.errors import OnnxfiError

__all__ = [
    "ENV_VAR",
    "FLOOR_BYTES",
    "UNKNOWN_BYTES",
    "MemoryBudgetError",
    "budget_bytes",
    "check_bytes",
    "format_bytes",
    "physical_memory",
]

ENV_VAR = "ONNXFI_MEMORY_MB"
FLOOR_BYTES = 2**30  # the default budget is never below 1 GiB
UNKNOWN_BYTES = 8 * 2**30  # the default budget where the memory cannot be read
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


class MemoryBudgetError(OnnxfiError):
    """An allocation sized by the user's input (a dim, a sample count, an ``.npz`` header) over the memory
    budget. A user error (one line, exit 2), deliberately not a :class:`MemoryError`: a campaign counts
    those as the faulty model's crashes."""


def _cgroup_limit() -> int | None:
    for name in _CGROUP_LIMITS:
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max" or a huge number: no limit
            return int(text)
    return None


def physical_memory() -> int | None:
    """The bytes of memory this process can have: the physical memory, or a lower cgroup limit or
    address-space limit (``ulimit -v``); None where none can be read (``os.sysconf`` lacks the names on
    Windows)."""
    try:
        phys: int | None = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        phys = None
    if phys is not None and phys <= 0:
        phys = None
    for limit in (_cgroup_limit(), _address_space_limit()):
        if limit is not None and (phys is None or limit < phys):
            phys = limit
    return phys


def _address_space_limit() -> int | None:
    """The process's address-space limit (``ulimit -v``, ``RLIMIT_AS``) where one is set, else None."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def budget_bytes() -> int:
    """The memory budget in bytes: ``ONNXFI_MEMORY_MB`` MiB when set, else half of :func:`physical_memory`
    (at least :data:`FLOOR_BYTES`; :data:`UNKNOWN_BYTES` when unknown)."""
    text = os.environ.get(ENV_VAR)
    if text is not None and text.strip():
        try:
            mb = float(text)
        except ValueError:
            mb = math.nan
        if not math.isfinite(mb) or mb <= 0:
            raise OnnxfiError(f"{ENV_VAR}={text!r} is not a positive number of MiB (e.g. {ENV_VAR}=16384 for 16 GiB)")
        return max(1, int(mb * 2**20))
    phys = physical_memory()
    if phys is None:
        return UNKNOWN_BYTES
    return max(FLOOR_BYTES, phys // 2)


def format_bytes(n: int) -> str:
    """``n`` bytes for a message: ``26.8 GiB``, ``512.0 MiB``, ``4,096 bytes``."""
    if n >= 2**30:
        return f"{n / 2**30:,.1f} GiB"
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _budget_origin() -> str:
    if os.environ.get(ENV_VAR, "").strip():
        return f"{ENV_VAR}={os.environ[ENV_VAR].strip()}"
    phys = physical_memory()
    return "the default: memory unknown" if phys is None else f"half of {format_bytes(phys)} of memory"


def check_bytes(what: str, nbytes: int) -> None:
    """Raise :class:`MemoryBudgetError` (one line: ``what``, the bytes it needs, the budget, how to
    raise it) when ``nbytes`` exceeds :func:`budget_bytes`; ``what`` names the allocation (an input, its
    shape and dtype)."""
    budget = budget_bytes()
    if nbytes > budget:
        raise MemoryBudgetError(
            f"{what} needs {format_bytes(nbytes)}, over the memory budget of {format_bytes(budget)} "
            f"({_budget_origin()}); set {ENV_VAR} to raise it"
        )
