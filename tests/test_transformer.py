"""Transformer models: the block's LayerNorm placement, GPT (counts, init, causality, KV-cache
decoding), BERT (counts, padding) and the encoder-decoder Transformer (counts, greedy decoding).

Parameter counts of the published configurations come from `jax.eval_shape`: no weights are
allocated. Everything else runs on tiny models, compiled once per test with jax.jit.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl.nn.bert import BERT_PRESETS, BertClassifier, BertEncoder, BertForMaskedLM
from jaxdl.nn.gpt import GPT, GPT_PRESETS
from jaxdl.nn.seq2seq import SEQ2SEQ_PRESETS, Seq2SeqTransformer, greedy_decode
from jaxdl.nn.transformer import TransformerBlock, get_activation, sinusoidal_positions


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def _shapes(model, *inputs, **kwargs):
  init = functools.partial(model.init, **kwargs)
  return jax.eval_shape(lambda *a: nn.unbox(init(*a)), jax.random.key(0), *inputs)


def _tokens(shape, low=1, high=50, seed=0):
  # Test data stays in numpy: every eager JAX op on a new shape is a (slow) compilation.
  return np.random.default_rng(seed).integers(low, high, shape).astype(np.int32)


def _with(a, index, value):
  """A copy of `a` with a[index] = value."""
  a = np.array(a)
  a[index] = value
  return a


def _random_params(model, *inputs, seed=0, std=0.2, ln_identity=False, **kwargs):
  """Random parameters of the right shapes, drawn by numpy: kernels and embeddings N(0, std^2),
  biases N(0, 0.01), LayerNorm scales 1 + N(0, 0.01). No initialiser is compiled (that is slow
  on CPU); tests of the initialisation itself use model.init."""
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    is_ln = "_ln" in name or "ln_f" in name
    if ln_identity and is_ln:
      return np.full(s.shape, 1.0 if name.endswith("['scale']") else 0.0, s.dtype)
    if name.endswith("['scale']"):
      return (1 + 0.1 * rng.standard_normal(s.shape)).astype(s.dtype)
    scale = 0.1 if "bias" in name else std
    return (scale * rng.standard_normal(s.shape)).astype(s.dtype)

  return jax.tree_util.tree_map_with_path(draw, _shapes(model, *inputs, **kwargs)["params"])


def _zero_cache(model, *inputs, **kwargs):
  """A fresh KV cache: init(..., decode=True) makes it all zeros, so its shapes are enough."""
  cache = _shapes(model, *inputs, decode=True, **kwargs)["cache"]
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), cache)


def _block_params(d, mlp):
  """Parameters of one standard block: 4 attention projections, 2 MLP layers, 2 LayerNorms."""
  return 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + 2 * 2 * d


# --- TransformerBlock -----------------------------------------------------------------------------

D = 32


def _block_and_params(pre_ln, x):
  block = TransformerBlock(num_heads=4, mlp_dim=64, pre_ln=pre_ln)
  # LayerNorms as initialised (scale 1, bias 0), the rest random.
  return block, _random_params(block, x, ln_identity=True)


def test_post_ln_normalises_each_token_and_pre_ln_keeps_the_residual_stream():
  x = _tokens((2, 6, D), -3, 3).astype(np.float32) + 5.0  # Rows with mean ~5.
  for pre_ln in (True, False):
    block, params = _block_and_params(pre_ln, x)
    out = np.asarray(jax.jit(block.apply)({"params": params}, x))
    if pre_ln:  # x + f(LN(x)): the residual stream keeps its offset.
      assert np.all(np.abs(out.mean(-1) - 5.0) < 1.0)
    else:  # LN(x + f(x)): every token is normalised (LayerNorm scale 1, bias 0).
      np.testing.assert_allclose(out.mean(-1), 0.0, atol=1e-5)
      np.testing.assert_allclose(out.var(-1), 1.0, rtol=1e-3)
    # With the sublayers' output projections zeroed, pre-LN is the identity and post-LN is LN(x).
    zero = lambda path, p: (
      np.zeros_like(p) if any(getattr(k, "key", None) in ("out", "fc_out") for k in path) else p
    )
    zeroed = jax.tree_util.tree_map_with_path(zero, params)
    out = np.asarray(jax.jit(block.apply)({"params": zeroed}, x))
    xn = np.asarray(x, np.float64)
    expected = (
      xn
      if pre_ln
      else (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
    )
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_block_checks_its_inputs():
  x = np.zeros((1, 4, D), np.float32)
  with pytest.raises(ValueError, match="pass encoded_BSD exactly when cross_attention=True"):
    jax.eval_shape(TransformerBlock(4, 64, cross_attention=True).init, jax.random.key(0), x)
  with pytest.raises(ValueError, match="Unknown activation 'gleu'; choose one of gelu"):
    get_activation("gleu")


def test_sinusoidal_positions_match_the_paper():
  pos, d = np.arange(50), 16
  pe = np.asarray(sinusoidal_positions(jnp.arange(50), d))
  i = np.arange(d // 2)
  angle = pos[:, None] / 10000.0 ** (2 * i[None, :] / d)
  np.testing.assert_allclose(pe[:, 0::2], np.sin(angle), atol=2e-5)
  np.testing.assert_allclose(pe[:, 1::2], np.cos(angle), atol=2e-5)


# --- GPT ------------------------------------------------------------------------------------------


def _gpt_params(v, p, d, layers, mlp=None):
  """Token + position embeddings, blocks, final LayerNorm; the LM head is tied."""
  return v * d + p * d + layers * _block_params(d, mlp or 4 * d) + 2 * d


@pytest.mark.parametrize(
  "name, expected",
  [
    ("gpt2_small", 124_439_808),
    ("gpt2_medium", 354_823_168),
    ("gpt_tiny", _gpt_params(65, 128, 128, 4)),
  ],
)
def test_gpt_preset_parameter_counts(name, expected):
  model = GPT(**GPT_PRESETS[name])
  assert _count(_shapes(model, np.zeros((1, 8), np.int32))["params"]) == expected
  assert expected == _gpt_params(
    model.vocab_size, model.block_size, model.embed_dim, model.num_layers
  )


def test_nanogpt_baby_gpt_count():
  """nanoGPT (bias=False: no biases in Linear or LayerNorm) reports 10.65M parameters for its
  Shakespeare-char model, leaving out the position embeddings."""
  kw = GPT_PRESETS["gpt_char_baby"]
  d, layers = kw["embed_dim"], kw["num_layers"]
  count = _count(_shapes(GPT(**kw), np.zeros((1, 8), np.int32)))
  per_block = 12 * d * d + 2 * d  # q, k, v, out (4 D^2), MLP (8 D^2), two LayerNorm scales.
  assert count == kw["vocab_size"] * d + kw["block_size"] * d + layers * per_block + d
  assert count - kw["block_size"] * d == 10_646_784  # "number of parameters: 10.65M"


def test_gpt_untied_head_and_grouped_query_counts():
  kw = dict(vocab_size=50, block_size=16, num_layers=2, num_heads=4, embed_dim=D)
  tokens = np.zeros((1, 8), np.int32)
  tied = _count(_shapes(GPT(**kw), tokens))
  untied = _shapes(GPT(**kw, tie_embeddings=False), tokens)["params"]
  assert untied["lm_head"]["kernel"].shape == (D, 50) and "bias" not in untied["lm_head"]
  assert _count(untied) == tied + 50 * D
  # One key/value head instead of 4: k and v shrink from D*D + D to D*H + H each (H = D / 4).
  mqa = _count(_shapes(GPT(**kw, num_kv_heads=1), tokens))
  assert mqa == tied - 2 * 2 * (D * D + D - (D * D // 4 + D // 4))


GPT_KW = dict(vocab_size=50, block_size=16, num_layers=2, num_heads=4, embed_dim=D)


gpt_apply = jax.jit(GPT(**GPT_KW).apply)


@pytest.fixture(scope="module")
def gpt_params():
  return _random_params(GPT(**GPT_KW), _tokens((2, 16)))


def test_gpt2_initialisation():
  model = GPT(vocab_size=512, block_size=256, num_layers=2, num_heads=4, embed_dim=128)
  p = nn.unbox(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 4), np.int32)))["params"]
  std = lambda a: float(np.std(np.asarray(a)))
  assert std(p["wte"]["embedding"]) == pytest.approx(0.02, rel=0.05)
  assert std(p["wpe"]["embedding"]) == pytest.approx(0.02, rel=0.05)
  block = p["block_1"]
  assert std(block["self_attn"]["query"]["kernel"]) == pytest.approx(0.02, rel=0.05)
  assert std(block["mlp"]["fc_in"]["kernel"]) == pytest.approx(0.02, rel=0.05)
  # Projections into the residual stream: 0.02 / sqrt(2 * num_layers) = 0.01.
  assert std(block["self_attn"]["out"]["kernel"]) == pytest.approx(0.01, rel=0.05)
  assert std(block["mlp"]["fc_out"]["kernel"]) == pytest.approx(0.01, rel=0.05)
  for path, leaf in jax.tree_util.tree_leaves_with_path(p):
    name = jax.tree_util.keystr(path)
    if "bias" in name:
      np.testing.assert_array_equal(leaf, 0.0, err_msg=name)
    if "scale" in name:
      np.testing.assert_array_equal(leaf, 1.0, err_msg=name)


def test_gpt_is_causal(gpt_params):
  apply = gpt_apply
  tokens = _tokens((2, 16))
  logits = np.asarray(apply({"params": gpt_params}, tokens))
  assert logits.shape == (2, 16, 50) and logits.dtype == np.float32
  for t in (0, 7, 15):
    changed = _with(tokens, np.s_[:, t:], (tokens[:, t:] + 1) % 50)
    other = np.asarray(apply({"params": gpt_params}, changed))
    np.testing.assert_array_equal(other[:, :t], logits[:, :t])  # The past does not see the future.
    assert np.abs(other[:, t] - logits[:, t]).max() > 1e-4  # The present does see itself.


def test_gpt_kv_cache_prefill_then_tokens_equals_full_forward():
  model = GPT(**GPT_KW, num_kv_heads=2)  # Grouped-query attention: the cache holds 2 heads.
  max_len = 12
  tokens = _tokens((2, max_len), seed=3)
  params = _random_params(model, tokens)
  cache = _zero_cache(model, tokens)
  assert cache["block_0"]["self_attn"]["cached_key"].shape == (2, max_len, 2, D // 4)
  assert set(cache) == {"position", "block_0", "block_1"}
  full = jax.jit(model.apply)({"params": params}, tokens)

  step = jax.jit(
    lambda cache, chunk: model.apply(
      {"params": params, "cache": cache}, chunk, decode=True, mutable=["cache"]
    )
  )
  logits, state = step(cache, tokens[:, :5])  # Prompt prefill.
  chunks = [logits]
  for t in range(5, max_len):
    logits, state = step(state["cache"], tokens[:, t : t + 1])
    chunks.append(logits)
  assert int(state["cache"]["position"]) == max_len
  np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, rtol=1e-4, atol=1e-5)


def test_gpt_attention_implementations_agree(gpt_params):
  tokens = _tokens((2, 16), seed=4)
  plain = gpt_apply({"params": gpt_params}, tokens)
  fused = jax.jit(GPT(**GPT_KW, attention_impl="jax").apply)({"params": gpt_params}, tokens)
  np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5)


def test_gpt_bfloat16_compute_gives_float32_logits(gpt_params):
  tokens = _tokens((2, 16), seed=5)
  ref = gpt_apply({"params": gpt_params}, tokens)
  bf16 = jax.jit(GPT(**GPT_KW, dtype=jnp.bfloat16).apply)({"params": gpt_params}, tokens)
  assert bf16.dtype == jnp.float32
  # bf16 keeps ~3 significant digits; the logits' scale is ~1.
  untied = GPT(**GPT_KW, dtype=jnp.bfloat16, tie_embeddings=False)
  untied_params = _shapes(untied, tokens)
  assert jax.eval_shape(untied.apply, untied_params, tokens).dtype == jnp.float32
  bf16, ref = np.asarray(bf16), np.asarray(ref)
  assert np.abs(bf16 - ref).max() < 0.1 * np.abs(ref).max() + 0.05


def test_gpt_dropout(gpt_params):
  model = GPT(**GPT_KW, dropout_rate=0.3)
  tokens = _tokens((2, 16), seed=6)
  apply = jax.jit(model.apply, static_argnames="train")
  run = lambda seed: apply(
    {"params": gpt_params}, tokens, train=True, rngs={"dropout": jax.random.key(seed)}
  )
  np.testing.assert_array_equal(run(0), run(0))
  assert not np.allclose(run(0), run(1))
  eval_logits = apply({"params": gpt_params}, tokens)
  np.testing.assert_array_equal(eval_logits, gpt_apply({"params": gpt_params}, tokens))
  # The fused attention has no attention dropout: asking for it in training is refused clearly.
  fused = GPT(**GPT_KW, dropout_rate=0.3, attention_impl="jax")
  with pytest.raises(ValueError, match="no attention dropout"):
    jax.eval_shape(
      functools.partial(fused.apply, train=True),
      {"params": gpt_params},
      tokens,
      rngs={"dropout": jax.random.key(0)},
    )
  jax.eval_shape(
    functools.partial(
      GPT(**GPT_KW, dropout_rate=0.3, attention_dropout_rate=0.0, attention_impl="jax").apply,
      train=True,
    ),
    {"params": gpt_params},
    tokens,
    rngs={"dropout": jax.random.key(0)},
  )


def test_gpt_bad_inputs(gpt_params):
  with pytest.raises(ValueError, match="sequence length 17 exceeds block_size=16"):
    jax.eval_shape(GPT(**GPT_KW).apply, {"params": gpt_params}, np.zeros((1, 17), np.int32))
  with pytest.raises(ValueError, match="Unknown attention implementation 'flash'"):
    jax.eval_shape(
      GPT(**GPT_KW, attention_impl="flash").apply,
      {"params": gpt_params},
      np.zeros((1, 4), np.int32),
    )
  with pytest.raises(ValueError, match="num_kv_heads=3 must divide num_heads=4"):
    _shapes(GPT(**GPT_KW, num_kv_heads=3), np.zeros((1, 4), np.int32))


# --- BERT -----------------------------------------------------------------------------------------


def _bert_params(v, p, types, d, mlp, layers):
  """Embeddings (token, position, segment, LayerNorm) + blocks; the pooler is D*D + D more."""
  return (v + p + types) * d + 2 * d + layers * _block_params(d, mlp)


@pytest.mark.parametrize(
  "name, expected",
  [
    ("bert_base", 109_482_240),
    ("bert_large", 335_141_888),
    ("bert_tiny", _bert_params(30522, 512, 2, 128, 512, 2) + 128 * 128 + 128),
  ],
)
def test_bert_preset_parameter_counts(name, expected):
  """Encoder + pooler, as Hugging Face's BertModel counts them."""
  kw = BERT_PRESETS[name]
  tokens = np.zeros((1, 8), np.int32)
  d = kw["hidden_dim"]
  encoder = _count(_shapes(BertEncoder(**kw), tokens))
  assert encoder == _bert_params(
    kw["vocab_size"], kw["max_length"], kw["type_vocab_size"], d, kw["mlp_dim"], kw["num_layers"]
  )
  classifier = _count(_shapes(BertClassifier(**kw, num_classes=3), tokens))
  assert classifier - (d * 3 + 3) == encoder + d * d + d == expected
  # Masked LM: transform Dense + LayerNorm and an output bias; the decoder is the embedding.
  mlm = _shapes(BertForMaskedLM(**kw), tokens)["params"]
  assert set(mlm) == {"encoder", "transform", "transform_ln", "output_bias"}
  assert _count(mlm) == encoder + d * d + d + 2 * d + kw["vocab_size"]


