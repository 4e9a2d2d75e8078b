"""Sequence layers that run a recurrent cell over time: one direction, both directions, a stack.

`Recurrent` hoists the input projection of every timestep into one matmul, then scans only the
recurrent half of the cell with Flax's lifted `nn.scan` (params broadcast, so they are created
once and shared by all steps), or runs the cell's own `recurrence` over all steps when it has one
(the LSTM's, with a hand-written backward pass: jaxdl.kernels.lstm.lstm_recurrence). Padding is
given as per-example `lengths_B` or a boolean `mask_BT` (True = a real step): at a masked step an
example's carry is frozen and its output is zero, so its final carry is the one at its last valid
step.

A backward layer scans from step T-1 down to 0 with the same mask. For padding at the end that is
exactly "run each example's valid prefix from its last step back to step 0": the padded steps come
first and leave the carry untouched. Outputs stay in the original time order, zeros at padding.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn import registry
from jaxdl.nn.cells import CARRY_DTYPE, Carry, make_cell
from jaxdl.nn.dropout import Dropout, check_rate, is_traced

Array = jax.Array

MERGES = ("concat", "sum")


def sequence_mask(x_BTD: Array, lengths_B: Array | None, mask_BT: Array | None) -> Array | None:
  """Checks `x_BTD` and the padding arguments; returns the bool mask [B, T], or None if unpadded."""
  if x_BTD.ndim != 3:
    raise ValueError(
      f"Recurrent layers take inputs [batch, time, features]; got shape "
      f"{x_BTD.shape}. Add a batch axis with x[None] or use jax.vmap for more."
    )
  B, T, _ = x_BTD.shape
  if lengths_B is not None and mask_BT is not None:
    raise ValueError("Pass lengths_B or mask_BT, not both: lengths_B=l is mask_BT=arange(T) < l.")
  if lengths_B is not None:
    lengths_B = jnp.asarray(lengths_B)
    if lengths_B.shape != (B,):
      raise ValueError(
        f"lengths_B must have shape (batch,) = ({B},) for inputs of shape "
        f"{x_BTD.shape}; got shape {lengths_B.shape}."
      )
    return jnp.arange(T)[None, :] < lengths_B[:, None]
  if mask_BT is not None:
    mask_BT = jnp.asarray(mask_BT)
    if mask_BT.shape != (B, T):
      raise ValueError(
        f"mask_BT must have shape (batch, time) = ({B}, {T}) for inputs of shape "
        f"{x_BTD.shape}; got shape {mask_BT.shape}."
      )
    return mask_BT.astype(bool)
  return None


def _check_carry(name: str, carry: Carry, expected: Carry) -> Carry:
  """Casts a user carry to float32 after checking it has the cell's structure and shapes."""
  shapes = jax.tree.map(jnp.shape, carry)
  expected_shapes = jax.tree.map(jnp.shape, expected)
  if (jax.tree.structure(carry) != jax.tree.structure(expected)) or shapes != expected_shapes:
    raise ValueError(
      f"{name}: initial carry has shapes {shapes}; this cell needs "
      f"{expected_shapes} (an LSTM carry is a (c, h) tuple)."
    )
  return jax.tree.map(lambda a: jnp.asarray(a, CARRY_DTYPE), carry)


def _scan_body(cell: nn.Module, carry: Carry, inputs: tuple[Array, Array | None]):
  """One timestep inside the scan: the recurrent half of the cell, then the mask."""
  xg_BG, valid_B = inputs
  new_carry, y_BH = cell.step(carry, xg_BG)
  if valid_B is not None:  # Static: no masking cost for unpadded batches.
    keep = lambda new, old: jnp.where(valid_B[:, None], new, old)
    new_carry = jax.tree.map(keep, new_carry, carry)
    y_BH = jnp.where(valid_B[:, None], y_BH, jnp.zeros_like(y_BH))
  return new_carry, y_BH


