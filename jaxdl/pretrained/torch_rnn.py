"""PyTorch nn.LSTM / nn.GRU state dicts <-> jaxdl's StackedRNN ("stacked_rnn").

    model, variables = jaxdl.pretrained.load("lstm.pth")     # or a .safetensors
    y_BTH, carries = model.apply(variables, x_BTI)           # = torch's lstm(x_BTI)[0]
    jaxdl.pretrained.save(model, variables, "out/", format="torch")

A checkpoint is the state dict of the nn.LSTM or nn.GRU itself (weight_ih_l0, weight_hh_l0,
bias_ih_l0, bias_hh_l0, ..._reverse), or of a module that holds the RNN and nothing else under one
prefix ("lstm.weight_ih_l0"): the prefix is dropped. A state dict with other layers beside the RNN
(a head, an embedding) is refused; save `model.lstm.state_dict()` or strip the other keys first.
The architecture comes from the shapes: input_size, hidden_size, num_layers, bidirectional, bias,
and LSTM (4 gates) or GRU (3). batch_first and dropout are no weights: jaxdl takes [B, T, I]
inputs, and dropout between layers is the training argument `dropout_rate`. proj_size is refused.

Both cells keep torch's gate order (LSTM i, f, g, o; GRU r, z, n); kernels are the transposed
weights. torch's LSTM adds two biases that jaxdl keeps as one: import sums them, export writes the
sum as bias_ih and zeros as bias_hh (the same outputs). The GRU's recurrent bias sits inside
r * (W_hn h + b_hn), as jaxdl's GRUCell(reset_after=True) has it, so both biases copy.

The final carries differ in layout only: torch's h_n[l * D + d] (D = 2 directions or 1) is
`carries[l][d]` (`carries[l]` when one direction) for a GRU, and its [1] (of (c, h)) for an LSTM;
c_n[l * D + d] is the [0].
"""

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.errors import CheckpointError
from jaxdl.nn.recurrent import StackedRNN
from jaxdl.pretrained import families, rules
from jaxdl.pretrained.rules import Rule

_FIRST = "weight_ih_l0"
# torch's nn.LSTM/GRU parameter names: weight_ih_l0, bias_hh_l1_reverse, weight_hr_l0 (proj_size).
_NAME = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?")
_GATES = {4: "lstm", 3: "gru"}


def _prefixes(names: set[str]) -> set[str]:
  """The prefixes ("", "lstm.", "encoder.rnn.") under which the names hold an RNN's first layer."""
  found = {n.removesuffix(_FIRST) for n in names if n.endswith(_FIRST)}
  return {p for p in found if p == "" or p.endswith(".")}


def _detect(config: dict | None, names: set[str]) -> bool:
  return config is None and bool(_prefixes(names))


