"""Scaled dot-product attention, attention masks, and multi-head attention with a KV cache.

Shape letters: B batch, T query length, S key/value length, N query heads, K key/value heads
(K divides N: K == N is multi-head, 1 < K < N grouped-query, K == 1 multi-query attention),
G = N // K query heads per key/value head, H head dimension, D model width, L new tokens in a
decode step.

Masks are boolean and True means "may attend". They broadcast to [B, N, T, S]: `causal_mask` gives
[1, 1, T, S], `padding_mask` [B, 1, 1, S], and `combine_masks` ands any number of them.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# softmax and flat_apply are also imported from here (they lived in this file).
from jaxdl.kernels.dense import flat_apply
from jaxdl.kernels.softmax import softmax
from jaxdl.nn.dropout import applies, check_rate, is_traced
from jaxdl.nn.partitioning import (
  ACT_HEADS,
  ACT_KV,
  BATCH,
  EMBED,
  HEADS,
  KV,
  LENGTH,
  constrain,
)

Array = jax.Array
Initializer = nn.initializers.Initializer

IMPLEMENTATIONS = ("plain", "jax", "cudnn")


def causal_mask(q_len: int, kv_len: int | None = None, *, offset: int | Array = 0) -> Array:
  """Bool [1, 1, q_len, kv_len]: query i (at absolute position offset + i) sees keys 0..offset + i.

  `kv_len` defaults to `q_len`. `offset` may be a traced integer (the cache index when decoding).
  """
  kv_len = q_len if kv_len is None else kv_len
  q_pos_T1 = offset + jnp.arange(q_len, dtype=jnp.int32)[:, None]
  k_pos_1S = jnp.arange(kv_len, dtype=jnp.int32)[None, :]
  return (k_pos_1S <= q_pos_T1)[None, None]


def padding_mask(tokens_BS: Array, pad_id: int = 0) -> Array:
  """Bool [B, 1, 1, S]: attend to key s unless tokens[b, s] == pad_id."""
  if tokens_BS.ndim != 2:
    raise ValueError(f"padding_mask expects tokens [B, S]; got shape {tokens_BS.shape}.")
  return (tokens_BS != pad_id)[:, None, None, :]


def length_mask(lengths_B: Array, max_len: int) -> Array:
  """Bool [B, 1, 1, max_len]: attend to the first lengths[b] keys of example b."""
  if lengths_B.ndim != 1:
    raise ValueError(f"length_mask expects lengths [B]; got shape {lengths_B.shape}.")
  return (jnp.arange(max_len)[None, :] < lengths_B[:, None])[:, None, None, :]


def combine_masks(*masks: Array | None) -> Array | None:
  """Logical and of the masks that are not None (broadcasting); None if all are None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0].astype(bool)
  for m in masks[1:]:
    out = jnp.logical_and(out, m.astype(bool))
  return out


def _to_4d(x: Array) -> Array:
  return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _check_broadcastable(name: str, x: Array | None, shape_BNTS: tuple[int, ...]) -> None:
  if x is None:
    return
  try:
    ok = x.ndim <= 4 and jnp.broadcast_shapes(x.shape, shape_BNTS) == shape_BNTS
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(
      f"dot_product_attention: {name} of shape {x.shape} does not broadcast to "
      f"[B, N, T, S] = {list(shape_BNTS)}; e.g. causal_mask gives [1, 1, T, S] and "
      "padding_mask [B, 1, 1, S]."
    )


def _grouped(x_BNTS: Array, num_kv_heads: int, group: int) -> Array:
  """[B|1, N|1, T|1, S|1] -> [B|1, K|1, G|1, T|1, S|1], lining head n up with (n // G, n % G)."""
  x = _to_4d(x_BNTS)
  if x.shape[1] == 1:
    return x[:, :, None]
  return x.reshape(x.shape[0], num_kv_heads, group, *x.shape[2:])