BERT_KW = dict(vocab_size=40, max_length=16, num_layers=2, num_heads=2, hidden_dim=D, mlp_dim=64)


def test_bert_appended_padding_changes_nothing():
  tokens = _with(_tokens((2, 6), 1, 40, seed=7), np.s_[1, 4:], 0)  # Example 1 is padded already.
  padded = np.pad(tokens, ((0, 0), (0, 5)))
  segments = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]], np.int32)
  padded_segments = np.pad(segments, ((0, 0), (0, 5)))
  model = BertForMaskedLM(**BERT_KW)
  params = _random_params(model, tokens)
  apply = jax.jit(lambda t, s: model.apply({"params": params}, t, segment_ids_BT=s))
  short, long = np.asarray(apply(tokens, segments)), np.asarray(apply(padded, padded_segments))
  assert long.shape == (2, 11, 40) and long.dtype == np.float32
  real = np.asarray(tokens != 0)
  np.testing.assert_allclose(long[:, :6][real], short[real], rtol=1e-5, atol=1e-5)
  # Segment ids are used: moving tokens to the other segment changes the logits.
  other = np.asarray(apply(tokens, 1 - segments))
  assert np.abs(other - short).max() > 1e-3


def test_bert_classifier_reads_the_cls_token():
  """The classifier sees the sequence through [CLS]'s state: changing any real token changes it."""
  model = BertClassifier(**BERT_KW, num_classes=3)
  tokens = _tokens((2, 6), 1, 40, seed=11)
  params = _random_params(model, tokens)
  apply = jax.jit(lambda t: model.apply({"params": params}, t))
  logits = np.asarray(apply(tokens))
  assert logits.shape == (2, 3) and logits.dtype == np.float32
  assert np.abs(np.asarray(apply(_with(tokens, np.s_[:, 5], 7))) - logits).max() > 1e-4


