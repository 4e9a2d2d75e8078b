"""Attention: dot_product_attention against the numpy formula, masks, dtypes, dropout, the
MultiHeadAttention module and its KV cache. Its kernels (the CPU softmax, flat_apply) are tested in
tests/test_kernels_sequence.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.nn.attention import (
  MultiHeadAttention,
  causal_mask,
  combine_masks,
  dot_product_attention,
  length_mask,
  padding_mask,
)

B, T, N, H = 2, 5, 4, 8

# Jitted, since one compiled program is much faster on CPU than dispatching every op eagerly.
attention = jax.jit(
  dot_product_attention,
  static_argnames=("dropout_rate", "deterministic", "implementation", "dtype"),
)


def _np_attention(q, k, v, mask=None, bias=None):
  """softmax(q k^T / sqrt(H) + bias, masked) v in float64; key/value heads repeated for GQA.

  Fully masked rows are defined as zeros.
  """
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  g = q.shape[2] // k.shape[2]
  k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  m = (
    np.ones(logits.shape, bool) if mask is None else np.broadcast_to(np.asarray(mask), logits.shape)
  )
  logits = np.where(m, logits, -np.inf)
  row_max = np.max(logits, axis=-1, keepdims=True)
  e = np.where(m, np.exp(logits - np.where(np.isfinite(row_max), row_max, 0.0)), 0.0)
  denom = e.sum(-1, keepdims=True)
  probs = np.divide(e, denom, out=np.zeros_like(e), where=denom > 0)
  return np.einsum("bnts,bsnh->btnh", probs, v)


def _normal(shape, seed=0):
  """Test inputs from numpy: no per-shape compilation of JAX's random ops."""
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _qkv(num_kv_heads=N, s=T, seed=0):
  return (
    _normal((B, T, N, H), seed),
    _normal((B, s, num_kv_heads, H), seed + 100),
    _normal((B, s, num_kv_heads, H), seed + 200),
  )


_TOKENS = jnp.array([[5, 3, 7, 0, 0], [2, 9, 4, 6, 1]])  # Example 0 has two pad tokens.
_BIAS = _normal((1, N, T, T), 7) * 2.0
MASKS = {
  "none": (None, None),
  "causal": (causal_mask(T), None),
  "padding": (padding_mask(_TOKENS), None),
  "combined": (combine_masks(causal_mask(T), padding_mask(_TOKENS)), None),
  "bias": (None, _BIAS),
  "bias_and_mask": (padding_mask(_TOKENS), _BIAS),
}


@pytest.mark.parametrize("num_kv_heads", [N, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("kind", list(MASKS))
@pytest.mark.parametrize("implementation", ["plain", "jax"])
def test_matches_numpy_formula(kind, num_kv_heads, implementation):
  mask, bias = MASKS[kind]
  q, k, v = _qkv(num_kv_heads)
  out = dot_product_attention(q, k, v, mask=mask, bias=bias, implementation=implementation)
  assert out.shape == (B, T, N, H) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _np_attention(q, k, v, mask, bias), rtol=1e-5, atol=1e-5)


def test_jax_implementation_equals_plain_with_cross_lengths_and_gqa():
  q, k, v = _qkv(2, s=7)
  mask = combine_masks(causal_mask(T, 7, offset=2), length_mask(jnp.array([6, 7]), 7))
  plain = attention(q, k, v, mask=mask)
  fused = attention(q, k, v, mask=mask, implementation="jax")
  np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5)


