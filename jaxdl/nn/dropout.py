"""Dropout whose rate may be a traced scalar, so that a sweep can `jax.vmap` over dropout rates.

A sweep trains several members in one program, each member's hyperparameters arriving as traced
scalars, and builds each model inside the traced function (`GPT(..., dropout_rate=<tracer>)`).
Flax's `nn.Dropout` cannot take such a rate: it branches in Python on `rate == 0.0`. This file's
`Dropout` is a drop-in subclass:

  * a Python-number rate takes exactly Flax's path (the same rng draws, masks and arithmetic; a
    rate of 0 is the identity and consumes no rng), so existing runs stay bit-identical;
  * a traced rate (a `jax.core.Tracer` or any jax array) always draws the mask
    `bernoulli(rng, 1 - rate)` and returns `select(mask, x / (1 - rate), 0)`. A traced rate of 0
    thus returns exactly x (bernoulli with p = 1 keeps everything), at the cost of one rng draw.

The class keeps the name `Dropout`, so Flax's automatic module names (`Dropout_0`, ...) and hence
the `make_rng` paths, and the masks, are those `nn.Dropout` gives.

`is_traced`, `check_rate` and `applies` are the helpers model code uses for its own Python-side
validation and "skip dropout when the rate is 0" branches.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def is_traced(rate: Any) -> bool:
  """True for a rate only known at run time (a tracer or jax array); False for a Python number."""
  return isinstance(rate, (jax.core.Tracer, jax.Array))


def check_rate(rate: Any, owner: str, name: str = "dropout_rate") -> None:
  """Raises ValueError unless a Python-number `rate` is in [0, 1); traced rates are not checked.

  Args:
    rate: the dropout rate (a Python number, or a traced scalar that cannot be inspected).
    owner: the module or function named in the error, e.g. "StackedRNN".
    name: the argument named in the error.
  """
  if not is_traced(rate) and not 0.0 <= rate < 1.0:
    raise ValueError(f"{owner}: {name} must be in [0, 1), got {rate}.")


def applies(rate: Any, deterministic: bool) -> bool:
  """Whether dropout at `rate` does anything: not deterministic and the rate is traced or > 0."""
  return not deterministic and (is_traced(rate) or rate > 0.0)


class Dropout(nn.Dropout):
  """`flax.linen.Dropout` that also accepts a traced rate (see the module docstring).

  Attributes (as Flax's):
    rate: the dropout probability (not the keep rate); a Python number or a traced scalar.
    broadcast_dims: dimensions that share the same dropout mask.
    deterministic: if True, the inputs are returned as they are.
    rng_collection: the rng stream the mask is drawn from ("dropout").
  """

  @nn.compact
  def __call__(
    self, inputs: Array, deterministic: bool | None = None, rng: Array | None = None
  ) -> Array:
    """Applies a random dropout mask to `inputs` and rescales the kept entries by 1 / (1 - rate).

    Args:
      inputs: the array to mask, any shape.
      deterministic: if True, return `inputs` unchanged (merged with the attribute, as in Flax).
      rng: the key for the mask; default: `make_rng(rng_collection)`.
    """
    if not is_traced(self.rate):
      return super().__call__(inputs, deterministic=deterministic, rng=rng)
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if deterministic:
      return inputs
    # As Flax's masked path with the Python `rate == 0` and `rate == 1` shortcuts removed; a
    # traced rate of 1 gives zeros too (every entry dropped) but may give NaN gradients.
    keep_prob = 1.0 - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    broadcast_shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      broadcast_shape[dim] = 1
    mask = jax.random.bernoulli(rng, p=keep_prob, shape=broadcast_shape)
    mask = jnp.broadcast_to(mask, inputs.shape)
    # Divide in the inputs' dtype, as Flax does with a (weakly typed) Python rate.
    scaled = inputs / jnp.asarray(keep_prob, dtype=inputs.dtype)
    return jax.lax.select(mask, scaled, jnp.zeros_like(inputs))