def test_bert_bad_inputs():
  model = BertEncoder(**BERT_KW)
  with pytest.raises(ValueError, match="sequence length 17 exceeds max_length=16"):
    _shapes(model, np.zeros((1, 17), np.int32))
  with pytest.raises(ValueError, match="must have the tokens' shape"):
    _shapes(model, np.zeros((1, 8), np.int32), segment_ids_BT=np.zeros((1, 7), np.int32))


# --- Encoder-decoder Transformer ------------------------------------------------------------------


def test_transformer_base_parameter_count():
  kw = SEQ2SEQ_PRESETS["transformer_base"]
  tokens = np.zeros((1, 8), np.int32)
  count = _count(_shapes(Seq2SeqTransformer(**kw), tokens, tokens))
  d, mlp, layers = kw["embed_dim"], kw["mlp_dim"], kw["num_layers"]
  # One shared embedding (also the output projection); encoder blocks; decoder blocks, which add
  # cross-attention (4 projections) and its LayerNorm. Post-LN: no final LayerNorms.
  expected = (
    kw["vocab_size"] * d
    + layers * _block_params(d, mlp)
    + layers * (_block_params(d, mlp) + 4 * (d * d + d) + 2 * d)
  )
  assert count == expected == 63_082_496
  assert abs(count - 65e6) / 65e6 < 0.05  # The paper's "65M".
  pre_ln = _shapes(Seq2SeqTransformer(**kw, pre_ln=True), tokens, tokens)["params"]
  assert _count(pre_ln) == count + 2 * 2 * d  # Final LayerNorms of the encoder and decoder.
  assert "ln_f" in pre_ln["encoder"] and "ln_f" in pre_ln["decoder"]


