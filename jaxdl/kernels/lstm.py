"""An LSTM over a whole sequence with a hand-written backward pass: the loop `LSTMCell.recurrence`
runs, equal to a `lax.scan` of `LSTMCell.step` (and JAX's derivative of it) to float32 rounding.

Gate layout as in jaxdl.nn.cells.LSTMCell: the fused gates [i, f, g, o] (PyTorch's order), each H
wide, so G = 4H; the carry is (c, h), each float32 [B, H].

XLA:CPU pays a fixed cost per operation of a loop body, which at an LSTM's sizes (a [B, H] x
[H, 4H] matmul a step) outweighs the arithmetic of the gates. JAX's own derivative of the scanned
step stores many intermediates a step for the backward pass and adds each step's h^T dgates into
the recurrent kernel's gradient inside the loop. The hand-written VJP below stores 3 arrays a step
(h, c and the four gate activations), runs one matmul and a few fused elementwise operations a
step backward, and forms the kernel's gradient after the loop as one [H, T*B] x [T*B, 4H] matmul,
as cuDNN and oneDNN do. Operation counts and timings: benchmarks/README.md.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Carry = tuple[Array, Array]  # (c, h).

CARRY_DTYPE = jnp.float32  # Gates and carries, whatever the matmuls' dtype (jaxdl.nn.cells').


def _gate_scale(h: int) -> Array:
  """[1/2]*2H for i and f, [1]*H for g, [1/2]*H for o: sigmoid(x) = tanh(x / 2) / 2 + 1/2, so with
  s this scale every gate's activation is tanh(s x) s + (1 - s), one tanh over all four."""
  return jnp.concatenate(
    [
      jnp.full((2 * h,), 0.5, CARRY_DTYPE),
      jnp.ones((h,), CARRY_DTYPE),
      jnp.full((h,), 0.5, CARRY_DTYPE),
    ]
  )