class Recurrent(nn.Module):
  """Runs `cell` over time in one direction.

  Attributes:
    cell: a cell from jaxdl.nn.cells (anything with project_inputs, step, initialize_carry, and
      optionally recurrence(carry, xg_TBG, valid_TB, reverse=, unroll=) -> (carry, y_TBH), which
      then replaces the scan of `step`).
    reverse: scan from the last step to the first; outputs keep the original time order.
    unroll: timesteps per scan iteration (lax.scan's unroll); >1 can be faster on accelerators.
  """

  cell: nn.Module
  reverse: bool = False
  unroll: int = 1

  def __call__(
    self,
    x_BTD: Array,
    *,
    initial_carry: Carry | None = None,
    lengths_B: Array | None = None,
    mask_BT: Array | None = None,
  ) -> tuple[Array, Carry]:
    """Runs the sequence.

    Args:
      x_BTD: inputs [B, T, D].
      initial_carry: the carry before the first processed step (zeros when None).
      lengths_B: int [B]; steps t >= lengths_B[b] are padding. Exclusive with mask_BT.
      mask_BT: bool [B, T], True at real steps; any pattern, not only a prefix.

    Returns:
      (outputs [B, T, H] with zeros at padded steps, the final carry of each example).
    """
    mask_BT = sequence_mask(x_BTD, lengths_B, mask_BT)
    expected = self.cell.initialize_carry(x_BTD.shape[:1])
    carry = (
      expected
      if initial_carry is None
      else _check_carry(type(self).__name__, initial_carry, expected)
    )
    # Time-major for the scan; transpose x (D wide) rather than the projection (G*H wide).
    xg_TBG = self.cell.project_inputs(jnp.swapaxes(x_BTD, 0, 1))
    valid_TB = None if mask_BT is None else mask_BT.T
    if hasattr(self.cell, "recurrence"):  # The cell's own loop over time (the LSTM's).
      carry, y_TBH = self.cell.recurrence(
        carry, xg_TBG, valid_TB, reverse=self.reverse, unroll=self.unroll
      )
      return jnp.swapaxes(y_TBH, 0, 1), carry
    scan = nn.scan(
      _scan_body,
      variable_broadcast="params",
      split_rngs={"params": False},
      in_axes=0,
      out_axes=0,
      reverse=self.reverse,
      unroll=self.unroll,
    )
    carry, y_TBH = scan(self.cell, carry, (xg_TBG, valid_TB))
    return jnp.swapaxes(y_TBH, 0, 1), carry

  def step(self, carry: Carry, x_BD: Array) -> tuple[Carry, Array]:
    """One timestep from raw inputs [B, D]: what __call__ computes at that step."""
    return self.cell(carry, x_BD)

  @nn.nowrap
  def initialize_carry(self, batch_shape: tuple[int, ...]) -> Carry:
    return self.cell.initialize_carry(batch_shape)


def merge_directions(fwd: Array, bwd: Array, merge: str) -> Array:
  """Combines forward and backward features: "concat" on the last axis, or "sum"."""
  if merge == "concat":
    return jnp.concatenate([fwd, bwd], axis=-1)
  if merge == "sum":
    return fwd + bwd
  raise ValueError(f"Unknown merge {merge!r}; choose one of {MERGES}.")


