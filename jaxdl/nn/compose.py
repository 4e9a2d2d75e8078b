"""Combinators and small adapters for assembling models from parts in an experiment file.

    model = Sequential([
        nn.Conv(32, (3, 3)), nn.relu, Pool(2),         # [B, 28, 28, 1] -> [B, 14, 14, 32]
        ImageRows(),                                   # -> [B, 14, 14 * 32]: 14 rows, a sequence
        RNN(128, cell_type="gru", return_sequences=False),   # -> [B, 128], the last hidden state
        Dropout(0.1), Classifier(10),                  # -> float32 logits [B, 10]
    ])

Combinators: `Sequential` (layers in order), `Residual` (x + f(x)), `Parallel` (branches on the
same input, merged). Adapters that make parts fit: `Flatten`, `ImageRows`, `ImageTokens`, `Pool`,
`GlobalAvgPool`, `Embed`, `PositionEmbedding`, `RNN`, `AttentionPooling`, `Dropout`, `BatchNorm`,
`Classifier`.

Which layers get `train`: Flax's own layers disagree (nn.Dropout takes `deterministic`,
nn.BatchNorm `use_running_average`, nn.Dense nothing), so the combinators pass `train=` by one
explicit rule, `takes_train`: a layer gets it exactly when its Python `__call__` (a Linen module's,
seen through Flax's method wrapper) or, for a plain function, the function itself has a parameter
named `train`. Every model in jaxdl.nn and every adapter here has one; Flax layers, jax.nn
functions (`nn.relu`), `functools.partial` objects and jitted functions are called with x alone.
Use this file's `Dropout` and `BatchNorm` rather than Flax's to have them follow `train`.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn import dropout as dropout_lib
from jaxdl.nn import pooling
from jaxdl.nn.recurrent import StackedRNN
from jaxdl.nn.transformer import F32_DOT_GENERAL

Array = jax.Array
Layer = Callable[..., Any]

PARALLEL_MERGES = ("concat", "sum", "stack")
POOL_KINDS = ("max", "avg")


def takes_train(layer: Layer) -> bool:
  """Whether `layer` is called with `train=` by the combinators (see the module docstring)."""
  fn = type(layer).__call__ if isinstance(layer, nn.Module) else layer
  for _ in range(16):  # Flax wraps module methods (functools.wraps sets __wrapped__).
    inner = getattr(fn, "__wrapped__", None)
    if inner is None:
      break
    fn = inner
  code = getattr(fn, "__code__", None)
  if code is None:
    return False
  return "train" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def _layer_name(layer: Layer) -> str:
  return (
    type(layer).__name__
    if isinstance(layer, nn.Module)
    else getattr(layer, "__name__", type(layer).__name__)
  )


def _call(owner: str, index: int, layer: Layer, x: Any, train: bool) -> Array:
  """layer(x[, train=train]), refusing outputs that are not single arrays (e.g. (y, carry))."""
  y = layer(x, train=train) if takes_train(layer) else layer(x)
  if isinstance(y, (tuple, list, dict)):
    raise ValueError(
      f"{owner}: layer {index} ({_layer_name(layer)}) returned a "
      f"{type(y).__name__}, not an array; the combinators pass one array between "
      "layers. For recurrent layers use jaxdl.nn.RNN, which returns the outputs (or "
      "the last hidden state) alone; otherwise wrap the layer to pick one output."
    )
  return y


def _check_layers(owner: str, field: str, layers: Any) -> None:
  if isinstance(layers, (nn.Module, str)) or not isinstance(layers, (tuple, list)):
    raise ValueError(
      f"{owner}: {field} must be a list or tuple of layers, got "
      f"{type(layers).__name__}; write {owner}([layer]) for a single one."
    )
  if not layers:
    raise ValueError(f"{owner}: {field} is empty; give at least one layer.")
  for i, layer in enumerate(layers):
    if not callable(layer):
      raise ValueError(
        f"{owner}: {field}[{i}] = {layer!r} is not callable; a layer is a Linen "
        "module or a function of one array, such as nn.relu."
      )


class Sequential(nn.Module):
  """Applies `layers` in order: x -> layers[-1](... layers[0](x)).

  Unlike flax.linen.Sequential it passes `train=` to the layers that take it (`takes_train`).
  Layers are Linen modules or functions of one array (`nn.relu`, `jnp.tanh`, lambdas). Params:
  layers_0, layers_1, ... (numbered by position in `layers`, functions included).

  Attributes:
    layers: the layers; each takes the previous one's output, a single array.
  """

  layers: Sequence[Layer]

  def __call__(self, x: Any, *, train: bool = False) -> Array:
    _check_layers("Sequential", "layers", self.layers)
    for i, layer in enumerate(self.layers):
      x = _call("Sequential", i, layer, x, train)
    return x


class Residual(nn.Module):
  """y = shortcut(x) + inner(x), where shortcut is `projection` when given, else the identity.

  Attributes:
    inner: the residual branch, a layer (a Sequential for several).
    projection: a layer on the shortcut, needed when inner changes the shape (e.g.
      nn.Conv(features, (1, 1), strides=2) when the branch halves the resolution and widens).
  """

  inner: Layer
  projection: Layer | None = None

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    y = _call("Residual", 0, self.inner, x, train)
    shortcut = x if self.projection is None else _call("Residual", 1, self.projection, x, train)
    if shortcut.shape != y.shape:
      fix = (
        "give Residual a projection (e.g. nn.Dense(out_features) or a 1x1 nn.Conv) that "
        "maps the input to the branch's shape"
        if self.projection is None
        else "make the projection map the input to the branch's shape"
      )
      raise ValueError(
        f"Residual: the branch {_layer_name(self.inner)} turns {x.shape} into "
        f"{y.shape}, but the shortcut is {shortcut.shape}; {fix}."
      )
    return shortcut + y


class Parallel(nn.Module):
  """Feeds the same input to every branch and merges their outputs on the last axis.

  merge "concat": [..., F_1 + ... + F_n]; "sum": elementwise sum, all outputs of one shape;
  "stack": [..., F, n], a new last axis with one entry per branch (all outputs of one shape).

  Attributes:
    branches: the layers (each a Sequential for more than one step).
    merge: "concat", "sum" or "stack".
  """

  branches: Sequence[Layer]
  merge: str = "concat"

  def __call__(self, x: Array, *, train: bool = False) -> Array:
    if self.merge not in PARALLEL_MERGES:
      raise ValueError(
        f"Parallel: unknown merge {self.merge!r}; choose one of "
        f"{', '.join(map(repr, PARALLEL_MERGES))}."
      )
    _check_layers("Parallel", "branches", self.branches)
    ys = [_call("Parallel", i, branch, x, train) for i, branch in enumerate(self.branches)]
    shapes = [y.shape for y in ys]
    if self.merge == "concat":
      if len({(y.ndim, y.shape[:-1]) for y in ys}) > 1:
        raise ValueError(
          f"Parallel(merge='concat'): the branch outputs {shapes} differ before "
          "the last axis; they must agree on every axis but the last."
        )
      return jnp.concatenate(ys, axis=-1)
    if len(set(shapes)) > 1:
      raise ValueError(
        f"Parallel(merge={self.merge!r}): the branch outputs have shapes {shapes}; "
        "they must all be equal (use merge='concat' for different widths)."
      )
    if self.merge == "sum":
      return sum(ys[1:], ys[0])
    return jnp.stack(ys, axis=-1)


class Flatten(nn.Module):
  """[B, d1, d2, ...] -> [B, d1 * d2 * ...], row-major (Keras' Flatten on NHWC)."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim < 2:
      raise ValueError(
        f"Flatten keeps the batch axis and needs at least [B, d]; got shape {x.shape}."
      )
    return x.reshape(x.shape[0], -1)


def _check_image(owner: str, x: Array) -> None:
  if x.ndim != 4:
    raise ValueError(f"{owner} takes images or feature maps [B, H, W, C]; got shape {x.shape}.")


class ImageRows(nn.Module):
  """[B, H, W, C] -> [B, H, W * C]: the image (or feature map) as H timesteps, one row each."""

  @nn.compact
  def __call__(self, x_BHWC: Array) -> Array:
    _check_image("ImageRows", x_BHWC)
    B, H, W, C = x_BHWC.shape
    return x_BHWC.reshape(B, H, W * C)


class ImageTokens(nn.Module):
  """[B, H, W, C] -> [B, H * W, C]: every position of a feature map a token (row-major)."""

  @nn.compact
  def __call__(self, x_BHWC: Array) -> Array:
    _check_image("ImageTokens", x_BHWC)
    B, H, W, C = x_BHWC.shape
    return x_BHWC.reshape(B, H * W, C)


class Pool(nn.Module):
  """Max or average pooling over the spatial axes of [B, H, W, C] (or [B, T, D] with 1-D windows).

  Attributes:
    window: the window side (an int: square) or a tuple, one entry per spatial axis.
    strides: the step; None = the window (non-overlapping).
    kind: "max" or "avg".
    padding: "VALID" (drop the rest) or "SAME".
  """

  window: int | tuple[int, ...] = 2
  strides: int | tuple[int, ...] | None = None
  kind: str = "max"
  padding: str = "VALID"
  impl: str = "reshape"  # jaxdl.nn.pooling: a fast path for tiling windows; same results.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.kind not in POOL_KINDS:
      raise ValueError(f"Pool: unknown kind {self.kind!r}; choose one of {POOL_KINDS}.")
    spatial = x.ndim - 2
    if spatial < 1:
      raise ValueError(f"Pool takes [B, H, W, C] (or [B, T, D]); got shape {x.shape}.")
    as_tuple = lambda v: (v,) * spatial if isinstance(v, int) else tuple(v)
    window = as_tuple(self.window)
    strides = window if self.strides is None else as_tuple(self.strides)
    if len(window) != spatial or len(strides) != spatial:
      raise ValueError(
        f"Pool: window {window} / strides {strides} need one entry per spatial "
        f"axis ({spatial} for inputs of shape {x.shape})."
      )
    pool = pooling.max_pool if self.kind == "max" else pooling.avg_pool
    return pool(x, window, strides, self.padding, impl=self.impl)


class GlobalAvgPool(nn.Module):
  """Mean over every axis between batch and features: [B, H, W, C] -> [B, C], [B, T, D] -> [B, D].

  For padded sequences use AttentionPooling with the mask (this mean counts padding).
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim < 3:
      raise ValueError(
        f"GlobalAvgPool takes [B, ..., C] with at least one axis to average; got shape {x.shape}."
      )
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


class Dropout(nn.Module):
  """Dropout that follows `train` (rng stream "dropout"); the identity when train=False.

  Attributes:
    rate: the fraction of entries zeroed in training, in [0, 1); the rest are scaled by
      1 / (1 - rate). May be a traced scalar (see jaxdl.nn.dropout).
  """

  rate: float

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    dropout_lib.check_rate(self.rate, "Dropout", "rate")
    return dropout_lib.Dropout(self.rate)(x, deterministic=not train)


class BatchNorm(nn.Module):
  """Batch normalisation over all axes but the last, following `train`: batch statistics (and an
  update of the running averages in "batch_stats") when True, the running averages when False.

  Attributes:
    momentum, epsilon: as in flax.linen.BatchNorm (PyTorch's momentum 0.1 is 0.9 here).
    dtype: compute dtype.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    return nn.BatchNorm(
      use_running_average=not train,
      momentum=self.momentum,
      epsilon=self.epsilon,
      dtype=self.dtype,
      name="bn",
    )(x)


class Embed(nn.Module):
  """Token embeddings: int ids [B, T] -> [B, T, dim].

  Attributes:
    vocab_size: V; ids must lie in [0, V).
    dim: the embedding width.
    dtype: compute dtype of the output.
  """

  vocab_size: int
  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: Array) -> Array:
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(
        f"Embed takes integer token ids; got dtype {tokens.dtype}. Put it first, "
        "on the tokens, not after a layer that makes floats."
      )
    return nn.Embed(self.vocab_size, self.dim, dtype=self.dtype, name="embed")(tokens)


class PositionEmbedding(nn.Module):
  """Adds learned position embeddings [1, T, D] (normal(0.02), as ViT's) to tokens [B, T, D].

  T and D are taken from the input at initialisation; later inputs must have the same T.
  """

  @nn.compact
  def __call__(self, x_BTD: Array) -> Array:
    if x_BTD.ndim != 3:
      raise ValueError(
        f"PositionEmbedding takes tokens [B, T, D]; got shape {x_BTD.shape}. "
        "Turn a feature map into tokens first (ImageTokens)."
      )
    if self.has_variable("params", "embedding"):  # Flax's own shape error names no fix.
      _, T, D = self.get_variable("params", "embedding").shape
      if (T, D) != x_BTD.shape[1:]:
        raise ValueError(
          f"PositionEmbedding was initialised for {T} tokens of width {D}, but "
          f"got tokens {x_BTD.shape}; feed images of the size it was built for."
        )
    pos_1TD = self.param("embedding", nn.initializers.normal(0.02), (1, *x_BTD.shape[1:]))
    return x_BTD + pos_1TD.astype(x_BTD.dtype)


class RNN(nn.Module):
  """A StackedRNN that returns one array: the outputs [B, T, H'] or the last hidden state [B, H'].

  H' is `features`, or 2 * features when bidirectional. Padding (mask_BT) is handled as in
  jaxdl.nn.Recurrent: padded steps leave the state alone and give zero outputs.

  Attributes:
    features: H, units per direction.
    cell_type: "rnn", "lstm" or "gru".
    num_layers, bidirectional, dropout_rate: as in StackedRNN (dropout between layers).
    return_sequences: True: every step's output [B, T, H']; False: the last layer's final hidden
      state [B, H'] (the backward direction's is its state after step 0).
    dtype: compute dtype.
  """

  features: int
  cell_type: str = "lstm"
  num_layers: int = 1
  bidirectional: bool = False
  dropout_rate: float = 0.0
  return_sequences: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD: Array, *, mask_BT: Array | None = None, train: bool = False) -> Array:
    rnn = StackedRNN(
      self.features,
      self.cell_type,
      num_layers=self.num_layers,
      bidirectional=self.bidirectional,
      dropout_rate=self.dropout_rate,
      dtype=self.dtype,
      name="rnn",
    )
    y_BTH, carries = rnn(x_BTD.astype(self.dtype), mask_BT=mask_BT, train=train)
    return y_BTH if self.return_sequences else rnn.final_hidden(carries)


