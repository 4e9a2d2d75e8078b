"""JAX's persistent compilation cache for training runs (`runtime.compilation_cache`).

A run compiles its train and eval steps before the first step; with the cache on, a later run of
the same program (a resumed run, a re-run with another seed or more steps) loads the compiled
executables instead: the seed CNN's first step took 2.6 s to compile on a 2-core CPU and 0.35 s
to load. Only programs that took at least a second to compile are kept (JAX's default), so the
cache holds the steps, not every small helper.

- "auto" (default): the jaxdl cache folder's "xla" subfolder ($JAXDL_DATA_DIR, else
  $XDG_CACHE_HOME/jaxdl, else ~/.cache/jaxdl), unless JAX already has a cache folder
  (JAX_COMPILATION_CACHE_DIR or `jax.config.update("jax_compilation_cache_dir", ...)`), which
  is then kept;
- "" (or "off"): no persistent cache;
- any other string: that folder.
The cache never changes results: an executable is looked up by a hash of the program, the
compiler options and the jax/jaxlib versions. JAX settles whether the cache is used at the first
compilation of a process, so the setting applies to a run that starts the process's JAX work.
"""

import logging
from pathlib import Path

import jax

from jaxdl import perf

logger = logging.getLogger("jaxdl")

OFF = ("", "off", "none")


def configure(setting: str | None) -> Path | None:
  """Points JAX's persistent cache at the folder `setting` names; returns it (None: left off or
  left as JAX had it)."""
  if setting is None or str(setting).strip().lower() in OFF:
    return None
  if jax.config.jax_compilation_cache_dir:
    return None
  path = perf.cache_dir().parent / "xla" if setting == "auto" else Path(str(setting)).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:  # A read-only home must not stop a run; it only compiles every time.
    logger.warning(
      "Compilation cache off: cannot create %s (%s). Set runtime.compilation_cache to "
      "a writable folder, or '' to silence this.",
      path,
      e,
    )
    return None
  jax.config.update("jax_compilation_cache_dir", str(path))
  return path