def _normalize(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Drops the one prefix the RNN's names have ("lstm."); several are left for _model_config."""
  prefixes = _prefixes(set(tensors))
  if len(prefixes) != 1:
    return tensors
  (prefix,) = prefixes
  return {name.removeprefix(prefix): t for name, t in tensors.items()}


def _model_config(config: dict | None, tensors: Any) -> dict[str, Any]:
  foreign = sorted(n for n in tensors if not _NAME.fullmatch(n))
  if foreign:
    raise CheckpointError(
      f"This state dict holds tensors that are no nn.LSTM/nn.GRU's: {foreign[:6]}"
      + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
      + ". jaxdl reads the state dict of the RNN module alone (weight_ih_l0, ...; one common "
      "prefix such as 'lstm.' is allowed): save `model.lstm.state_dict()`, or strip the other "
      "keys, and load that."
    )
  if "weight_hr_l0" in tensors:
    p, h = tensors["weight_hr_l0"].shape
    raise CheckpointError(
      f"This nn.LSTM has proj_size={p} (weight_hr_l0 {(p, h)}): an output projection of h that "
      "jaxdl's LSTM cell does not have. Only LSTMs with proj_size=0 can be loaded."
    )
  if "weight_hh_l0" not in tensors:
    raise CheckpointError(
      "The RNN state dict has weight_ih_l0 but no weight_hh_l0, which gives the hidden size; "
      "the state dict is incomplete."
    )
  w_ih, w_hh = tensors[_FIRST], tensors["weight_hh_l0"]
  hidden = w_hh.shape[1]
  gates, rest = divmod(w_ih.shape[0], hidden)
  if rest or gates not in _GATES:
    kind = (
      "an nn.RNN, whose nonlinearity (tanh or relu) the weights do not say" if gates == 1 else ""
    )
    raise CheckpointError(
      f"weight_ih_l0 {tuple(w_ih.shape)} and weight_hh_l0 {tuple(w_hh.shape)} make "
      f"{w_ih.shape[0]}/{hidden} gates"
      + (f" ({kind})" if kind else "")
      + "; jaxdl reads nn.LSTM (4 gates) and nn.GRU (3) state dicts."
    )
  matches = [_NAME.fullmatch(n) for n in tensors]
  cell_type = _GATES[gates]
  section = {
    "name": "stacked_rnn",
    "cell_type": cell_type,
    "features": int(hidden),
    "input_features": int(w_ih.shape[1]),
    "num_layers": 1 + max(int(m.group(2)) for m in matches),
    "bidirectional": any(m.group(3) for m in matches),
    "merge": "concat",
    "use_bias": any(m.group(1).startswith("bias") for m in matches),
  }
  if cell_type == "gru":
    section["reset_after"] = True  # torch's GRU: b_hn inside r * (...).
  return section


def _transposed(jax_path: str, ref: str) -> Rule:
  return Rule((jax_path,), (ref,), lambda w: (w.T,), lambda k: (k.T,))


def _summed_bias(jax_path: str, ref_ih: str, ref_hh: str) -> Rule:
  """torch's two LSTM biases <-> jaxdl's one: their sum; written back as (sum, zeros)."""
  return Rule(
    (jax_path,),
    (ref_ih, ref_hh),
    lambda b_ih, b_hh: (b_ih + b_hh,),
    lambda b: (b, np.zeros_like(b)),
  )


def _directions(model: StackedRNN, layer: int) -> list[tuple[str, str]]:
  """(jaxdl cell path, torch name suffix) of each direction of a layer."""
  if model.bidirectional:
    return [(f"layers_{layer}/forward/cell", ""), (f"layers_{layer}/backward/cell", "_reverse")]
  return [(f"layers_{layer}/cell", "")]


def _check_exportable(model: StackedRNN) -> None:
  problems = []
  if model.cell_type not in _GATES.values():
    problems.append(f"cell_type={model.cell_type!r} (torch's layout is read for lstm and gru)")
  if model.cell_type == "gru" and not model.reset_after:
    problems.append("reset_after=False (torch's GRU applies r after the matmul: reset_after=True)")
  if model.bidirectional and model.merge != "concat":
    problems.append(f"merge={model.merge!r} (torch concatenates the two directions)")
  if problems:
    raise CheckpointError(
      f"This StackedRNN is no nn.LSTM/nn.GRU: {'; '.join(problems)}. Export a model with torch's "
      "architecture, or write its variables with jaxdl's own checkpoints."
    )


def _rules(model: StackedRNN) -> list[Rule]:
  _check_exportable(model)
  out = []
  for k in range(model.num_layers):
    for cell, s in _directions(model, k):
      out += [
        _transposed(f"{cell}/input/kernel", f"weight_ih_l{k}{s}"),
        _transposed(f"{cell}/recurrent_kernel", f"weight_hh_l{k}{s}"),
      ]
      if not model.use_bias:
        continue
      if model.cell_type == "lstm":
        out.append(_summed_bias(f"{cell}/input/bias", f"bias_ih_l{k}{s}", f"bias_hh_l{k}{s}"))
      else:
        out += [
          rules.copy(f"{cell}/input/bias", f"bias_ih_l{k}{s}"),
          rules.copy(f"{cell}/recurrent_bias", f"bias_hh_l{k}{s}"),
        ]
  return rules.under("params", out)


def _example_input(model: StackedRNN) -> jax.ShapeDtypeStruct:
  if model.input_features is None:
    raise CheckpointError(
      "Loading torch RNN weights needs StackedRNN(input_features=...), the nn.LSTM's input_size."
    )
  return jax.ShapeDtypeStruct((1, 1, model.input_features), jnp.float32)


def _exports(model: Any) -> bool:
  return isinstance(model, StackedRNN)


TORCH_RNN = families.register(
  families.Family(
    name="torch_rnn",
    format="torch",
    detect=_detect,
    model_config=_model_config,
    rules=_rules,
    example_input=_example_input,
    normalize=_normalize,
    exports=_exports,
  )
)
