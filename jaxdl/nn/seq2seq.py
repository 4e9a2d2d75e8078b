"""The encoder-decoder Transformer of "Attention is all you need" (Vaswani et al. 2017).

    src [B, S] -> embed * sqrt(D) + sinusoids -> dropout -> encoder blocks -> encoded [B, S, D]
    tgt_in [B, T] -> embed * sqrt(D) + sinusoids -> dropout -> decoder blocks (causal
        self-attention, cross-attention over `encoded`) -> embedding^T -> logits [B, T, V]

One embedding matrix serves the source, the target and the pre-softmax projection (the paper's
shared source/target vocabulary). Blocks are post-LN with a ReLU MLP by default, as in the paper;
with pre_ln=True the encoder and decoder each end in a LayerNorm. Source padding (pad_id) is masked
out of encoder self-attention and cross-attention; the decoder is causal, so padding at the end of
a target cannot affect the real positions before it.

`greedy_decode` (and the `generate` method, its bound form) decodes with a KV cache on the
decoder's self-attention, running the encoder once.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdl.nn import registry
from jaxdl.nn.attention import causal_mask, padding_mask
from jaxdl.nn.dropout import Dropout
from jaxdl.nn.layer_stack import apply_layers, transformer_layers
from jaxdl.nn.partitioning import EMBED, VOCAB
from jaxdl.nn.transformer import sinusoidal_positions, tied_logits

Array = jax.Array
Initializer = nn.initializers.Initializer

SEQ2SEQ_PRESETS: dict[str, dict[str, Any]] = {
  # The paper's base model on WMT'14 English-German: 63.1M parameters (the paper says 65M).
  "transformer_base": dict(
    vocab_size=37000,
    num_layers=6,
    num_heads=8,
    embed_dim=512,
    mlp_dim=2048,
    dropout_rate=0.1,
    max_length=512,
  ),
  # For CPU tests and toy tasks (reversal, sorting) on small vocabularies.
  "transformer_tiny": dict(
    vocab_size=64,
    num_layers=2,
    num_heads=4,
    embed_dim=64,
    mlp_dim=128,
    dropout_rate=0.1,
    max_length=64,
  ),
}


class _Stack(nn.Module):
  """num_layers blocks after sinusoidal positions and dropout; a final LayerNorm when pre-LN."""

  num_layers: int
  num_heads: int
  mlp_dim: int
  cross_attention: bool
  num_kv_heads: int | None = None
  pre_ln: bool = False
  activation: str = "relu"
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.glorot_uniform()
  attention_impl: str = "plain"
  remat: str = "none"
  scan_layers: bool = False

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
    t, d = x_BTD.shape[1:]
    start = 0
    if decode:
      # As in GPT: the attention caches mask causally; this counter gives the new chunk's positions.
      initialized = self.has_variable("cache", "position")
      position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      if initialized:
        start = position.value
        position.value = start + t
    x_BTD = x_BTD + sinusoidal_positions(start + jnp.arange(t), d).astype(x_BTD.dtype)
    x_BTD = Dropout(self.dropout_rate)(x_BTD, deterministic=not train)
    blocks = transformer_layers(
      self.num_layers,
      remat=self.remat,
      scan=self.scan_layers,
      num_heads=self.num_heads,
      mlp_dim=self.mlp_dim,
      num_kv_heads=self.num_kv_heads,
      pre_ln=self.pre_ln,
      cross_attention=self.cross_attention,
      activation=self.activation,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      layer_norm_epsilon=self.layer_norm_epsilon,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=self.kernel_init,
      attention_impl=self.attention_impl,
    )
    x_BTD = apply_layers(
      blocks,
      x_BTD,
      mask=mask,
      encoded_BSD=encoded_BSD,
      cross_mask=cross_mask,
      train=train,
      decode=decode,
    )
    if self.pre_ln:
      x_BTD = nn.LayerNorm(
        self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="ln_f"
      )(x_BTD)
    return x_BTD


@registry.register("transformer", presets=SEQ2SEQ_PRESETS)
class Seq2SeqTransformer(nn.Module):
  """Encoder-decoder Transformer. (src [B, S], tgt_in [B, T]) -> logits [B, T, V] (float32).

  Attributes:
    vocab_size: V, shared by source and target.
    num_layers: blocks in the encoder, and as many in the decoder.
    num_heads, embed_dim (D), mlp_dim: attention heads, width, MLP hidden width.
    dropout_rate: dropout on the embeddings and each residual branch (the paper's P_drop).
    attention_dropout_rate: dropout on attention probabilities (the paper has none).
    max_length: the longest source or target accepted.
    pre_ln: pre-LN blocks (+ final LayerNorms) instead of the paper's post-LN.
    pad_id: the padding token; masked out of the source.
    activation: MLP activation ("relu" in the paper).
    num_kv_heads, dtype, param_dtype, attention_impl, layer_norm_epsilon, remat, scan_layers: as
      in GPT.

  Initialisation: Glorot-uniform projections, zero biases, and embeddings normal(D^-1/2), so that
  the embeddings scaled by sqrt(D) have unit variance (tensor2tensor's choice).
  """

  vocab_size: int
  num_layers: int = 6
  num_heads: int = 8
  embed_dim: int = 512
  mlp_dim: int = 2048
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  max_length: int = 512
  pre_ln: bool = False
  pad_id: int = 0
  activation: str = "relu"
  num_kv_heads: int | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention_impl: str = "plain"
  layer_norm_epsilon: float = 1e-6
  remat: str = "none"
  scan_layers: bool = False

  def setup(self):
    self.embed = nn.Embed(
      self.vocab_size,
      self.embed_dim,
      embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(self.embed_dim**-0.5), (VOCAB, EMBED)
      ),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    stack = lambda cross: _Stack(
      self.num_layers,
      self.num_heads,
      self.mlp_dim,
      cross_attention=cross,
      num_kv_heads=self.num_kv_heads,
      pre_ln=self.pre_ln,
      activation=self.activation,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      layer_norm_epsilon=self.layer_norm_epsilon,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      attention_impl=self.attention_impl,
      remat=self.remat,
      scan_layers=self.scan_layers,
    )
    self.encoder = stack(False)
    self.decoder = stack(True)

  def _check_tokens(self, name: str, tokens: Array) -> None:
    if tokens.ndim != 2:
      raise ValueError(f"Seq2SeqTransformer expects {name} [B, length]; got shape {tokens.shape}.")
    if tokens.shape[1] > self.max_length:
      raise ValueError(
        f"Seq2SeqTransformer: {name} length {tokens.shape[1]} exceeds "
        f"max_length={self.max_length}; truncate it or raise max_length."
      )

  def _embed(self, tokens_BT: Array) -> Array:
    return self.embed(tokens_BT) * jnp.asarray(math.sqrt(self.embed_dim), self.dtype)

  def encode(self, src_BS: Array, *, train: bool = False) -> tuple[Array, Array]:
    """src [B, S] -> (encoded [B, S, D], source padding mask [B, 1, 1, S])."""
    self._check_tokens("src", src_BS)
    src_mask = padding_mask(src_BS, self.pad_id)
    return self.encoder(self._embed(src_BS), mask=src_mask, train=train), src_mask

  def decode(
    self,
    encoded_BSD: Array,
    src_mask: Array,
    tgt_in_BT: Array,
    *,
    train: bool = False,
    decode: bool = False,
  ) -> Array:
    """Decoder logits [B, T, V] (float32) for target inputs [B, T] given `encode`'s outputs.

    decode=True uses the self-attention KV cache, with GPT's protocol: `init`/`apply` with
    mutable=["cache"] on a [B, L_max] input creates it; each later call appends its T tokens.
    """
    self._check_tokens("tgt_in", tgt_in_BT)
    mask = None if decode else causal_mask(tgt_in_BT.shape[1])
    y_BTD = self.decoder(
      self._embed(tgt_in_BT),
      mask=mask,
      encoded_BSD=encoded_BSD,
      cross_mask=src_mask,
      train=train,
      decode=decode,
    )
    return tied_logits(y_BTD, self.embed.embedding)

  def __call__(self, src_BS: Array, tgt_in_BT: Array, *, train: bool = False) -> Array:
    """Teacher-forced logits [B, T, V]: position t predicts tgt_in[:, t + 1]."""
    encoded_BSD, src_mask = self.encode(src_BS, train=train)
    return self.decode(encoded_BSD, src_mask, tgt_in_BT, train=train)

  def generate(self, src_BS: Array, *, max_length: int, bos_id: int, eos_id: int) -> Array:
    """`greedy_decode` with this module's parameters: tokens [B, max_length], pad after EOS."""
    return greedy_decode(
      self.clone(parent=None),
      self.variables["params"],
      src_BS,
      bos_id=bos_id,
      eos_id=eos_id,
      max_len=max_length,
    )


def greedy_decode(
  model: Seq2SeqTransformer,
  params: Any,
  src_BS: Array,
  *,
  bos_id: int,
  eos_id: int,
  max_len: int,
  use_cache: bool = True,
) -> Array:
  """Greedy decoding: tokens [B, max_len], the first being the prediction after BOS.

  Each example's tokens after its first EOS are model.pad_id (the EOS itself is kept), so the
  result lines up with targets tgt[:, 1:] of the form "w1 .. wn EOS pad ..". Pure and jittable
  (max_len, bos_id, eos_id static). With use_cache=False every step re-runs the decoder on the
  whole prefix: slower, and the reference that the cached path is tested against.
  """
  if max_len > model.max_length:
    raise ValueError(
      f"greedy_decode: max_len={max_len} exceeds the model's max_length={model.max_length}."
    )
  variables = {"params": params}
  encoded_BSD, src_mask = model.apply(variables, src_BS, method=Seq2SeqTransformer.encode)
  b = src_BS.shape[0]
  done_B = jnp.zeros((b,), bool)

  def emit(next_B, done_B):
    out_B = jnp.where(done_B, model.pad_id, next_B)
    return out_B, done_B | (next_B == eos_id)

  if use_cache:

    def make_cache(encoded_BSD, src_mask):
      _, state = model.apply(
        variables,
        encoded_BSD,
        src_mask,
        jnp.zeros((b, max_len), jnp.int32),
        decode=True,
        method=Seq2SeqTransformer.decode,
        mutable=["cache"],
      )
      return state["cache"]

    # A fresh cache is all zeros (index 0, nothing stored), so its shapes are all we need.
    cache = jax.tree.map(
      lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(make_cache, encoded_BSD, src_mask)
    )

    def step(carry, _):
      token_B, cache, done_B = carry
      logits_B1V, state = model.apply(
        {"params": params, "cache": cache},
        encoded_BSD,
        src_mask,
        token_B[:, None],
        decode=True,
        method=Seq2SeqTransformer.decode,
        mutable=["cache"],
      )
      next_B = jnp.argmax(logits_B1V[:, 0], axis=-1).astype(jnp.int32)
      out_B, done_B = emit(next_B, done_B)
      return (next_B, state["cache"], done_B), out_B

    start_B = jnp.full((b,), bos_id, jnp.int32)
    _, out_LB = jax.lax.scan(step, (start_B, cache, done_B), None, length=max_len)
  else:

    def step(carry, i):
      tgt_BL, done_B = carry
      logits_BLV = model.apply(
        variables, encoded_BSD, src_mask, tgt_BL, method=Seq2SeqTransformer.decode
      )
      next_B = jnp.argmax(logits_BLV[:, i], axis=-1).astype(jnp.int32)
      out_B, done_B = emit(next_B, done_B)
      # The causal decoder ignores positions > i, so the buffer's tail can hold anything.
      tgt_BL = jnp.where(jnp.arange(max_len)[None, :] == i + 1, next_B[:, None], tgt_BL)
      return (tgt_BL, done_B), out_B

    tgt_BL = jnp.full((b, max_len), model.pad_id, jnp.int32).at[:, 0].set(bos_id)
    _, out_LB = jax.lax.scan(step, (tgt_BL, done_B), jnp.arange(max_len))
  return out_LB.T