S2S_KW = dict(
  vocab_size=16, num_layers=2, num_heads=2, embed_dim=D, mlp_dim=64, max_length=12, pre_ln=True
)


@pytest.fixture(scope="module")
def s2s():
  """A tiny model with large random weights and small embeddings (so that positions count), so
  that its greedy outputs vary from token to token, unlike those of most random Transformers.
  Also a jitted teacher-forced forward pass, shared by the tests (targets of length 10)."""
  model = Seq2SeqTransformer(**S2S_KW)
  src = _with(_tokens((4, 7), 3, 16, seed=8), np.s_[1, 5:], 0)
  params = _random_params(model, src, src, std=1.0)
  params["embed"]["embedding"] = params["embed"]["embedding"] * 0.1
  apply = jax.jit(lambda p, s, t: model.apply({"params": p}, s, t))
  return model, params, src, apply


def test_seq2seq_source_padding_and_decoder_causality(s2s):
  model, params, src, apply = s2s
  tgt = _tokens((4, 10), 3, 16, seed=9)
  logits = np.asarray(apply(params, src, tgt))
  assert logits.shape == (4, 10, 16) and logits.dtype == np.float32
  np.testing.assert_allclose(
    apply(params, np.pad(src, ((0, 0), (0, 3))), tgt), logits, rtol=1e-4, atol=1e-4
  )
  changed = np.asarray(apply(params, src, _with(tgt, np.s_[:, 3:], 1)))
  np.testing.assert_array_equal(changed[:, :3], logits[:, :3])
  assert np.abs(changed[:, 3] - logits[:, 3]).max() > 1e-3
  # The source matters (cross-attention is wired in).
  assert np.abs(np.asarray(apply(params, _with(src, np.s_[:, 0], 4), tgt)) - logits).max() > 1e-3


