"""The Transformer block shared by GPT, BERT and the encoder-decoder Transformer.

One block is a self-attention sublayer, an optional cross-attention sublayer (for a decoder that
reads an encoder's output), and an MLP sublayer. `pre_ln` picks where the LayerNorms go:

    pre-LN  (GPT-2, most modern models):       x = x + drop(f(LN(x)))
    post-LN (BERT, "Attention is all you need"): x = LN(x + drop(f(x)))

Pre-LN stacks need a final LayerNorm after the last block, which the models add.
"""

import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.kernels.dense import flat_apply
from jaxdl.nn.attention import MultiHeadAttention
from jaxdl.nn.dropout import Dropout
from jaxdl.nn.partitioning import ACT_EMBED, ACT_MLP, BATCH, EMBED, LENGTH, MLP, constrain

Array = jax.Array
Initializer = nn.initializers.Initializer

# GELU: "gelu" is the exact erf form (BERT), "gelu_tanh" the tanh approximation (GPT-2).
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
  "gelu": lambda x: nn.gelu(x, approximate=False),
  "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
  "relu": nn.relu,
  "silu": nn.silu,
}


def get_activation(name: str) -> Callable[[Array], Array]:
  """The activation function called `name`, naming the choices when it is unknown."""
  if name not in ACTIVATIONS:
    raise ValueError(
      f"Unknown activation {name!r}; choose one of {', '.join(sorted(ACTIVATIONS))}."
    )
  return ACTIVATIONS[name]


def tied_logits(x_BTD: Array, embedding_VD: Array) -> Array:
  """x @ embedding^T -> float32 logits [B, T, V], multiplied in x's dtype, accumulated and returned
  in float32 (rounding logits to bfloat16 would blur the loss over a large vocabulary)."""
  return jnp.einsum(
    "btd,vd->btv", x_BTD, embedding_VD.astype(x_BTD.dtype), preferred_element_type=jnp.float32
  )


# For an untied output layer (nn.Dense(..., dot_general=F32_DOT_GENERAL)): float32 logits likewise.
F32_DOT_GENERAL = functools.partial(jax.lax.dot_general, preferred_element_type=jnp.float32)


def sinusoidal_positions(positions_T: Array, dim: int) -> Array:
  """Vaswani et al.'s position encodings, float32 [T, dim]:

      PE[p, 2i] = sin(p / 10000^(2i/dim)),   PE[p, 2i+1] = cos(p / 10000^(2i/dim)).

  `positions_T` may be traced (decoding at an offset).
  """
  if dim % 2:
    raise ValueError(f"Sinusoidal position encodings need an even width, got {dim}.")
  inv_freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles_TI = positions_T.astype(jnp.float32)[:, None] * inv_freq[None, :]
  # Interleave: sin at even feature indices, cos at odd ones, as in the paper.
  return jnp.stack([jnp.sin(angles_TI), jnp.cos(angles_TI)], axis=-1).reshape(-1, dim)


class Mlp(nn.Module):
  """Position-wise feed-forward network: Dense(mlp_dim) -> activation -> Dense(D)."""

  mlp_dim: int
  activation: str = "gelu"
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  out_kernel_init: Initializer | None = None

  @nn.compact
  def __call__(self, x_BTD: Array) -> Array:
    act = get_activation(self.activation)
    # The hidden units' biases go with them; the output bias (width D) stays whole.
    dense = lambda features, init, names, name: nn.Dense(
      features,
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(init, names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[1:])
      if names[1] == MLP
      else nn.initializers.zeros_init(),
      name=name,
    )
    out_init = self.kernel_init if self.out_kernel_init is None else self.out_kernel_init
    fc_in = dense(self.mlp_dim, self.kernel_init, (EMBED, MLP), "fc_in")
    fc_out = dense(x_BTD.shape[-1], out_init, (MLP, EMBED), "fc_out")
    hidden = lambda x_NF: constrain(act(x_NF), (BATCH, ACT_MLP))
    # On [B*T, D] rows rather than [B, T, D]: the same numbers, but XLA:CPU then contracts the
    # kernels' gradients over one axis and skips a transposed copy of the activation's gradient
    # (see jaxdl.kernels.dense.flat_apply).
    return flat_apply(lambda x_ND: fc_out(hidden(fc_in(x_ND))), x_BTD)


