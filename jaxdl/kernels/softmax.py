"""Softmax over the last axis whose derivative sums rows with matmuls on XLA:CPU.

The values are jax.nn.softmax's; the first derivatives equal its derivatives up to float rounding.
Attention's plain path (jaxdl.nn.attention.dot_product_attention) uses it for its probabilities.
"""

import jax
import jax.numpy as jnp

Array = jax.Array


@jax.custom_jvp
def _softmax_rowsum_as_matmul(logits: Array) -> Array:
  """jax.nn.softmax over the last axis, whose derivative sums rows with matmuls (XLA:CPU)."""
  return jax.nn.softmax(logits, axis=-1)


@_softmax_rowsum_as_matmul.defjvp
def _softmax_jvp(primals, tangents):
  # d softmax = p * t - p * rowsum(p * t), the row sum broadcast back over the row. XLA:CPU runs
  # the reverse-mode sum as a standalone reduction, many times slower than its arithmetic; as
  # matmuls against ones vectors, (w @ 1_S1) @ 1_1S, the forward and the transposed (reverse-mode)
  # rules have no reduction at all. Timings: benchmarks/README.md ("The attention softmax's
  # derivative"). Equal to jax.nn.softmax's derivative up to rounding.
  (logits,), (t,) = primals, tangents
  probs = jax.nn.softmax(logits, axis=-1)
  weighted = probs * t
  s = logits.shape[-1]
  ones_S1, ones_1S = jnp.ones((s, 1), weighted.dtype), jnp.ones((1, s), weighted.dtype)
  return probs, weighted - probs * ((weighted @ ones_S1) @ ones_1S)


def softmax(logits: Array) -> Array:
  """Softmax over the last axis: jax.nn.softmax, with a derivative that is faster on XLA:CPU.

  Other backends run jax.nn.softmax itself.
  """
  if jax.default_backend() == "cpu":
    return _softmax_rowsum_as_matmul(logits)
  return jax.nn.softmax(logits, axis=-1)