def _decode_chunk(model, src_BS, tgt_BL):
  """encode + decode(decode=True) in one call, so that a test step compiles once."""
  return model.decode(*model.encode(src_BS), tgt_BL, decode=True)


def test_seq2seq_cached_decoder_equals_teacher_forcing(s2s):
  model, params, src, apply = s2s
  tgt = _tokens((4, 10), 3, 16, seed=10)
  full = apply(params, src, tgt)
  cache = jax.eval_shape(
    functools.partial(model.init, method=_decode_chunk), jax.random.key(0), src, tgt
  )["cache"]
  cache = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), cache)
  assert int(cache["decoder"]["position"]) == 0 and "encoder" not in cache
  step = jax.jit(
    lambda cache, chunk: model.apply(
      {"params": params, "cache": cache}, src, chunk, method=_decode_chunk, mutable=["cache"]
    )
  )
  logits, state = step(cache, tgt[:, :3])  # Prefill 3, then one at a time.
  chunks = [logits]
  for t in range(3, 10):
    logits, state = step(state["cache"], tgt[:, t : t + 1])
    chunks.append(logits)
  assert int(state["cache"]["decoder"]["position"]) == 10
  np.testing.assert_allclose(np.concatenate(chunks, axis=1), full, rtol=1e-4, atol=1e-4)


