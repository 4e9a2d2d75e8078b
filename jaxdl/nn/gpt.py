"""GPT: a decoder-only Transformer language model in GPT-2's layout (Radford et al. 2019).

Learned token and position embeddings -> dropout -> pre-LN blocks (causal self-attention, GELU MLP
of 4 x width) -> final LayerNorm -> LM head. The LM head is the token embedding transposed (tied,
no bias), as in GPT-2. Initialisation is GPT-2's: normal(0.02) weights, zero biases, and the
projections back into the residual stream scaled by 1 / sqrt(2 * num_layers).

Decoding protocol (shared with the recurrent LM, so one sampler serves both):

    variables = model.init(rng, tokens_B_Lmax, decode=True)  # creates "cache", does not advance it
    cache = variables["cache"]
    logits, upd = model.apply({"params": params, "cache": cache}, prompt_BP, decode=True,
                              mutable=["cache"])             # prefill: positions 0..P-1
    logits, upd = model.apply({"params": params, "cache": upd["cache"]}, next_B1, decode=True,
                              mutable=["cache"])             # then one token at a time

A fresh cache is all zeros, so zeros of the shapes from `jax.eval_shape` of that init make one
without initialising any weights. A cache built from L_max tokens holds L_max positions
(L_max <= block_size); decoding past them is the caller's job to avoid (jaxdl.sampling starts
a fresh cache from the recent context).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.kernels.dense import flat_apply
from jaxdl.nn import registry
from jaxdl.nn.attention import causal_mask
from jaxdl.nn.dropout import Dropout
from jaxdl.nn.layer_stack import apply_layers, transformer_layers
from jaxdl.nn.partitioning import EMBED, VOCAB
from jaxdl.nn.transformer import F32_DOT_GENERAL, tied_logits

Array = jax.Array

GPT_PRESETS: dict[str, dict[str, Any]] = {
  # 124,439,808 parameters (the GPT-2 "124M" checkpoint).
  "gpt2_small": dict(vocab_size=50257, block_size=1024, num_layers=12, num_heads=12, embed_dim=768),
  # 354,823,168 parameters (the GPT-2 "355M" checkpoint).
  "gpt2_medium": dict(
    vocab_size=50257, block_size=1024, num_layers=24, num_heads=16, embed_dim=1024
  ),
  # nanoGPT's config/train_shakespeare_char.py "baby GPT". Its train.py defaults to bias=False,
  # which the config keeps: 10,745,088 parameters, of which nanoGPT reports the 10.65M that are
  # not position embeddings.
  "gpt_char_baby": dict(
    vocab_size=65,
    block_size=256,
    num_layers=6,
    num_heads=6,
    embed_dim=384,
    dropout_rate=0.2,
    use_bias=False,
  ),
  # For CPU tests and smoke runs on character data: 0.8M parameters.
  "gpt_tiny": dict(vocab_size=65, block_size=128, num_layers=4, num_heads=4, embed_dim=128),
}


@registry.register("gpt", presets=GPT_PRESETS)
class GPT(nn.Module):
  """Decoder-only Transformer LM. tokens [B, T] -> next-token logits [B, T, V] (float32).

  Attributes:
    vocab_size: V.
    block_size: the most positions (learned position embeddings); longer inputs are refused.
    num_layers, num_heads, embed_dim: depth, heads, width D.
    mlp_dim: MLP hidden width; None = 4 * D.
    dropout_rate: dropout on the embeddings and on each residual branch.
    attention_dropout_rate: dropout on attention probabilities; None = dropout_rate (as nanoGPT).
    tie_embeddings: LM head = token embedding transposed (GPT-2); else a separate bias-free Dense.
    num_kv_heads: key/value heads for grouped-query attention; None = num_heads.
    use_bias: biases in the projections and LayerNorms (nanoGPT's `bias`).
    dtype, param_dtype: compute and parameter dtypes; the logits are float32 either way (the LM
      head multiplies in `dtype` and accumulates in float32).
    attention_impl: "plain", "jax" or "cudnn" (see `dot_product_attention`).
    remat: recompute the blocks' activations in the backward pass, a policy of
      jaxdl.nn.remat.REMAT_POLICIES ("none", "full", "dots_saveable", ...).
    scan_layers: one block compiled and scanned over the layers; parameters under "layers" with a
      leading layer axis instead of "block_0", "block_1", ... (jaxdl.nn.layer_stack).
  """

  vocab_size: int
  block_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int | None = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float | None = None
  tie_embeddings: bool = True
  num_kv_heads: int | None = None
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str = "plain"
  layer_norm_epsilon: float = 1e-5
  remat: str = "none"
  scan_layers: bool = False

  @nn.compact
  def __call__(self, tokens_BT: Array, *, train: bool = False, decode: bool = False) -> Array:
    """tokens [B, T] -> logits [B, T, V]. With decode=True, see the module docstring."""
    if tokens_BT.ndim != 2:
      raise ValueError(f"GPT expects tokens [B, T]; got shape {tokens_BT.shape}.")
    t = tokens_BT.shape[1]
    if t > self.block_size:
      raise ValueError(
        f"GPT: sequence length {t} exceeds block_size={self.block_size}; crop the "
        "input to the last block_size tokens or build the model with a larger "
        "block_size."
      )
    init = nn.initializers.normal(0.02)
    # GPT-2: "scale the weights of residual layers at initialization by 1/sqrt(N)", N = 2 * layers
    # residual branches (attention and MLP in each block).
    residual_init = nn.initializers.normal(0.02 / math.sqrt(2 * self.num_layers))
    embed = lambda num, names, name: nn.Embed(
      num,
      self.embed_dim,
      embedding_init=nn.with_logical_partitioning(init, names),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name=name,
    )
    wte = embed(self.vocab_size, (VOCAB, EMBED), "wte")
    wpe = embed(self.block_size, (None, EMBED), "wpe")

    start = 0
    mask = causal_mask(t)
    if decode:
      # The attention layers keep their own caches and causal masks; this counter places the
      # position embeddings of each new chunk after the tokens already decoded.
      mask = None
      initialized = self.has_variable("cache", "position")
      position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      if initialized:
        start = position.value
        position.value = start + t
    x_BTD = wte(tokens_BT) + wpe(start + jnp.arange(t))
    x_BTD = Dropout(self.dropout_rate)(x_BTD, deterministic=not train)

    attention_dropout = (
      self.dropout_rate if self.attention_dropout_rate is None else self.attention_dropout_rate
    )
    blocks = transformer_layers(
      self.num_layers,
      remat=self.remat,
      scan=self.scan_layers,
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim or 4 * self.embed_dim,
      num_kv_heads=self.num_kv_heads,
      pre_ln=True,
      activation="gelu_tanh",
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=attention_dropout,
      use_bias=self.use_bias,
      layer_norm_epsilon=self.layer_norm_epsilon,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=init,
      out_kernel_init=residual_init,
      attention_impl=self.attention_impl,
    )
    x_BTD = apply_layers(blocks, x_BTD, mask=mask, train=train, decode=decode)
    x_BTD = nn.LayerNorm(
      self.layer_norm_epsilon,
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="ln_f",
    )(x_BTD)
    # On [B*T, D] rather than [B, T, D]: the same numbers, and a faster backward on CPU (see
    # jaxdl.kernels.dense.flat_apply).
    if self.tie_embeddings:
      return flat_apply(lambda x_ND: tied_logits(x_ND[None], wte.embedding)[0], x_BTD)
    lm_head = nn.Dense(
      self.vocab_size,
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(init, (EMBED, VOCAB)),
      dot_general=F32_DOT_GENERAL,
      name="lm_head",
    )
    return flat_apply(lm_head, x_BTD)
