"""jaxdl: a JAX research framework for deep learning.

Layers: `jaxdl.nn` (pure Flax models), `jaxdl.data` (Grain input), `jaxdl.train` (Optax steps,
device mesh), `jaxdl.checkpoint` (Orbax), `jaxdl.trainer` (the loop that joins them), `jaxdl.cli`.
"""

__version__ = "0.1.0"