def test_greedy_decode_with_and_without_cache_and_eos(s2s):
  model, params, src, apply = s2s
  max_len = 10
  # eos_id may be traced: one compilation serves every EOS.
  decode = jax.jit(
    lambda p, s, eos, use_cache: greedy_decode(
      model, p, s, bos_id=1, eos_id=eos, max_len=max_len, use_cache=use_cache
    ),
    static_argnames="use_cache",
  )
  free = np.asarray(decode(params, src, -1, True))  # eos -1: never stops.
  assert free.shape == (4, max_len)
  assert len(np.unique(free)) > 4  # Not a constant sequence, which would check little.
  np.testing.assert_array_equal(decode(params, src, -1, False), free)
  # Greedy: each token is the argmax of the teacher-forced logits on the decoded prefix.
  tgt_in = np.concatenate([np.ones((4, 1), np.int32), free[:, :-1]], axis=1)
  logits = apply(params, src, tgt_in)
  np.testing.assert_array_equal(np.argmax(logits, -1), free)

  # With an EOS that some example emits mid-way: kept, then padding; the rest is unchanged.
  eos = int(free[0, 2])
  stopped = np.asarray(decode(params, src, eos, True))
  for row_free, row in zip(free, stopped):
    hits = np.flatnonzero(row_free == eos)
    end = hits[0] + 1 if len(hits) else max_len
    np.testing.assert_array_equal(row[:end], row_free[:end])
    np.testing.assert_array_equal(row[end:], 0)
  assert (stopped == 0).any()
  # The bound form used by the seq2seq task's evaluation.
  generated = jax.jit(
    lambda p, s: model.apply(
      {"params": p}, s, max_length=max_len, bos_id=1, eos_id=eos, method="generate"
    )
  )(params, src)
  np.testing.assert_array_equal(generated, stopped)
  with pytest.raises(ValueError, match="max_len=13 exceeds the model's max_length=12"):
    greedy_decode(model, params, src, bos_id=1, eos_id=2, max_len=13)
