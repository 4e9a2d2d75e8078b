"""Deterministic GPU runs (`train.deterministic`): XLA's deterministic kernels, chosen before JAX
starts.

XLA:CPU runs a given program the same way every time, so a CPU run is already reproducible to the
bit on the same CPU model and core count, and the setting changes nothing there (metadata.json
still records it). On a GPU it is not: scatter-adds and some reductions add with atomics in
whatever order the threads finish, and the autotuner may pick another kernel (each adding in its
own order) in another compilation.
`train.deterministic=true` adds to XLA_FLAGS, when JAX targets an accelerator:
  --xla_gpu_deterministic_ops=true              run-to-run determinism; no GEMM autotuning
  --xla_gpu_exclude_nondeterministic_ops=true   deterministic lowerings of scatter, GEMMs and
                                                convolutions; an op with none fails to compile
The first implies the second in today's XLA; both are named so that neither reading can drop it.
The cost: slower kernels for scatter-adds and some reductions, and no autotuned pick among
convolution and matmul kernels. The promise: the same program on the same GPU model with the same
software versions gives the same bits; not across GPU models or XLA versions.

XLA reads XLA_FLAGS once, when JAX starts its backend: `jaxdl train` applies this first thing. A
process whose GPU backend already started without the flags gets a ConfigError (the run could not
keep the promise); one on the CPU carries on. A flag the environment already sets is kept, not
repeated; one that contradicts the setting is a ConfigError.
"""

import logging
import os
from typing import Any

import jax

from jaxdl.errors import ConfigError
from jaxdl.train import cpu_devices

logger = logging.getLogger("jaxdl")

FLAGS = ("--xla_gpu_deterministic_ops=true", "--xla_gpu_exclude_nondeterministic_ops=true")


def _name(flag: str) -> str:
  return flag.partition("=")[0]


def _missing(existing: str) -> list[str]:
  """The deterministic flags XLA_FLAGS `existing` lacks; ConfigError if it turns one off."""
  present = {_name(f): f.partition("=")[2] for f in existing.split()}
  for flag in FLAGS:
    value = present.get(_name(flag))
    if value is not None and value.lower() not in ("true", "1", ""):  # "": a bare flag is on.
      raise ConfigError(
        f"train.deterministic=true, but XLA_FLAGS sets {_name(flag)}={value}. Drop it from "
        "XLA_FLAGS, or set train.deterministic=false."
      )
  return [f for f in FLAGS if _name(f) not in present]


def xla_flags(existing: str, deterministic: bool, backend: str) -> str:
  """XLA_FLAGS `existing` with the deterministic flags `backend` ("cpu", "gpu") needs added:
  none for the CPU or when off, and none already there."""
  if not deterministic or backend == "cpu":
    return existing
  return " ".join([existing.strip(), *_missing(existing)]).strip()


def in_effect() -> list[str]:
  """The deterministic flags in this process's XLA_FLAGS, as written there."""
  names = {_name(f) for f in FLAGS}
  return [f for f in os.environ.get("XLA_FLAGS", "").split() if _name(f) in names]


def _backend_started() -> bool:
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel

  return xla_bridge.backends_are_initialized()


def configure(deterministic: Any) -> None:
  """Applies `train.deterministic` to XLA_FLAGS before JAX starts its backend (module docstring)."""
  if not isinstance(deterministic, bool):
    raise ConfigError(f"train.deterministic={deterministic!r} must be true or false.")
  if not deterministic:
    return
  if _backend_started():
    backend = jax.default_backend()
    if backend != "cpu" and _missing(os.environ.get("XLA_FLAGS", "")):
      raise ConfigError(
        f"train.deterministic=true: JAX already started its {backend} backend in this process, "
        "and XLA reads its flags only then. Start the run in a fresh process (`jaxdl train`), or "
        f"set XLA_FLAGS='{' '.join(FLAGS)}' before Python starts."
      )
    return
  backend = "cpu" if cpu_devices.targets_cpu() else "gpu"
  os.environ["XLA_FLAGS"] = xla_flags(os.environ.get("XLA_FLAGS", ""), True, backend)
  if backend != "cpu":
    logger.info("train.deterministic: XLA_FLAGS=%s.", os.environ["XLA_FLAGS"])


def record(deterministic: bool) -> dict[str, Any]:
  """What metadata.json keeps: the setting, the backend and the deterministic flags in effect."""
  return {"requested": deterministic, "backend": jax.default_backend(), "xla_flags": in_effect()}