class Bidirectional(nn.Module):
  """A forward and a backward `Recurrent` over the same inputs, outputs merged per timestep.

  The carry (initial and final) is the pair (forward carry, backward carry); the backward final
  carry is its state after step 0.
  """

  forward: Recurrent
  backward: Recurrent
  merge: str = "concat"

  def __call__(
    self,
    x_BTD: Array,
    *,
    initial_carry: tuple[Carry, Carry] | None = None,
    lengths_B: Array | None = None,
    mask_BT: Array | None = None,
  ) -> tuple[Array, tuple[Carry, Carry]]:
    """Returns (outputs [B, T, 2H] for "concat" or [B, T, H] for "sum", (fwd, bwd) carries)."""
    if self.merge not in MERGES:
      raise ValueError(f"Unknown merge {self.merge!r}; choose one of {MERGES}.")
    if self.forward.reverse or not self.backward.reverse:
      raise ValueError(
        "Bidirectional needs forward=Recurrent(cell) and backward=Recurrent(cell, reverse=True)."
      )
    if initial_carry is None:
      init_fwd = init_bwd = None
    elif isinstance(initial_carry, (tuple, list)) and len(initial_carry) == 2:
      init_fwd, init_bwd = initial_carry
    else:
      raise ValueError("Bidirectional's initial_carry is a pair (forward carry, backward carry).")
    y_fwd, carry_fwd = self.forward(
      x_BTD, initial_carry=init_fwd, lengths_B=lengths_B, mask_BT=mask_BT
    )
    y_bwd, carry_bwd = self.backward(
      x_BTD, initial_carry=init_bwd, lengths_B=lengths_B, mask_BT=mask_BT
    )
    return merge_directions(y_fwd, y_bwd, self.merge), (carry_fwd, carry_bwd)

  @nn.nowrap
  def initialize_carry(self, batch_shape: tuple[int, ...]) -> tuple[Carry, Carry]:
    return (self.forward.initialize_carry(batch_shape), self.backward.initialize_carry(batch_shape))