class TransformerBlock(nn.Module):
  """Self-attention [+ cross-attention] + MLP, each a residual sublayer with dropout and LayerNorm.

  Attributes:
    num_heads, num_kv_heads, head_dim: attention heads (see MultiHeadAttention).
    mlp_dim: hidden width of the MLP.
    pre_ln: LayerNorm before each sublayer (True) or after each residual sum (False).
    cross_attention: add a sublayer attending over an encoder's output (`encoded_BSD`).
    activation: MLP activation, a name in ACTIVATIONS ("gelu", "gelu_tanh", "relu", "silu").
    dropout_rate: dropout on each sublayer's output before the residual sum.
    attention_dropout_rate: dropout on the attention probabilities.
    use_bias: biases in the projections and the LayerNorms.
    layer_norm_epsilon: LayerNorm's epsilon.
    kernel_init: initializer of the projections into attention and the MLP.
    out_kernel_init: initializer of the projections back into the residual stream (attention out,
      MLP fc_out); None = kernel_init. GPT-2 scales these down by sqrt(2 * num_layers).
    attention_impl: see `dot_product_attention`.
  """

  num_heads: int
  mlp_dim: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  pre_ln: bool = True
  cross_attention: bool = False
  activation: str = "gelu"
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  use_bias: bool = True
  layer_norm_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  out_kernel_init: Initializer | None = None
  attention_impl: str = "plain"

  @nn.compact
  def __call__(
    self,
    x_BTD: Array,
    *,
    mask: Array | None = None,
    encoded_BSD: Array | None = None,
    cross_mask: Array | None = None,
    train: bool = False,
    decode: bool = False,
  ) -> Array:
    """x [B, T, D] -> [B, T, D].

    Args:
      mask: self-attention mask, broadcastable to [B, N, T, T] (see MultiHeadAttention for decode).
      encoded_BSD: the encoder's output; required exactly when `cross_attention`.
      cross_mask: cross-attention mask, broadcastable to [B, N, T, S] (usually the source padding).
      train: enables dropout (rng stream "dropout").
      decode: use the self-attention KV cache (see MultiHeadAttention).
    """
    if self.cross_attention != (encoded_BSD is not None):
      raise ValueError(
        "TransformerBlock: pass encoded_BSD exactly when cross_attention=True "
        f"(cross_attention={self.cross_attention}, encoded_BSD "
        f"{'given' if encoded_BSD is not None else 'missing'})."
      )
    attention = lambda name: MultiHeadAttention(
      self.num_heads,
      num_kv_heads=self.num_kv_heads,
      head_dim=self.head_dim,
      dropout_rate=self.attention_dropout_rate,
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=self.kernel_init,
      out_kernel_init=self.out_kernel_init,
      implementation=self.attention_impl,
      name=name,
    )

    def sublayer(x, fn, name):
      ln = nn.LayerNorm(
        self.layer_norm_epsilon,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"{name}_ln",
      )
      drop = lambda y: Dropout(self.dropout_rate)(y, deterministic=not train)
      if self.pre_ln:
        return x + drop(fn(ln(x)))
      return ln(x + drop(fn(x)))

    x_BTD = constrain(x_BTD, (BATCH, LENGTH, ACT_EMBED))
    x = sublayer(
      x_BTD, lambda y: attention("self_attn")(y, mask=mask, train=train, decode=decode), "self_attn"
    )
    if self.cross_attention:
      x = sublayer(
        x,
        lambda y: attention("cross_attn")(y, encoded_BSD, mask=cross_mask, train=train),
        "cross_attn",
      )
    mlp = Mlp(
      self.mlp_dim,
      self.activation,
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=self.kernel_init,
      out_kernel_init=self.out_kernel_init,
      name="mlp",
    )
    return sublayer(x, mlp, "mlp")
