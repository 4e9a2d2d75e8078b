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
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# lstm_recurrence is also imported from here (the LSTM's sequence loop lived in this file).
from jaxdl.kernels.lstm import lstm_recurrence, lstm_update

Array = jax.Array
Carry = Any  # Array for the simple RNN and the GRU, (c, h) for the LSTM.
Initializer = nn.initializers.Initializer

CARRY_DTYPE = jnp.float32


class _FusedCell(nn.Module):
  """Shared machinery: the fused input projection and the recurrent matmul.

  Subclasses set `num_gates` and implement `step`. `use_bias=False` makes a cell without biases
  (PyTorch's bias=False): the input projection has none, nor has the GRU's recurrent half.
  """

  features: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.glorot_uniform()
  recurrent_kernel_init: Initializer = nn.initializers.orthogonal()
  bias_init: Initializer = nn.initializers.zeros_init()
  use_bias: bool = True

  num_gates = 1  # G; a class constant, not a dataclass field.

  def setup(self):
    if self.features < 1:
      raise ValueError(f"{type(self).__name__}: features must be >= 1, got {self.features}.")
    # A Dense infers D from the first input, so the cell works for any input width.
    self.input = nn.Dense(
      self.num_gates * self.features,
      use_bias=self.use_bias,
      kernel_init=self.kernel_init,
      bias_init=self._input_bias_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    self.recurrent_kernel = self.param(
      "recurrent_kernel",
      self.recurrent_kernel_init,
      (self.features, self.num_gates * self.features),
      self.param_dtype,
    )

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
  A sequence layer runs it with `recurrence`: the kernel jaxdl.kernels.lstm.lstm_recurrence, a scan
  of `step`'s arithmetic with a hand-written backward pass.
  """

  forget_bias: float = 1.0

  num_gates = 4

  def _input_bias_init(self, key, shape, dtype=jnp.float32):
    bias = self.bias_init(key, shape, dtype)
    h = self.features
    return bias.at[h : 2 * h].add(jnp.asarray(self.forget_bias, dtype))

  def step(self, carry, xg_BG):
    c_BH, h_BH = carry
    gates_BG = xg_BG.astype(CARRY_DTYPE) + self._recurrent(h_BH, self.recurrent_kernel)
    # The equations above, the four activations by one tanh; shared with `recurrence`'s loop, so
    # that decoding step by step does the arithmetic of the whole-sequence pass.
    c_BH, h_BH, _ = lstm_update(c_BH, gates_BG)
    return (c_BH, h_BH), h_BH.astype(self.dtype)

  def recurrence(
    self,
    carry: Carry,
    xg_TBG: Array,
    valid_TB: Array | None = None,
    *,
    reverse: bool = False,
    unroll: int = 1,
  ) -> tuple[Carry, Array]:
    """`step` over all timesteps of time-major projected inputs; see jaxdl.kernels.lstm."""
    return lstm_recurrence(
      xg_TBG,
      self.recurrent_kernel,
      carry,
      valid_TB,
      reverse=reverse,
      unroll=unroll,
      dtype=self.dtype,
    )

  @nn.nowrap
  def initialize_carry(self, batch_shape):
    zeros = jnp.zeros((*batch_shape, self.features), CARRY_DTYPE)
    return (zeros, zeros)


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
    if self.reset_after and self.use_bias:
      # Like PyTorch's b_hh and Keras' second bias row: only its n block is not redundant with b.
      self.recurrent_bias = self.param(
        "recurrent_bias", self.bias_init, (3 * self.features,), self.param_dtype
      )

  def step(self, carry, xg_BG):
    h_BH = carry
    xr, xz, xn = jnp.split(xg_BG.astype(CARRY_DTYPE), 3, axis=-1)
    if self.reset_after:
      hg = self._recurrent(h_BH, self.recurrent_kernel)
      if self.use_bias:
        hg = hg + self.recurrent_bias.astype(CARRY_DTYPE)
      hr, hz, hn = jnp.split(hg, 3, axis=-1)
      r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
      n = jnp.tanh(xn + r * hn)
    else:
      H = self.features
      hr, hz = jnp.split(self._recurrent(h_BH, self.recurrent_kernel[:, : 2 * H]), 2, axis=-1)
      r, z = nn.sigmoid(xr + hr), nn.sigmoid(xz + hz)
      n = jnp.tanh(xn + self._recurrent(r * h_BH, self.recurrent_kernel[:, 2 * H :]))
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
    raise ValueError(
      f"cell_type {cell_type!r} takes no argument(s) {unknown}; it takes {sorted(fields)}."
    )
  # parent=None: the cell is adopted by the layer it is passed to, so its params nest there.
  return cls(features=features, parent=None, **kwargs)
