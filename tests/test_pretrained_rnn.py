"""torch nn.LSTM / nn.GRU state dicts -> jaxdl's StackedRNN and back (jaxdl.pretrained.torch_rnn).

Random torch RNNs (torch's own init, biases redrawn larger so both of them matter) are saved to
tmp_path as .pth and .safetensors; jaxdl's outputs must equal torch's, and what jaxdl exports must
load into a fresh torch module with strict=True and give the same outputs again.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from jaxdl import pretrained  # noqa: E402
from jaxdl.errors import CheckpointError  # noqa: E402
from jaxdl.nn.recurrent import StackedRNN  # noqa: E402
from jaxdl.train import param_paths  # noqa: E402

I, H, LAYERS, B, T = 5, 7, 2, 3, 6
RTOL = 1e-5  # Of the largest output, float32.
TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
CASES = [
  (cell, bidirectional, bias)
  for cell in TORCH
  for bidirectional in (False, True)
  for bias in (True, False)
]


def _torch_rnn(cell, bidirectional, bias, seed=0):
  torch.manual_seed(seed)
  # batch_first says how inputs are laid out, not what the weights are: jaxdl takes [B, T, I].
  rnn = _fresh(cell, bidirectional, bias)
  with torch.no_grad():
    for name, p in rnn.named_parameters():
      if name.startswith("bias"):
        p.normal_(0.0, 0.5)
  return rnn.eval()


def _fresh(cell, bidirectional, bias):
  return TORCH[cell](
    I, H, num_layers=LAYERS, bidirectional=bidirectional, bias=bias, batch_first=True
  )


def _x_BTI(seed=1):
  return np.random.default_rng(seed).standard_normal((B, T, I)).astype(np.float32)


def _torch_out(rnn, x_BTI):
  with torch.no_grad():
    y, state = rnn(torch.from_numpy(x_BTI))
  return y.numpy(), state


def _relative(a, ref):
  return float(np.abs(np.asarray(a) - ref).max() / np.abs(ref).max())


def _state_dict(rnn):
  return {k: v.detach().numpy().copy() for k, v in rnn.state_dict().items()}


def _save_both(rnn, folder):
  folder.mkdir()
  torch.save(rnn.state_dict(), folder / "rnn.pth")
  safetensors_torch.save_file(rnn.state_dict(), str(folder / "rnn.safetensors"))
  return folder / "rnn.pth", folder / "rnn.safetensors"


@pytest.mark.parametrize("cell, bidirectional, bias", CASES)
def test_outputs_carries_and_export_match_torch(tmp_path, cell, bidirectional, bias):
  rnn = _torch_rnn(cell, bidirectional, bias)
  x = _x_BTI()
  y_ref, state = _torch_out(rnn, x)
  pth, st = _save_both(rnn, tmp_path / "in")

  model, variables = pretrained.load(pth)
  assert isinstance(model, StackedRNN)
  assert (model.cell_type, model.features, model.input_features) == (cell, H, I)
  assert (model.num_layers, model.bidirectional, model.use_bias) == (LAYERS, bidirectional, bias)
  _, from_st = pretrained.load(st)
  jax.tree.map(np.testing.assert_array_equal, from_st, variables)

  y, carries = model.apply(variables, x)
  assert y.shape == (B, T, 2 * H if bidirectional else H)
  assert _relative(y, y_ref) < RTOL
  # torch's h_n[l * D + d] is carries[l][d] (LSTM: (c, h)); see torch_rnn's docstring.
  directions = 2 if bidirectional else 1
  flat = [c[d] if bidirectional else c for c in carries for d in range(directions)]
  h_n, c_n = state if cell == "lstm" else (state, None)
  hs = np.stack([c[1] if cell == "lstm" else c for c in flat])
  assert _relative(hs, h_n.numpy()) < RTOL
  if cell == "lstm":
    assert _relative(np.stack([c[0] for c in flat]), c_n.numpy()) < RTOL

  written = pretrained.save(model, variables, tmp_path / "out", format="torch")
  assert sorted(p.name for p in written) == ["model.pth", "model.safetensors"]
  for file in written:
    fresh = _fresh(cell, bidirectional, bias)
    if file.suffix == ".pth":
      state_dict = torch.load(file, weights_only=True)
    else:
      state_dict = safetensors_torch.load_file(str(file))
    fresh.load_state_dict(state_dict, strict=True)
    assert _relative(_torch_out(fresh.eval(), x)[0], y_ref) < RTOL


@pytest.mark.parametrize("cell", TORCH)
def test_import_then_export_gives_the_same_tensors(tmp_path, cell):
  rnn = _torch_rnn(cell, bidirectional=True, bias=True)
  before = _state_dict(rnn)
  model, variables = pretrained.load(_save_both(rnn, tmp_path / "in")[0])
  pretrained.save(model, variables, tmp_path / "out", format="torch")
  after = {k: v.numpy() for k, v in torch.load(tmp_path / "out/model.pth").items()}
  assert sorted(after) == sorted(before)
  for name, tensor in before.items():
    if cell == "lstm" and name.startswith("bias"):
      continue
    np.testing.assert_array_equal(after[name], tensor, err_msg=name)
  if cell == "lstm":
    # jaxdl's LSTM has one bias, torch's two: it holds their sum, written back as (sum, zeros).
    for suffix in ("_l0", "_l1", "_l0_reverse", "_l1_reverse"):
      total = before[f"bias_ih{suffix}"] + before[f"bias_hh{suffix}"]
      np.testing.assert_array_equal(after[f"bias_ih{suffix}"], total)
      np.testing.assert_array_equal(after[f"bias_hh{suffix}"], np.zeros_like(total))
  # And from there the round trip is exact for both.
  model2, variables2 = pretrained.load(tmp_path / "out")  # The folder: its model.safetensors.
  pretrained.save(model2, variables2, tmp_path / "out2", format="torch")
  again = torch.load(tmp_path / "out2/model.pth")
  for name, tensor in after.items():
    np.testing.assert_array_equal(again[name].numpy(), tensor, err_msg=name)


def test_a_module_holding_only_the_rnn_loads_under_its_prefix(tmp_path):
  holder = torch.nn.Module()
  holder.lstm = _torch_rnn("lstm", bidirectional=False, bias=True)
  torch.save(holder.state_dict(), tmp_path / "holder.pth")
  model, variables = pretrained.load(tmp_path / "holder.pth", dropout_rate=0.25)
  assert model.dropout_rate == 0.25  # A training argument: torch's dropout is no weight.
  x = _x_BTI()
  assert _relative(model.apply(variables, x)[0], _torch_out(holder.lstm, x)[0]) < RTOL


def test_clear_errors_for_proj_size_other_layers_missing_tensors_and_nn_rnn(tmp_path):
  torch.save(torch.nn.LSTM(I, H, proj_size=3).state_dict(), tmp_path / "proj.pth")
  with pytest.raises(CheckpointError, match=r"proj_size=3 .*Only LSTMs with proj_size=0"):
    pretrained.load(tmp_path / "proj.pth")

  net = torch.nn.Module()
  net.gru, net.head = torch.nn.GRU(I, H), torch.nn.Linear(H, 2)
  torch.save(net.state_dict(), tmp_path / "net.pth")
  with pytest.raises(CheckpointError, match=r"\['head.bias', 'head.weight'\].*state_dict\(\)"):
    pretrained.load(tmp_path / "net.pth")

  state = _torch_rnn("gru", bidirectional=False, bias=True).state_dict()
  del state["weight_hh_l1"]
  torch.save(state, tmp_path / "missing.pth")
  with pytest.raises(CheckpointError, match=r"tensor 'weight_hh_l1' is missing"):
    pretrained.load(tmp_path / "missing.pth")

  torch.save(torch.nn.RNN(I, H).state_dict(), tmp_path / "elman.pth")
  with pytest.raises(CheckpointError, match=r"nn.RNN.*nn.LSTM \(4 gates\) and nn.GRU \(3\)"):
    pretrained.load(tmp_path / "elman.pth")


def test_models_torch_cannot_hold_are_refused_on_export(tmp_path):
  x = jnp.zeros((1, 2, I))
  for model, what in [
    (StackedRNN(H, "gru", reset_after=False), "reset_after=False"),
    (StackedRNN(H, "lstm", bidirectional=True, merge="sum"), "merge='sum'"),
    (StackedRNN(H, "rnn"), "cell_type='rnn'"),
  ]:
    variables = model.init(jax.random.key(0), x)
    with pytest.raises(CheckpointError, match=f"is no nn.LSTM/nn.GRU: {what}"):
      pretrained.save(model, variables, tmp_path / "out", format="torch")


@pytest.mark.parametrize("cell, reset_after", [("lstm", True), ("gru", True), ("gru", False)])
def test_use_bias_default_keeps_the_biases_and_false_is_zero_biases(cell, reset_after):
  x = _x_BTI()
  default = StackedRNN(H, cell, reset_after=reset_after)
  params = nn.unbox(default.init(jax.random.key(0), x))
  paths = set(param_paths.named_leaves(params))
  biases = {p for p in paths if p.endswith("bias")}
  expected = {"params/layers_0/cell/input/bias"}
  if cell == "gru" and reset_after:
    expected.add("params/layers_0/cell/recurrent_bias")
  assert biases == expected  # The default's parameters, as before use_bias existed.

  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), params)
  no_bias = StackedRNN(H, cell, reset_after=reset_after, use_bias=False)
  kept = {p: a for p, a in param_paths.named_leaves(params).items() if p not in biases}
  assert set(param_paths.named_leaves(nn.unbox(no_bias.init(jax.random.key(0), x)))) == set(kept)
  zeroed = jax.tree.map(jnp.zeros_like, params)
  zeroed = param_paths.unflatten(
    {p: kept.get(p, a) for p, a in param_paths.named_leaves(zeroed).items()}
  )
  # Equal up to float32 rounding: XLA fuses the two programs differently.
  np.testing.assert_allclose(
    no_bias.apply(param_paths.unflatten(kept), x)[0], default.apply(zeroed, x)[0], atol=1e-6
  )