def lstm_update(c_BH: Array, gates_BG: Array) -> tuple[Array, Array, Array]:
  """(c_t, h_t, [sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)]) from c_{t-1} and the gates, f32.

  One fused operation for the four activations; equal to the textbook formula up to float32
  rounding. LSTMCell.step uses it too, so a step does the arithmetic of this file's loop.
  """
  scale_G = _gate_scale(gates_BG.shape[-1] // 4)
  acts_BG = jnp.tanh(gates_BG * scale_G) * scale_G + (1.0 - scale_G)
  i, f, g, o = jnp.split(acts_BG, 4, axis=-1)
  c_BH = f * c_BH + i * g
  return c_BH, o * jnp.tanh(c_BH), acts_BG


def _lstm_matmul(a: Array, b: Array, dtype: Any) -> Array:
  """a @ b in `dtype` (as LSTMCell._recurrent), returned in float32."""
  return jnp.dot(a.astype(dtype), b.astype(dtype)).astype(CARRY_DTYPE)


def _lstm_scan(xg_TBG, kernel_HG, carry, valid_TB, reverse, unroll, dtype, keep):
  """The forward loop: (final carry, h_TBH) and, with `keep`, the c_TBH and activations too.

  h_TBH and c_TBH are the carries after each step (frozen at masked steps, not zeroed).
  """

  def body(carry, xs):
    c_BH, h_BH = carry
    xg_BG, valid_B = xs
    gates_BG = xg_BG.astype(CARRY_DTYPE) + _lstm_matmul(h_BH, kernel_HG, dtype)
    c_new, h_new, acts_BG = lstm_update(c_BH, gates_BG)
    if valid_B is not None:
      c_new = jnp.where(valid_B[:, None], c_new, c_BH)
      h_new = jnp.where(valid_B[:, None], h_new, h_BH)
    return (c_new, h_new), ((h_new, c_new, acts_BG) if keep else h_new)

  return jax.lax.scan(body, carry, (xg_TBG, valid_TB), reverse=reverse, unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _lstm(xg_TBG, kernel_HG, carry, valid_TB, reverse, unroll, dtype):
  return _lstm_scan(xg_TBG, kernel_HG, carry, valid_TB, reverse, unroll, dtype, keep=False)


def _lstm_fwd(xg_TBG, kernel_HG, carry, valid_TB, reverse, unroll, dtype):
  final, (h_TBH, c_TBH, acts_TBG) = _lstm_scan(
    xg_TBG, kernel_HG, carry, valid_TB, reverse, unroll, dtype, keep=True
  )
  # xg_TBG itself is not needed, only its dtype (the cotangent's): an empty array carries it.
  xg_dtype = jnp.zeros((0,), xg_TBG.dtype)
  return (final, h_TBH), (xg_dtype, kernel_HG, carry, valid_TB, h_TBH, c_TBH, acts_TBG)


def _previous(seq_TBH: Array, initial_BH: Array, reverse: bool) -> Array:
  """The carry entering each step: the initial one, then the one after the step before."""
  if reverse:  # Step t follows step t + 1.
    return jnp.concatenate([seq_TBH[1:], initial_BH[None]], axis=0)
  return jnp.concatenate([initial_BH[None], seq_TBH[:-1]], axis=0)


def _lstm_bwd(reverse, unroll, dtype, residuals, cotangents):
  xg_dtype, kernel_HG, (c0_BH, h0_BH), valid_TB, h_TBH, c_TBH, acts_TBG = residuals
  (dc_BH, dh_BH), dh_seq_TBH = cotangents
  c_prev_TBH = _previous(c_TBH, c0_BH, reverse)
  kernel_T_GH = kernel_HG.T
  scale_G = _gate_scale(kernel_HG.shape[0])

  def body(carry, xs):
    dc_BH, dh_BH = carry  # Cotangents of the carry after this step.
    dh_seq_BH, c_BH, c_prev_BH, acts_BG, valid_B = xs
    dh_BH = dh_BH + dh_seq_BH.astype(CARRY_DTYPE)
    dh_new, dc_new = dh_BH, dc_BH
    if valid_B is not None:  # A masked step passed the carry through: so do its cotangents.
      dh_new = jnp.where(valid_B[:, None], dh_BH, 0.0)
      dc_new = jnp.where(valid_B[:, None], dc_BH, 0.0)
    i, f, g, o = jnp.split(acts_BG, 4, axis=-1)
    tanh_c = jnp.tanh(c_BH)
    dc_new = dc_new + dh_new * o * (1.0 - tanh_c * tanh_c)
    # d loss / d [i, f, g, o] = [dc g, dc c_{t-1}, dc i, dh tanh(c)], times d act / d gate =
    # s^2 (1 - tanh(s x)^2) = s^2 - (act - (1 - s))^2, which is i (1 - i) for a sigmoid gate and
    # 1 - g^2 for g: few operations over [B, 4H] rather than four over [B, H] joined after.
    dacts_BG = jnp.concatenate([dc_new, dc_new, dc_new, dh_new], -1) * jnp.concatenate(
      [g, c_prev_BH, i, tanh_c], -1
    )
    dgates_BG = dacts_BG * (scale_G * scale_G - jnp.square(acts_BG - (1.0 - scale_G)))
    dc_prev = dc_new * f
    dh_prev = _lstm_matmul(dgates_BG, kernel_T_GH, dtype)
    if valid_B is not None:
      dc_prev = dc_prev + jnp.where(valid_B[:, None], 0.0, dc_BH)
      dh_prev = dh_prev + jnp.where(valid_B[:, None], 0.0, dh_BH)
    return (dc_prev, dh_prev), dgates_BG

  (dc0_BH, dh0_BH), dgates_TBG = jax.lax.scan(
    body,
    (dc_BH, dh_BH),
    (dh_seq_TBH, c_TBH, c_prev_TBH, acts_TBG, valid_TB),
    reverse=not reverse,
    unroll=unroll,
  )
  # Every step's h_{t-1}^T dgates_t at once. Masked steps have dgates = 0, so they add nothing.
  h_prev_TBH = _previous(h_TBH, h0_BH, reverse)
  t, b, g = dgates_TBG.shape
  dkernel_HG = jnp.dot(
    h_prev_TBH.reshape(t * b, -1).astype(dtype).T,
    dgates_TBG.reshape(t * b, g).astype(dtype),
    preferred_element_type=CARRY_DTYPE,
  )
  return (
    dgates_TBG.astype(xg_dtype.dtype),
    dkernel_HG.astype(kernel_HG.dtype),
    (dc0_BH.astype(c0_BH.dtype), dh0_BH.astype(h0_BH.dtype)),
    None,
  )  # None: valid_TB is bool.


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_recurrence(
  xg_TBG: Array,
  kernel_HG: Array,
  carry: Carry,
  valid_TB: Array | None = None,
  *,
  reverse: bool = False,
  unroll: int = 1,
  dtype: Any = jnp.float32,
) -> tuple[Carry, Array]:
  """Runs an LSTM over projected, time-major inputs: what a `lax.scan` of `LSTMCell.step` gives.

  Args:
    xg_TBG: x_t @ W + b for every step, [T, B, 4H] (LSTMCell.project_inputs of time-major x).
    kernel_HG: the recurrent kernel U [H, 4H].
    carry: (c, h) before the first processed step, each float32 [B, H].
    valid_TB: bool [T, B] or None; at a False step an example's carry stays as it was and its
      output is zero.
    reverse: run from step T-1 down to 0 (outputs stay in time order).
    unroll: timesteps per loop iteration (lax.scan's unroll).
    dtype: the matmuls' dtype; gates and carries are float32.

  Returns:
    ((c, h) after the last processed step, outputs y [T, B, H] in `dtype`).

  Differentiable in xg_TBG, kernel_HG and carry by a custom VJP (the forward loop stores each
  step's carry and gate activations; the backward loop runs one matmul a step and the kernel's
  gradient is one matmul after it). Forward-mode differentiation (jax.jvp) is not supported.
  """
  carry, h_TBH = _lstm(xg_TBG, kernel_HG, carry, valid_TB, reverse, unroll, dtype)
  if valid_TB is not None:
    h_TBH = jnp.where(valid_TB[..., None], h_TBH, 0.0)
  return carry, h_TBH.astype(dtype)