def dot_product_attention(
  q_BTNH: Array,
  k_BSKH: Array,
  v_BSKH: Array,
  *,
  mask: Array | None = None,
  bias: Array | None = None,
  dropout_rate: float = 0.0,
  dropout_rng: Array | None = None,
  deterministic: bool = True,
  implementation: str = "plain",
  dtype: Any = None,
) -> Array:
  """softmax(Q K^T / sqrt(H) + bias, masked) V for every head. Returns [B, T, N, H].

  Args:
    q_BTNH: queries [B, T, N, H].
    k_BSKH, v_BSKH: keys and values [B, S, K, H]; K must divide N (grouped-query attention shares
      each key/value head among N // K query heads; no copies are made).
    mask: bool, broadcastable to [B, N, T, S]; True = attend.
    bias: float, broadcastable to [B, N, T, S], added to the scaled logits (keep it finite: a row
      whose bias is -inf everywhere is NaN; use `mask` to exclude keys).
    dropout_rate, dropout_rng, deterministic: dropout on the attention probabilities, applied when
      not `deterministic` and `dropout_rate` is > 0 or traced (see jaxdl.nn.dropout; a traced
      rate of 0 keeps every probability).
    implementation: "plain" (this file's einsums), "jax" (`jax.nn.dot_product_attention`, XLA's
      fused attention today) or "cudnn" (the same with cuDNN flash attention; GPU only, float16 or
      bfloat16, no dropout). All three give the same numbers up to rounding.
    dtype: compute dtype of q, k, v and of the result; default: their common dtype.

  The logits and the softmax are float32 whatever the inputs' dtype; the probabilities are cast
  back to `dtype` for the product with V (accumulated in float32).

  A query whose keys are all masked out (a fully masked row) gets zeros, not NaN and not the mean
  of V: e.g. padding queries in a padded batch, which the loss should ignore anyway.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
      f"Unknown attention implementation {implementation!r}; choose one of "
      f"{', '.join(map(repr, IMPLEMENTATIONS))}."
    )
  if q_BTNH.ndim != 4 or k_BSKH.ndim != 4 or v_BSKH.shape != k_BSKH.shape:
    raise ValueError(
      f"dot_product_attention expects q [B, T, N, H] and k, v [B, S, K, H] of equal "
      f"shapes; got q {q_BTNH.shape}, k {k_BSKH.shape}, v {v_BSKH.shape}."
    )
  b, t, n, h = q_BTNH.shape
  _, s, k, _ = k_BSKH.shape
  if k_BSKH.shape[0] != b or k_BSKH.shape[3] != h:
    raise ValueError(
      f"q {q_BTNH.shape} and k {k_BSKH.shape} must agree on batch (axis 0) and head "
      "dimension (axis 3)."
    )
  if n % k:
    raise ValueError(
      f"{n} query heads cannot share {k} key/value heads: the number of key/value "
      "heads must divide the number of query heads (e.g. num_kv_heads=1 for "
      f"multi-query attention, or a divisor of {n})."
    )
  _check_broadcastable("mask", mask, (b, n, t, s))
  _check_broadcastable("bias", bias, (b, n, t, s))
  if mask is not None and mask.dtype != jnp.bool_:
    raise ValueError(
      f"mask must be boolean (True = attend), got {mask.dtype}; pass additive "
      "float masks as `bias`."
    )
  check_rate(dropout_rate, "dot_product_attention")
  use_dropout = applies(dropout_rate, deterministic)
  if use_dropout and dropout_rng is None:
    raise ValueError("Attention dropout needs dropout_rng (or deterministic=True).")
  if use_dropout and implementation != "plain":
    traced = (
      " (a traced rate, as in a sweep over dropout rates, always applies it, even at 0)"
      if is_traced(dropout_rate)
      else ""
    )
    raise ValueError(
      f"implementation={implementation!r} has no attention dropout{traced}; use "
      "implementation='plain', or attention dropout rate 0 (or train=False)."
    )

  dtype = jnp.result_type(q_BTNH, k_BSKH, v_BSKH) if dtype is None else dtype
  q_BTNH, k_BSKH, v_BSKH = (x.astype(dtype) for x in (q_BTNH, k_BSKH, v_BSKH))
  if implementation != "plain":
    return _jax_attention(q_BTNH, k_BSKH, v_BSKH, mask, bias, implementation)

  g = n // k
  q_BTKGH = q_BTNH.reshape(b, t, k, g, h)
  logits_BKGTS = jnp.einsum(
    "btkgh,bskh->bkgts", q_BTKGH, k_BSKH, preferred_element_type=jnp.float32
  ) * (1.0 / math.sqrt(h))
  if bias is not None:
    logits_BKGTS = logits_BKGTS + _grouped(bias, k, g).astype(jnp.float32)
  if mask is not None:
    mask_BKGTS = _grouped(mask, k, g)
    # A finite fill keeps fully masked rows free of inf - inf; those rows are zeroed below.
    logits_BKGTS = jnp.where(mask_BKGTS, logits_BKGTS, jnp.finfo(jnp.float32).min)
  # jax.nn.softmax's values; on the CPU its derivative has no slow row reductions.
  probs_BKGTS = softmax(logits_BKGTS)
  if mask is not None:
    probs_BKGTS = probs_BKGTS * jnp.any(mask_BKGTS, axis=-1, keepdims=True)
  if use_dropout:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BKGTS.shape)
    probs_BKGTS = jnp.where(keep, probs_BKGTS / (1.0 - dropout_rate), 0.0)
  out_BTKGH = jnp.einsum(
    "bkgts,bskh->btkgh", probs_BKGTS.astype(dtype), v_BSKH, preferred_element_type=jnp.float32
  )
  return out_BTKGH.reshape(b, t, n, h).astype(dtype)


def _jax_attention(q_BTNH, k_BSKH, v_BSKH, mask, bias, implementation):
  """jax.nn.dot_product_attention, with fully masked rows zeroed as in the plain version."""
  if implementation == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(
      f"implementation='cudnn' needs a GPU, but JAX's backend is "
      f"{jax.default_backend()!r}; use 'plain' or 'jax'."
    )
  mask = None if mask is None else _to_4d(mask)
  if bias is not None:
    # XLA adds the bias to float32 logits; cuDNN wants it in the inputs' dtype.
    bias = _to_4d(bias).astype(jnp.float32 if implementation == "jax" else q_BTNH.dtype)
  out_BTNH = jax.nn.dot_product_attention(
    q_BTNH,
    k_BSKH,
    v_BSKH,
    bias=bias,
    mask=mask,
    implementation=None if implementation == "jax" else "cudnn",
  )
  if mask is not None:
    any_BNT = jnp.any(mask, axis=-1)
    out_BTNH = out_BTNH * jnp.transpose(any_BNT, (0, 2, 1))[..., None].astype(out_BTNH.dtype)
  return out_BTNH


class MultiHeadAttention(nn.Module):
  """Multi-head (grouped-query, multi-query) attention with separate q, k, v, out projections.

  Parameters: query kernel [D, N, H], key and value kernels [D_kv, K, H], out kernel [N, H, F]
  (+ biases), so standard multi-head attention has 4 (D*D + D) parameters, as in GPT-2 and BERT.

  Attributes:
    num_heads: N.
    num_kv_heads: K; None = N (multi-head), 1 = multi-query; must divide N.
    head_dim: H; None = D // N.
    out_features: F; None = D (the query input's width).
    dropout_rate: dropout on the attention probabilities (during training).
    use_bias: biases in the four projections.
    dtype, param_dtype: compute and parameter dtypes (the softmax is float32 regardless).
    kernel_init: q, k, v kernels' initializer; out_kernel_init: the out kernel's (None = same).
    implementation: see `dot_product_attention`.

  Decoding with a KV cache (`decode=True`, self-attention only) keeps, in the "cache" collection,
  `cached_key` and `cached_value` [B, L_max, K, H] and `cache_index` (int32). `init(...,
  decode=True)` creates them with L_max = the input length and does not advance; each later
  `apply(..., decode=True, mutable=["cache"])` writes its L new tokens at cache_index, lets them
  attend causally to everything cached (positions <= their own), and advances cache_index by L.
  decode=True is always causal. Writing past L_max is the caller's job to avoid: the write would be
  clamped to the end of the cache (a chunk longer than L_max is refused with a ValueError).
  """

  num_heads: int
  num_kv_heads: int | None = None
  head_dim: int | None = None
  out_features: int | None = None
  dropout_rate: float = 0.0
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  out_kernel_init: Initializer | None = None
  implementation: str = "plain"

  @nn.compact
  def __call__(
    self,
    x_q_BTD: Array,
    x_kv_BSD: Array | None = None,
    *,
    mask: Array | None = None,
    train: bool = False,
    decode: bool = False,
  ) -> Array:
    """Attention of x_q over x_kv (over x_q itself when x_kv is None). Returns [B, T, F].

    `mask`: bool, broadcastable to [B, N, T, S]; when decoding, to [B, N, L, L_max] (it is combined
    with the causal mask over the cache).
    """
    d = x_q_BTD.shape[-1]
    n = self.num_heads
    k = n if self.num_kv_heads is None else self.num_kv_heads
    if self.head_dim is None and d % n:
      raise ValueError(
        f"MultiHeadAttention: width {d} is not divisible by num_heads={n}; pick "
        "num_heads dividing it or set head_dim."
      )
    if n % k:
      raise ValueError(
        f"MultiHeadAttention: num_kv_heads={k} must divide num_heads={n} (1 for "
        "multi-query attention, num_heads or None for multi-head)."
      )
    h = d // n if self.head_dim is None else self.head_dim
    if decode and x_kv_BSD is not None:
      raise ValueError(
        "MultiHeadAttention: decode=True (the KV cache) is for self-attention only; "
        "call cross-attention with decode=False."
      )
    x_kv_BSD = x_q_BTD if x_kv_BSD is None else x_kv_BSD

    dense = lambda features, name: nn.DenseGeneral(
      features,
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(self.kernel_init, (EMBED, HEADS, KV)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (HEADS, KV)),
      name=name,
    )
    heads = lambda x: constrain(x, (BATCH, LENGTH, ACT_HEADS, ACT_KV))
    q_BTNH = heads(flat_apply(dense((n, h), "query"), x_q_BTD))
    k_BSKH = heads(flat_apply(dense((k, h), "key"), x_kv_BSD))
    v_BSKH = heads(flat_apply(dense((k, h), "value"), x_kv_BSD))

    if decode:
      k_BSKH, v_BSKH, mask = self._update_cache(k_BSKH, v_BSKH, mask)

    dropout_rng = None
    if applies(self.dropout_rate, not train):
      dropout_rng = self.make_rng("dropout")
    out_BTNH = dot_product_attention(
      q_BTNH,
      k_BSKH,
      v_BSKH,
      mask=mask,
      dropout_rate=self.dropout_rate,
      dropout_rng=dropout_rng,
      deterministic=not train,
      implementation=self.implementation,
      dtype=self.dtype,
    )
    out_init = self.kernel_init if self.out_kernel_init is None else self.out_kernel_init
    out = nn.DenseGeneral(
      d if self.out_features is None else self.out_features,
      axis=(-2, -1),
      use_bias=self.use_bias,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.with_logical_partitioning(out_init, (HEADS, KV, EMBED)),
      name="out",
    )
    return flat_apply(out, heads(out_BTNH), feature_axes=2)

  def _update_cache(self, k_BLKH, v_BLKH, mask):
    """Writes the new keys/values into the cache; returns the whole cache and its causal mask."""
    initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, k_BLKH.shape, k_BLKH.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, v_BLKH.shape, v_BLKH.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    length = k_BLKH.shape[1]
    if not initialized:
      # init(..., decode=True): the cache is only being created; attend causally within the input.
      return k_BLKH, v_BLKH, combine_masks(mask, causal_mask(length))
    b, max_length, num_kv, h = cached_key.value.shape
    if (b, num_kv, h) != (k_BLKH.shape[0], k_BLKH.shape[2], k_BLKH.shape[3]):
      raise ValueError(
        f"Decoding a batch of keys {k_BLKH.shape} into a cache of shape "
        f"{cached_key.value.shape}: re-initialise the cache for this batch size."
      )
    if length > max_length:
      raise ValueError(
        f"Decoding {length} tokens at once into a KV cache of {max_length} "
        "positions; initialise the cache (init with decode=True) with a longer "
        "input."
      )
    index = cache_index.value
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k_BLKH, (0, index, 0, 0))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v_BLKH, (0, index, 0, 0))
    cache_index.value = index + length
    mask = combine_masks(mask, causal_mask(length, max_length, offset=index))
    return cached_key.value, cached_value.value, mask