def test_softmax_is_stable_for_huge_logits():
  q, k, v = _qkv()
  out = attention(q * 1e3, k * 1e3, v)  # logits ~ 1e6: exp would overflow unshifted
  assert np.isfinite(np.asarray(out)).all()
  np.testing.assert_allclose(out, _np_attention(q * 1e3, k * 1e3, v), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("implementation", ["plain", "jax"])
def test_fully_masked_rows_are_zero_not_nan(implementation):
  q, k, v = _qkv()
  mask = np.ones((B, 1, T, T), bool)
  mask[0, :, 2, :] = False  # Query 2 of example 0 may attend to nothing.
  mask = jnp.asarray(mask)
  out = attention(q, k, v, mask=mask, implementation=implementation)
  np.testing.assert_array_equal(out[0, 2], 0.0)
  np.testing.assert_allclose(out, _np_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)
  # Gradients through such rows are finite too.
  grads = jax.grad(lambda q: jnp.sum(attention(q, k, v, mask=mask, implementation=implementation)))(
    q
  )
  assert np.isfinite(np.asarray(grads)).all()
  np.testing.assert_array_equal(grads[0, 2], 0.0)


def _all_eqns(jaxpr):
  """The equations of a jaxpr and of the jaxprs inside its calls (e.g. a custom_jvp's), in order."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)  # ClosedJaxpr -> Jaxpr
      if hasattr(inner, "eqns"):
        yield from _all_eqns(inner)


def test_bfloat16_inputs_softmax_in_float32():
  q, k, v = _qkv(2)
  mask = MASKS["combined"][0]
  q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
  out16 = attention(q16, k16, v16, mask=mask)
  assert out16.dtype == jnp.bfloat16
  # Reference: the float32 computation on the same (bf16-rounded) inputs; bf16 output rounding
  # is ~2^-8 relative.
  expected = _np_attention(
    q16.astype(jnp.float32), k16.astype(jnp.float32), v16.astype(jnp.float32), mask
  )
  np.testing.assert_allclose(np.asarray(out16, np.float32), expected, rtol=2e-2, atol=2e-2)
  # Structure: the softmax's exp and the logits' matmul run in float32.
  jaxpr = jax.make_jaxpr(lambda q, k, v: dot_product_attention(q, k, v, mask=mask))(q16, k16, v16)
  eqns = list(_all_eqns(jaxpr.jaxpr))
  exps = [e for e in eqns if e.primitive.name == "exp"]
  assert exps and all(e.invars[0].aval.dtype == jnp.float32 for e in exps)
  dots = [e for e in eqns if e.primitive.name == "dot_general"]
  assert dots[0].outvars[0].aval.dtype == jnp.float32  # the logits


def test_dtype_argument_casts_inputs_and_output():
  q, k, v = _qkv()
  out = attention(q, k, v, dtype=jnp.bfloat16)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _np_attention(q, k, v), atol=3e-2)


def test_attention_dropout():
  """With one-hot values (v = I), the output rows ARE the probabilities, so dropout is visible."""
  q, _, _ = _qkv(seed=1)
  k = _normal((B, T, N, H), 3)
  v = jnp.asarray(np.broadcast_to(np.eye(T, H, dtype=np.float32)[None, :, None], (B, T, N, H)))
  probs = np.asarray(attention(q, k, v))[..., :T]  # [B, T, N, S]
  rate = 0.5
  rng = jax.random.key(42)
  drop = lambda rng, det=False: np.asarray(
    attention(q, k, v, dropout_rate=rate, dropout_rng=rng, deterministic=det)
  )[..., :T]
  out = drop(rng)
  np.testing.assert_array_equal(out, drop(rng))  # Same rng, same mask.
  assert not np.array_equal(out, drop(jax.random.key(43)))
  kept = out != 0
  assert 0.3 < kept.mean() < 0.7
  # Kept probabilities are scaled by 1 / (1 - rate), so that the expectation is unchanged.
  np.testing.assert_allclose(out[kept], probs[kept] / (1 - rate), rtol=1e-5)
  np.testing.assert_array_equal(drop(rng, det=True), probs)  # Off when deterministic.


def test_bad_inputs_raise_clear_errors():
  q, k, v = _qkv(3 if N % 3 else 5)
  with pytest.raises(ValueError, match="must divide the number of query heads"):
    dot_product_attention(q, k, v)
  q, k, v = _qkv()
  with pytest.raises(ValueError, match="Unknown attention implementation 'flash'.*'plain'"):
    dot_product_attention(q, k, v, implementation="flash")
  with pytest.raises(ValueError, match="no attention dropout"):
    dot_product_attention(
      q,
      k,
      v,
      implementation="jax",
      dropout_rate=0.1,
      dropout_rng=jax.random.key(0),
      deterministic=False,
    )
  # Dropout off (deterministic) is fine with the fused implementation.
  attention(q, k, v, implementation="jax", dropout_rate=0.1, deterministic=True)
  with pytest.raises(ValueError, match="needs dropout_rng"):
    dot_product_attention(q, k, v, dropout_rate=0.1, deterministic=False)
  with pytest.raises(ValueError, match="must be boolean"):
    dot_product_attention(q, k, v, mask=causal_mask(T).astype(jnp.float32))
  with pytest.raises(ValueError, match="does not broadcast"):
    dot_product_attention(q, k, v, mask=causal_mask(T + 1))
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match="needs a GPU"):
      dot_product_attention(q, k, v, implementation="cudnn")


def test_mask_helpers():
  np.testing.assert_array_equal(causal_mask(4)[0, 0], np.tril(np.ones((4, 4), bool)))
  # Queries at absolute positions 3..5 over 6 cached keys: query i sees keys 0..3+i.
  np.testing.assert_array_equal(
    causal_mask(3, 6, offset=3)[0, 0], np.tril(np.ones((3, 6), bool), k=3)
  )
  assert causal_mask(3, 6).shape == (1, 1, 3, 6)
  tokens = jnp.array([[4, 0, 5], [0, 0, 1]])
  np.testing.assert_array_equal(padding_mask(tokens)[:, 0, 0], [[1, 0, 1], [0, 0, 1]])
  np.testing.assert_array_equal(padding_mask(tokens, pad_id=4)[:, 0, 0], [[0, 1, 1], [1, 1, 1]])
  np.testing.assert_array_equal(length_mask(jnp.array([2, 0]), 3)[:, 0, 0], [[1, 1, 0], [0, 0, 0]])
  assert combine_masks(None, None) is None
  m = combine_masks(None, causal_mask(3), padding_mask(jnp.array([[1, 1, 0]])))
  np.testing.assert_array_equal(m[0, 0], np.tril(np.ones((3, 3), bool)) & [True, True, False])
  with pytest.raises(ValueError, match=r"tokens \[B, S\]"):
    padding_mask(jnp.zeros((3,), jnp.int32))


# --- MultiHeadAttention -----------------------------------------------------------------------

D = 16


def _mha_reference(p, x_q, x_kv, mask=None):
  """The module's forward from its parameters, in numpy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  proj = lambda x, name: np.einsum("btd,dnh->btnh", x, p[name]["kernel"]) + p[name]["bias"]
  x_q, x_kv = np.asarray(x_q, np.float64), np.asarray(x_kv, np.float64)
  out = _np_attention(proj(x_q, "query"), proj(x_kv, "key"), proj(x_kv, "value"), mask)
  return np.einsum("btnh,nhf->btf", out, p["out"]["kernel"]) + p["out"]["bias"]


def _random_biases(params, seed=5):
  """Non-zero biases, so that the tests also check where they are added."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda x: (
      np.asarray(x) + 0.1 * rng.standard_normal(x.shape, np.float32)
      if x.ndim <= 2
      else np.asarray(x)
    ),
    params,
  )


@pytest.mark.parametrize("num_kv_heads", [None, 2, 1])
def test_mha_parameters_and_forward(num_kv_heads):
  mha = MultiHeadAttention(num_heads=4, num_kv_heads=num_kv_heads)
  x = _normal((B, T, D))
  params = _random_biases(nn.unbox(jax.jit(mha.init)(jax.random.key(1), x))["params"])
  k = 4 if num_kv_heads is None else num_kv_heads
  h = D // 4
  assert jax.tree.map(jnp.shape, params) == {
    "query": {"kernel": (D, 4, h), "bias": (4, h)},
    "key": {"kernel": (D, k, h), "bias": (k, h)},
    "value": {"kernel": (D, k, h), "bias": (k, h)},
    "out": {"kernel": (4, h, D), "bias": (D,)},
  }
  if num_kv_heads is None:  # Standard MHA: q, k, v, out each D*D + D.
    assert sum(p.size for p in jax.tree.leaves(params)) == 4 * (D * D + D)
  mask = combine_masks(causal_mask(T), padding_mask(_TOKENS))
  out = jax.jit(mha.apply)({"params": params}, x, mask=mask)
  np.testing.assert_allclose(out, _mha_reference(params, x, x, mask), rtol=1e-5, atol=1e-5)


def test_mha_cross_attention_and_options():
  mha = MultiHeadAttention(num_heads=2, head_dim=3, out_features=7)
  x_q = _normal((B, T, D))
  x_kv = _normal((B, 9, 12), 1)  # Other length and width.
  variables = nn.unbox(jax.jit(mha.init)(jax.random.key(2), x_q, x_kv))
  params = _random_biases(variables["params"])
  assert params["key"]["kernel"].shape == (12, 2, 3) and params["out"]["kernel"].shape == (2, 3, 7)
  mask = length_mask(jnp.array([4, 9]), 9)
  out = jax.jit(mha.apply)({"params": params}, x_q, x_kv, mask=mask)
  assert out.shape == (B, T, 7)
  np.testing.assert_allclose(out, _mha_reference(params, x_q, x_kv, mask), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
    jax.eval_shape(MultiHeadAttention(num_heads=4, num_kv_heads=3).init, jax.random.key(0), x_q)
  with pytest.raises(ValueError, match="not divisible by num_heads=3"):
    jax.eval_shape(MultiHeadAttention(num_heads=3).init, jax.random.key(0), x_q)


def test_mha_attention_dropout_uses_the_dropout_stream():
  mha = MultiHeadAttention(num_heads=4, dropout_rate=0.5)
  x = _normal((B, T, D))
  variables = nn.unbox(jax.jit(mha.init)(jax.random.key(1), x))
  apply = jax.jit(mha.apply, static_argnames="train")
  run = lambda seed: apply(variables, x, train=True, rngs={"dropout": jax.random.key(seed)})
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))
  np.testing.assert_array_equal(apply(variables, x), apply(variables, x, train=False))
  assert not np.allclose(run(0), apply(variables, x))


@pytest.mark.parametrize("num_kv_heads", [None, 2])
def test_kv_cache_decoding_equals_full_causal_forward(num_kv_heads):
  mha = MultiHeadAttention(num_heads=4, num_kv_heads=num_kv_heads)
  max_len = 8
  x = _normal((B, max_len, D))
  variables = nn.unbox(jax.jit(functools.partial(mha.init, decode=True))(jax.random.key(1), x))
  params, cache = variables["params"], variables["cache"]
  assert cache["cached_key"].shape == (B, max_len, 4 if num_kv_heads is None else 2, D // 4)
  assert int(cache["cache_index"]) == 0  # init creates the cache without advancing it.
  full = jax.jit(mha.apply)({"params": params}, x, mask=causal_mask(max_len))

  step = jax.jit(
    lambda cache, chunk: mha.apply(
      {"params": params, "cache": cache}, chunk, decode=True, mutable=["cache"]
    )
  )
  outs = []
  out, state = step(cache, x[:, :3])  # Prefill 3 tokens, then one at a time.
  outs.append(out)
  assert int(state["cache"]["cache_index"]) == 3
  for t in range(3, max_len):
    out, state = step(state["cache"], x[:, t : t + 1])
    outs.append(out)
  assert int(state["cache"]["cache_index"]) == max_len
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)
  # The cache holds exactly the keys of the whole input.
  k_full = jnp.einsum("btd,dkh->btkh", x, params["key"]["kernel"]) + params["key"]["bias"]
  np.testing.assert_allclose(state["cache"]["cached_key"], k_full, rtol=1e-5, atol=1e-5)

  with pytest.raises(ValueError, match="Decoding 9 tokens at once into a KV cache of 8"):
    jax.eval_shape(
      functools.partial(mha.apply, decode=True, mutable=["cache"]),
      {"params": params, "cache": cache},
      jnp.zeros((B, 9, D)),
    )
  with pytest.raises(ValueError, match="self-attention only"):
    jax.eval_shape(
      functools.partial(mha.apply, decode=True, mutable=["cache"]),
      {"params": params, "cache": cache},
      x,
      x,
    )
