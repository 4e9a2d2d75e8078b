"""Keeping freed host memory for reuse (`runtime.reuse_host_memory`), for speed on CPU.

XLA:CPU allocates a compiled step's scratch memory (tens of MB) with malloc on every call and
frees it at the end. glibc serves blocks that large with a fresh mmap and returns them to the
kernel with munmap, so every step page-faults its whole working set in again (benchmarks/README.md
counts the faults against PyTorch's and measures the gain). Telling glibc to serve them from the
heap and not to give freed memory back (mallopt M_MMAP_MAX=0, a high M_TRIM_THRESHOLD) reuses the
same pages step after step.

The cost: the process keeps its peak memory until it exits (as PyTorch's caching allocators do).
Numbers are unaffected. "auto" (default) applies it when JAX computes on the CPU of a Linux
machine with glibc; "off" leaves malloc alone. It applies to the whole process, and stays after
the run.
"""

import ctypes
import ctypes.util
import logging
import platform

from jaxdl.errors import ConfigError
from jaxdl.train import cpu_devices

logger = logging.getLogger("jaxdl")

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD_BYTES = 2**31 - 1  # The largest int: freed memory is never trimmed.

_applied = False


def _glibc():
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return None
  try:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  except OSError:
    return None


def configure(setting: str) -> bool:
  """Applies `runtime.reuse_host_memory`; returns whether malloc is (now) set up for reuse."""
  global _applied
  if setting not in ("auto", "on", "off"):
    raise ConfigError(f"runtime.reuse_host_memory={setting!r} must be auto, on or off.")
  if setting == "off":
    return _applied
  if _applied:
    return True
  if setting == "auto" and not cpu_devices.targets_cpu():
    return False
  libc = _glibc()
  if libc is None:
    if setting == "on":
      logger.warning("runtime.reuse_host_memory=on needs glibc (Linux); left malloc as it is.")
    return False
  # One arena: XLA's worker threads would otherwise each get an arena of their own, which glibc
  # trims (unmaps) whatever the threshold. Set before JAX starts its threads, where possible.
  _applied = all(
    libc.mallopt(param, value) == 1
    for param, value in [
      (M_ARENA_MAX, 1),
      (M_MMAP_MAX, 0),
      (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
    ]
  )
  return _applied
