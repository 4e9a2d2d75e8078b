"""How a run is laid out over devices (`parallel.strategy`): one interface, jaxdl.train.layout's
`Layout`, with two implementations.

- "jit" (default, jaxdl.train.mesh_layout): one program over a ("data", "fsdp", "tensor") device
  mesh; the batch split over data x fsdp, the parameters as their logical axis names and
  `parallel.rules` say (jaxdl.nn.partitioning), other arrays replicated or split by FSDP.
- "pmap" (jaxdl.train.pmap_layout): `jax.pmap` over this host's devices, the state replicated one
  copy per device, gradients, metrics and BatchNorm statistics averaged over the pmap axis.

A layout places the loop state and batches, compiles the train, eval and elementwise functions,
tells the train step what to do across devices (`Layout.collectives`) and converts to and from the
saved form. Checkpoints never depend on the layout: the saved loop state is the global arrays
(pmap's copies are saved once), and a restore lays them out for the current run. A checkpoint
written on 8 devices, with FSDP or pmap, restores on 1 device, and the reverse.
"""

from typing import Any

import jax
import numpy as np

from jaxdl.errors import ConfigError
from jaxdl.nn import partitioning
from jaxdl.train.layout import Layout
from jaxdl.train.mesh_layout import MeshLayout
from jaxdl.train.pmap_layout import PmapLayout

STRATEGIES = {"jit": MeshLayout, "pmap": PmapLayout}


def make_layout(parallel_config: Any) -> Layout:
  """The layout `parallel.*` asks for, over every device JAX sees."""
  strategy = parallel_config.get("strategy", "jit")
  if strategy not in STRATEGIES:
    raise ConfigError(f"parallel.strategy={strategy!r} is not one of {', '.join(STRATEGIES)}.")
  mesh_config = parallel_config.get("mesh", {"data": -1, "fsdp": 1, "tensor": 1})
  return STRATEGIES[strategy].from_mesh_config(
    mesh_config.get("data", -1),
    mesh_config.get("fsdp", 1),
    mesh_config.get("tensor", 1),
    parallel_config.get("rules", partitioning.RULES),
  )


def stack_steps(host_batches: list[dict[str, np.ndarray]], slots: int) -> dict[str, np.ndarray]:
  """Several steps' host batches as one [slots, ...] batch, for a call of several steps; the last
  batch fills the slots beyond them, which that call's step count leaves unread."""
  filled = list(host_batches) + list(host_batches[-1:]) * (slots - len(host_batches))
  return jax.tree.map(lambda *xs: np.stack(xs), *filled)