@registry.register("stacked_rnn")
class StackedRNN(nn.Module):
  """`num_layers` recurrent layers, optionally bidirectional, with dropout between layers.

  This is the layer models and configs use, and a model of its own ("stacked_rnn": sequences
  [B, T, D] -> (outputs, carries), as torch's nn.LSTM / nn.GRU). Params: layers_0, layers_1, ...
  each holding a `cell` (or `forward` and `backward` cells when bidirectional).

  Attributes:
    features: H, units per direction.
    cell_type: "rnn", "lstm" or "gru".
    num_layers: stacked layers; layer l+1 reads layer l's outputs.
    bidirectional: each layer runs both directions and merges them with `merge`.
    merge: "concat" (outputs [B, T, 2H]) or "sum" ([B, T, H]).
    dropout_rate: dropout on each layer's outputs except the last (rng stream "dropout"), applied
      only when called with train=True.
    reset_after: GRU reset-gate placement (see jaxdl.nn.cells.GRUCell); ignored by other cells.
    forget_bias: LSTM forget-gate bias at initialisation; ignored by other cells.
    use_bias: whether the cells have biases (PyTorch's bias=False is use_bias=False).
    input_features: D, the input width, when the stack is a model of its own (a checkpoint's
      nn.LSTM says its input_size); inputs of another width are then refused. None: any width.
    unroll: timesteps per scan iteration.
    dtype, param_dtype: computation and parameter dtypes of the cells.
  """

  features: int
  cell_type: str = "lstm"
  num_layers: int = 1
  bidirectional: bool = False
  merge: str = "concat"
  dropout_rate: float = 0.0
  reset_after: bool = True
  forget_bias: float = 1.0
  use_bias: bool = True
  input_features: int | None = None
  unroll: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.nowrap
  def _make_cell(self) -> nn.Module:
    kwargs = {"dtype": self.dtype, "param_dtype": self.param_dtype, "use_bias": self.use_bias}
    if self.cell_type == "lstm":
      kwargs["forget_bias"] = self.forget_bias
    elif self.cell_type == "gru":
      kwargs["reset_after"] = self.reset_after
    return make_cell(self.cell_type, self.features, **kwargs)

  @nn.nowrap
  def _make_layer(self) -> nn.Module:
    if self.bidirectional:
      return Bidirectional(
        Recurrent(self._make_cell(), unroll=self.unroll, parent=None),
        Recurrent(self._make_cell(), reverse=True, unroll=self.unroll, parent=None),
        merge=self.merge,
        parent=None,
      )
    return Recurrent(self._make_cell(), unroll=self.unroll, parent=None)

  def setup(self):
    if self.num_layers < 1:
      raise ValueError(f"StackedRNN: num_layers must be >= 1, got {self.num_layers}.")
    if self.merge not in MERGES:
      raise ValueError(f"StackedRNN: unknown merge {self.merge!r}; choose one of {MERGES}.")
    check_rate(self.dropout_rate, "StackedRNN")
    self.layers = [self._make_layer() for _ in range(self.num_layers)]
    self.dropout = Dropout(self.dropout_rate)

  def _check_carries(self, carries: Sequence[Carry] | None) -> Sequence[Carry | None]:
    if carries is None:
      return [None] * self.num_layers
    if not isinstance(carries, (tuple, list)) or len(carries) != self.num_layers:
      raise ValueError(
        f"StackedRNN: pass one carry per layer ({self.num_layers}) as a tuple or "
        "list; initialize_carry(batch_shape) shows the structure."
      )
    return carries

  def _check_width(self, x: Array) -> None:
    if self.input_features is not None and x.shape[-1] != self.input_features:
      raise ValueError(
        f"StackedRNN(input_features={self.input_features}) got inputs of shape {x.shape}: their "
        f"last axis must be {self.input_features}."
      )

  def __call__(
    self,
    x_BTD: Array,
    *,
    initial_carry: Sequence[Carry] | None = None,
    lengths_B: Array | None = None,
    mask_BT: Array | None = None,
    train: bool = False,
  ) -> tuple[Array, tuple[Carry, ...]]:
    """Runs the stack over a sequence.

    Args:
      x_BTD: inputs [B, T, D].
      initial_carry: one carry per layer ((fwd, bwd) pairs when bidirectional), or None for zeros.
      lengths_B / mask_BT: padding, as in `Recurrent`.
      train: enables dropout between layers.

    Returns:
      (outputs of the last layer [B, T, H] ([B, T, 2H] for bidirectional concat), zero at padded
      steps; tuple of the final carry of every layer).
    """
    mask_BT = sequence_mask(x_BTD, lengths_B, mask_BT)  # Validated once for all layers.
    self._check_width(x_BTD)
    carries = self._check_carries(initial_carry)
    finals = []
    x = x_BTD
    for i, layer in enumerate(self.layers):
      # A Python rate of 0 skips the layer (no rng drawn); a traced rate always runs it.
      if i > 0 and (is_traced(self.dropout_rate) or self.dropout_rate > 0):
        x = self.dropout(x, deterministic=not train)
      x, carry = layer(x, initial_carry=carries[i], mask_BT=mask_BT)
      finals.append(carry)
    return x, tuple(finals)

  def step(self, carries: Sequence[Carry], x_BD: Array) -> tuple[tuple[Carry, ...], Array]:
    """One decoding step through every layer: (carries, x_t [B, D]) -> (carries, y_t [B, H]).

    Equals __call__'s step t given the carries after step t-1. Dropout is off (inference).
    """
    if self.bidirectional:
      raise ValueError(
        "StackedRNN.step decodes one step forward in time, which a bidirectional "
        "stack cannot do (its backward half needs the future); run __call__ on the "
        "whole sequence instead."
      )
    self._check_width(x_BD)
    carries = self._check_carries(carries)
    new = []
    y = x_BD
    for layer, carry in zip(self.layers, carries):
      carry, y = layer.step(carry, y)
      new.append(carry)
    return tuple(new), y

  @nn.nowrap
  def initialize_carry(self, batch_shape: tuple[int, ...]) -> tuple[Carry, ...]:
    """Zero carries for every layer, for a batch of shape `batch_shape` (e.g. (B,))."""
    return tuple(self._make_layer().initialize_carry(batch_shape) for _ in range(self.num_layers))

  @nn.nowrap
  def final_hidden(self, carries: Sequence[Carry]) -> Array:
    """The last layer's final hidden state h [B, H] ([B, 2H] bidirectional concat) from carries."""
    hidden = lambda carry: carry[1] if self.cell_type == "lstm" else carry  # LSTM carry: (c, h).
    last = carries[-1]
    if self.bidirectional:
      return merge_directions(hidden(last[0]), hidden(last[1]), self.merge)
    return hidden(last)
