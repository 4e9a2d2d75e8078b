"""Recurrent cells (simple RNN, LSTM, GRU) with fused gate weights, built for `lax.scan`.

Every cell keeps its gates in one input kernel [D, G*H], one recurrent kernel [H, G*H] and a bias
[G*H] (G = 1 for the simple RNN, 4 for the LSTM, 3 for the GRU). The step is split in two so that
a sequence layer can hoist the input half out of the time loop:

    xg = cell.project_inputs(x)      # x @ W + b for ALL timesteps at once: one big matmul
    carry, y = cell.step(carry, xg_t) # per step: h @ U and the gate nonlinearities only
    carry, y = cell(carry, x_t)       # both halves, for one step (decoding, reference loops)

Initialisation follows Keras: Glorot-uniform input kernel, orthogonal recurrent kernel, zero
biases, and an LSTM forget-gate bias of `forget_bias` (Keras' unit_forget_bias). Matmuls run in
`dtype`; the gates and the carry are computed and kept in float32 so that long sequences do not
drift in bfloat16.
"""

import dataclasses
import difflib
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Carry = Any  # Array for the simple RNN and the GRU, (c, h) for the LSTM.
Initializer = nn.initializers.Initializer

CARRY_DTYPE = jnp.float32


class _FusedCell(nn.Module):
  """Shared machinery: the fused input projection and the recurrent matmul.

  Subclasses set `num_gates` and implement `step`.
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.glorot_uniform()
  recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
  bias_init: Initializer = nn.initializers.zeros_init()

  num_gates = 1  # G; a class constant, not a dataclass field.

  def setup(self):
    if self.features < 1:
      raise ValueError(f"{type(self).__name__}: features must be >= 1, got {self.features}.")
    # A Dense infers D from the first input, so the cell works for any input width.
    self.input = nn.Dense(self.num_gates * self.features, kernel_init=self.kernel_init,
                          bias_init=self._input_bias_init, dtype=self.dtype,
                          param_dtype=self.param_dtype)
    self.recurrent_kernel = self.param(
        "recurrent_kernel", self.recurrent_kernel_init,
        (self.features, self.num_gates * self.features), self.param_dtype)

  def _input_bias_init(self, key, shape, dtype=jnp.float32):
    return self.bias_init(key, shape, dtype)

  def project_inputs(self, x_sD: Array) -> Array:
    """x @ W + b for inputs of any leading shape: [..., D] -> [..., G*H] in `dtype`."""
    # As one [N, D] x [D, G*H] matmul: the kernel's gradient is then x^T dxg over a single
    # contracting axis, which XLA:CPU runs without first transposing dxg (8 MB for a char-LSTM
    # layer); with two contracting axes (time, batch) it copies dxg transposed.
    lead = x_sD.shape[:-1]
    return self.input(x_sD.reshape(-1, x_sD.shape[-1])).reshape(*lead, -1)

  def _recurrent(self, h_BH: Array, kernel_HK: Array) -> Array:
    """h @ U in `dtype`, returned in float32 for the gate arithmetic."""
    h_BH, kernel_HK = nn.dtypes.promote_dtype(h_BH, kernel_HK, dtype=self.dtype)
    return jnp.dot(h_BH, kernel_HK).astype(CARRY_DTYPE)

  def step(self, carry: Carry, xg_BG: Array) -> tuple[Carry, Array]:
    """One timestep from the projected input `xg_BG` = project_inputs(x_t). Returns (carry, y)."""
    raise NotImplementedError

  def __call__(self, carry: Carry, x_BD: Array) -> tuple[Carry, Array]:
    """One timestep from the raw input x_t [B, D]: project_inputs then step."""
    return self.step(carry, self.project_inputs(x_BD))

  @nn.nowrap
  def initialize_carry(self, batch_shape: tuple[int, ...]) -> Carry:
    """The zero carry for a batch of shape `batch_shape` (e.g. (B,))."""
    return jnp.zeros((*batch_shape, self.features), CARRY_DTYPE)


class SimpleRNNCell(_FusedCell):
  """Elman RNN: h_t = activation(W x_t + U h_{t-1} + b). Carry: h [B, H]; output y_t = h_t."""

  activation: Callable[[Array], Array] = nn.tanh

  num_gates = 1

  def step(self, carry, xg_BG):
    pre_BH = xg_BG.astype(CARRY_DTYPE) + self._recurrent(carry, self.recurrent_kernel)
    h_BH = self.activation(pre_BH)
    return h_BH, h_BH.astype(self.dtype)


class LSTMCell(_FusedCell):
  """LSTM (Hochreiter & Schmidhuber 1997, with forget gate), PyTorch's gate order i, f, g, o.

      [i, f, g, o] = W x_t + U h_{t-1} + b
      c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
      h_t = sigmoid(o) * tanh(c_t)

  Carry: (c, h), each [B, H]; output y_t = h_t. `forget_bias` initialises the f block of b.
  A sequence layer runs it with `recurrence` (a hand-written backward pass; see lstm_recurrence).
  """

  forget_bias: float = 1.0

  num_gates = 4

  def _input_bias_init(self, key, shape, dtype=jnp.float32):
    bias = self.bias_init(key, shape, dtype)
    h = self.features
    return bias.at[h:2 * h].add(jnp.asarray(self.forget_bias, dtype))

  def step(self, carry, xg_BG):
    c_BH, h_BH = carry
    gates_BG = xg_BG.astype(CARRY_DTYPE) + self._recurrent(h_BH, self.recurrent_kernel)
    c_BH, h_BH, _ = _lstm_update(c_BH, gates_BG)
    return (c_BH, h_BH), h_BH.astype(self.dtype)

  def recurrence(self, carry: Carry, xg_TBG: Array, valid_TB: Array | None = None, *,
                 reverse: bool = False, unroll: int = 1) -> tuple[Carry, Array]:
    """`step` over all timesteps of time-major projected inputs; see `lstm_recurrence`."""
    return lstm_recurrence(xg_TBG, self.recurrent_kernel, carry, valid_TB, reverse=reverse,
                           unroll=unroll, dtype=self.dtype)

  @nn.nowrap
  def initialize_carry(self, batch_shape):
    zeros = jnp.zeros((*batch_shape, self.features), CARRY_DTYPE)
    return (zeros, zeros)


# ---------------------------------------------------------------- LSTM over a whole sequence
#
# XLA:CPU pays a fixed cost per operation of a loop body, which at LSTM sizes (a [32, 256] x
# [256, 1024] matmul a step) outweighs the arithmetic of the gates. JAX's own derivative of the
# scanned `LSTMCell.step` compiled to 23 operations a step forward (storing 13 intermediates a
# step for the backward pass) and 12 backward, adding each step's h^T dgates into the recurrent
# kernel's gradient inside the loop. The hand-written VJP below compiles to 9 a step forward
# (storing 3 arrays: h, c and the four gate activations) and 12 backward (one matmul, a few fused
# elementwise operations, loop bookkeeping), and forms the kernel's gradient after the loop as one
# [H, T*B] x [T*B, 4H] matmul, as cuDNN and oneDNN do. On 2 CPU cores a layer of 256 on
# [32, 64] inputs trains about 1.5-2x faster; the numbers agree to float32 rounding.


def _gate_scale(h: int) -> Array:
  """[1/2]*2H for i and f, [1]*H for g, [1/2]*H for o: sigmoid(x) = tanh(x / 2) / 2 + 1/2, so with
  s this scale every gate's activation is tanh(s x) s + (1 - s), one tanh over all four."""
  return jnp.concatenate([jnp.full((2 * h,), 0.5, CARRY_DTYPE), jnp.ones((h,), CARRY_DTYPE),
                          jnp.full((h,), 0.5, CARRY_DTYPE)])