class AttentionPooling(nn.Module):
  """A learned query attends over time: [B, T, D] (+ mask [B, T]) -> [B, D].

      k_t = tanh(W x_t + b)  [dim],   s_t = k_t . q,   a = softmax over valid t of s,
      out = sum_t a_t x_t

  (Yang et al. 2016's attention pooling.) Padded steps (mask False) get weight exactly 0; an
  example with no valid step gives zeros. The query starts at zero, so at initialisation this is
  the mean over the valid steps. The weights a [B, T] are sown as
  ("intermediates", "weights_BT") for inspection.

  Attributes:
    dim: width of the keys and the query.
    dtype: compute dtype of the projection; the softmax is float32.
  """

  dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD: Array, mask_BT: Array | None = None) -> Array:
    if x_BTD.ndim != 3:
      raise ValueError(f"AttentionPooling takes [B, T, D]; got shape {x_BTD.shape}.")
    if mask_BT is not None and mask_BT.shape != x_BTD.shape[:2]:
      raise ValueError(
        f"AttentionPooling: mask_BT must have shape (batch, time) = "
        f"{x_BTD.shape[:2]} for inputs {x_BTD.shape}; got {mask_BT.shape}."
      )
    keys_BTA = jnp.tanh(nn.Dense(self.dim, dtype=self.dtype, name="proj")(x_BTD))
    query_A = self.param("query", nn.initializers.zeros_init(), (self.dim,))
    scores_BT = jnp.einsum(
      "bta,a->bt", keys_BTA, query_A.astype(keys_BTA.dtype), preferred_element_type=jnp.float32
    )
    if mask_BT is not None:
      mask_BT = mask_BT.astype(bool)
      # A finite fill keeps rows with no valid step free of inf - inf; they are zeroed below.
      scores_BT = jnp.where(mask_BT, scores_BT, jnp.finfo(jnp.float32).min)
    weights_BT = jax.nn.softmax(scores_BT, axis=-1)
    if mask_BT is not None:
      weights_BT = jnp.where(mask_BT, weights_BT, 0.0)
    self.sow("intermediates", "weights_BT", weights_BT)
    return jnp.einsum("bt,btd->bd", weights_BT.astype(x_BTD.dtype), x_BTD)


class Classifier(nn.Module):
  """The output layer: Dense(num_classes) on the last axis -> float32 logits [..., num_classes].

  The product is accumulated and returned in float32 whatever `dtype` is, so the loss never sees
  bfloat16 logits.

  Attributes:
    num_classes: K.
    dtype: compute dtype of the inputs to the product.
  """

  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim < 2:
      raise ValueError(
        f"Classifier takes features [B, ..., D]; got shape {x.shape}. Flatten or "
        "pool a feature map first (Flatten, GlobalAvgPool)."
      )
    logits = nn.Dense(
      self.num_classes, dtype=self.dtype, dot_general=F32_DOT_GENERAL, name="logits"
    )(x)
    return logits.astype(jnp.float32)