def _lstm_update(c_BH: Array, gates_BG: Array) -> tuple[Array, Array, Array]:
  """(c_t, h_t, [sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)]) from c_{t-1} and the gates, f32.

  One fused operation for the four activations; equal to the textbook formula up to float32
  rounding.
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
    c_new, h_new, acts_BG = _lstm_update(c_BH, gates_BG)
    if valid_B is not None:
      c_new = jnp.where(valid_B[:, None], c_new, c_BH)
      h_new = jnp.where(valid_B[:, None], h_new, h_BH)
    return (c_new, h_new), ((h_new, c_new, acts_BG) if keep else h_new)

  return jax.lax.scan(body, carry, (xg_TBG, valid_TB), reverse=reverse, unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _lstm(xg_TBG, kernel_HG, carry, valid_TB, reverse, unroll, dtype):
  return _lstm_scan(xg_TBG, kernel_HG, carry, valid_TB, reverse, unroll, dtype, keep=False)


def _lstm_fwd(xg_TBG, kernel_HG, carry, valid_TB, reverse, unroll, dtype):
  final, (h_TBH, c_TBH, acts_TBG) = _lstm_scan(xg_TBG, kernel_HG, carry, valid_TB, reverse,
                                               unroll, dtype, keep=True)
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
    dacts_BG = (jnp.concatenate([dc_new, dc_new, dc_new, dh_new], -1)
                * jnp.concatenate([g, c_prev_BH, i, tanh_c], -1))
    dgates_BG = dacts_BG * (scale_G * scale_G - jnp.square(acts_BG - (1.0 - scale_G)))
    dc_prev = dc_new * f
    dh_prev = _lstm_matmul(dgates_BG, kernel_T_GH, dtype)
    if valid_B is not None:
      dc_prev = dc_prev + jnp.where(valid_B[:, None], 0.0, dc_BH)
      dh_prev = dh_prev + jnp.where(valid_B[:, None], 0.0, dh_BH)
    return (dc_prev, dh_prev), dgates_BG

  (dc0_BH, dh0_BH), dgates_TBG = jax.lax.scan(
      body, (dc_BH, dh_BH), (dh_seq_TBH, c_TBH, c_prev_TBH, acts_TBG, valid_TB),
      reverse=not reverse, unroll=unroll)
  # Every step's h_{t-1}^T dgates_t at once. Masked steps have dgates = 0, so they add nothing.
  h_prev_TBH = _previous(h_TBH, h0_BH, reverse)
  t, b, g = dgates_TBG.shape
  dkernel_HG = jnp.dot(h_prev_TBH.reshape(t * b, -1).astype(dtype).T,
                       dgates_TBG.reshape(t * b, g).astype(dtype),
                       preferred_element_type=CARRY_DTYPE)
  return (dgates_TBG.astype(xg_dtype.dtype), dkernel_HG.astype(kernel_HG.dtype),
          (dc0_BH.astype(c0_BH.dtype), dh0_BH.astype(h0_BH.dtype)), None)  # None: valid_TB is bool.


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


def lstm_recurrence(xg_TBG: Array, kernel_HG: Array, carry: Carry, valid_TB: Array | None = None,
                    *, reverse: bool = False, unroll: int = 1,
                    dtype: Any = jnp.float32) -> tuple[Carry, Array]:
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


class GRUCell(_FusedCell):
  """GRU (Cho et al. 2014), PyTorch's gate order r, z, n. Carry: h [B, H]; output y_t = h_t.

      r = sigmoid(W_r x + b_r + U_r h),  z = sigmoid(W_z x + b_z + U_z h)
      reset_after=True  (cuDNN, PyTorch, Keras' default):
          n = tanh(W_n x + b_n + r * (U_n h + c_n))   with a recurrent bias c [3H]
      reset_after=False (the paper, Keras reset_after=False):
          n = tanh(W_n x + b_n + U_n (r * h))
      h_t = (1 - z) * n + z * h_{t-1}

  With reset_after=True the three recurrent products are one matmul; with reset_after=False the
  candidate's must wait for r, so each step does two.
  """

  reset_after: bool = True

  num_gates = 3

  def setup(self):
    super().setup()
    if self.reset_after:
      # Like PyTorch's b_hh and Keras' second bias row: only its n block is not redundant with b.
      self.recurrent_bias = self.param("recurrent_bias", self.bias_init, (3 * self.features,),
                                       self.param_dtype)

  def step(self, carry, xg_BG):
    h_BH = carry
    xr, xz, xn = jnp.split(xg_BG.astype(CARRY_DTYPE), 3, axis=-1)
    if self.reset_after:
      hg = self._recurrent(h_BH, self.recurrent_kernel) + self.recurrent_bias.astype(CARRY_DTYPE)
      hr, hz, hn = jnp.split(hg, 3, axis=-1)
      r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
      n = jnp.tanh(xn + r * hn)
    else:
      H = self.features
      hr, hz = jnp.split(self._recurrent(h_BH, self.recurrent_kernel[:, :2 * H]), 2, axis=-1)
      r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
      n = jnp.tanh(xn + self._recurrent(r * h_BH, self.recurrent_kernel[:, 2 * H:]))
    h_BH = (1.0 - z) * n + z * h_BH
    return h_BH, h_BH.astype(self.dtype)


CELLS: dict[str, type[_FusedCell]] = {"rnn": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}


def make_cell(cell_type: str, features: int, **kwargs: Any) -> _FusedCell:
  """The cell named `cell_type` ("rnn", "lstm" or "gru") with `features` units.

  kwargs are the cell's other fields (dtype, forget_bias for "lstm", reset_after for "gru",
  activation for "rnn", ...); a misspelt name or a field the cell lacks is a ValueError.
  """
  if cell_type not in CELLS:
    close = difflib.get_close_matches(str(cell_type), CELLS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"Unknown cell_type {cell_type!r}.{hint} Choose one of {sorted(CELLS)}.")
  cls = CELLS[cell_type]
  fields = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"cell_type {cell_type!r} takes no argument(s) {unknown}; "
                     f"it takes {sorted(fields)}.")
  # parent=None: the cell is adopted by the layer it is passed to, so its params nest there.
  return cls(features=features, parent=None, **kwargs)
