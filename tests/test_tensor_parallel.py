"""The tensor mesh axis and logical axis rules (jaxdl.nn.partitioning, jaxdl.train.shardings).

GPT, BERT, ViT and the encoder-decoder Transformer trained on 8 forced CPU devices under
data x fsdp x tensor layouts follow the one-device run: train loss and gradient norm within
relative 2e-3 at every logged step, evaluation loss within 1e-2 and accuracy within 0.01 (sums
split over devices add in another order, and Adam amplifies the rounding a little; the same
tolerance as tests/test_parallel.py). Each run is a fresh process (the device count is fixed when
JAX starts).
"""

import json
import subprocess
import sys

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from jaxdl import config as config_lib
from jaxdl.errors import ConfigError
from jaxdl.nn import partitioning
from jaxdl.nn.gpt import GPT
from jaxdl.train import mesh_layout, parallel, shardings
from jaxdl.train import step as step_lib
from tests import test_parallel
from tests.conftest import REPO

EXPERIMENTS = REPO / "experiments"
COMMON = [
  "train.num_steps=12",
  "train.log_every_steps=4",
  "train.eval_every_steps=12",
  "train.checkpoint_every_steps=6",
  "optimizer.warmup_steps=2",
  # A fixed schedule length, so that a run stopped at 6 of 12 steps and resumed follows the
  # learning rates of one run straight to 12.
  "optimizer.decay_steps=12",
  "runtime.steps_per_call=1",
  "--no-progress",
]
# 4 heads and MLPs of 128 units: the tensor axis splits them (by 2 or 8 for the MLP).
MODELS = {
  "gpt": [
    f"{EXPERIMENTS / 'shakespeare_char_gpt.py'}:cpu",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.embed_dim=32",
    "model.block_size=32",
    "data.block_size=32",
    "train.batch_size=16",
    "data.eval_batch_size=256",
  ],
  "bert": [
    str(EXPERIMENTS / "reviews_bert.py"),
    "model.hidden_dim=32",
    "model.mlp_dim=128",
    "model.dropout_rate=0.0",
    "data.max_length=16",
    "model.max_length=16",
    "data.vocab_size=200",
    "train.batch_size=16",
    "data.eval_batch_size=40",
  ],
  "vit": [
    str(EXPERIMENTS / "mnist_vit.py"),
    "model.embed_dim=32",
    "model.num_layers=2",
    "model.mlp_dim=128",
    "train.batch_size=16",
    "data.eval_batch_size=400",
  ],
  "transformer": [
    str(EXPERIMENTS / "reverse_transformer.py"),
    "model.num_layers=1",
    "model.embed_dim=32",
    "model.num_heads=4",
    "model.mlp_dim=128",
    "model.dropout_rate=0.0",
    "data.num_train=500",
    "data.num_test=100",
    "train.batch_size=16",
    "data.eval_batch_size=48",
  ],
}
LAYOUTS = {
  "data2-fsdp2-tensor2": ["parallel.mesh.data=2", "parallel.mesh.fsdp=2", "parallel.mesh.tensor=2"],
  "tensor8": ["parallel.mesh.data=1", "parallel.mesh.tensor=8"],
  "fsdp4-tensor2": ["parallel.mesh.data=1", "parallel.mesh.fsdp=4", "parallel.mesh.tensor=2"],
}


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory):
  """A small review corpus of the real file's format, so BERT needs no ../shared data here."""
  path = tmp_path_factory.mktemp("reviews") / "reviews.csv"
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(150)]
  rows = ["category,text"]
  for i in range(400):
    label = "fresh" if i % 2 else "rotten"
    text = " ".join(rng.choice(words[:100] if label == "fresh" else words[50:], size=12))
    rows.append(f"{label},{text}")
  path.write_text("\n".join(rows) + "\n")
  return path


def _args(model, reviews_csv, *extra):
  data = [f"data.dir={reviews_csv}"] if model == "bert" else []
  return ["train", *MODELS[model], *data, *COMMON, *extra]


def _run(args, workdir, num_devices):
  """tests/test_parallel.py's run in a fresh process of `num_devices` CPU devices; its metrics."""
  done = test_parallel._run(args, workdir, num_devices)
  assert done.returncode == 0, done.stderr[-3000:]
  return test_parallel._by_step(workdir)


def _assert_follows(b, a):
  for step in (4, 8, 12):
    for key in ("train/loss", "train/grad_norm"):
      np.testing.assert_allclose(b[step][key], a[step][key], rtol=2e-3, err_msg=f"{key} @{step}")
  np.testing.assert_allclose(b[12]["eval/loss"], a[12]["eval/loss"], rtol=1e-2)
  assert abs(b[12]["eval/accuracy"] - a[12]["eval/accuracy"]) <= 0.01
  assert b[12]["eval/num_examples"] == a[12]["eval/num_examples"]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory, reviews_csv):
  """{model: its one-device run}, each trained when first asked for."""
  runs = {}

  def get(model):
    if model not in runs:
      workdir = tmp_path_factory.mktemp(f"one-{model}") / "run"
      runs[model] = _run(_args(model, reviews_csv), workdir, 1)
    return runs[model]

  return get


@pytest.mark.parametrize(
  "model, layout",
  [
    pytest.param(m, l, marks=[] if (m, l) == ("gpt", "data2-fsdp2-tensor2") else pytest.mark.slow)
    for m in MODELS
    for l in LAYOUTS
  ],
)
def test_tensor_layouts_follow_one_device(one_device, reviews_csv, tmp_path, model, layout):
  run = _run(_args(model, reviews_csv, *LAYOUTS[layout]), tmp_path / "run", 8)
  _assert_follows(run, one_device(model))


@pytest.mark.slow  # Three processes; CI runs it.
def test_a_checkpoint_restores_under_any_other_layout(one_device, reviews_csv, tmp_path):
  """Six steps under data x fsdp x tensor, six more under tensor=8, then evaluated on one device
  (`jaxdl eval` with the mesh overridden): the one-device trajectory, and the same evaluation."""
  workdir = tmp_path / "run"
  _run(_args("gpt", reviews_csv, "train.num_steps=6", *LAYOUTS["data2-fsdp2-tensor2"]), workdir, 8)
  run = _run(_args("gpt", reviews_csv, *LAYOUTS["tensor8"]), workdir, 8)
  _assert_follows(run, one_device("gpt"))
  done = subprocess.run(
    [sys.executable, "-m", "jaxdl.cli", "eval", str(workdir), "parallel.mesh.tensor=1"],
    cwd=REPO,
    env=test_parallel._env(1),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"{run[12]['eval/loss']:.4f}"[:5] in done.stdout


@pytest.mark.slow  # Three processes; CI runs it.
def test_two_processes_with_a_tensor_axis_follow_one_process(one_device, reviews_csv, tmp_path):
  """Two processes of one CPU device each, the tensor axis across them (collectives over
  loopback): the parameters' halves live in different processes."""
  args = _args("gpt", reviews_csv, "parallel.mesh.data=1", "parallel.mesh.tensor=2")
  processes = test_parallel._start_processes(args, tmp_path / "two")
  for p, (_, err) in zip(processes, [p.communicate(timeout=900) for p in processes]):
    assert p.returncode == 0, err[-3000:]
  _assert_follows(test_parallel._by_step(tmp_path / "two"), one_device("gpt"))


# ---------------------------------------------------------------- Placement, in one process

PLACEMENT = """
import json, math, jax
from jaxdl import config as config_lib, trainer
config = config_lib.load_experiment("experiments/shakespeare_char_gpt.py:cpu")
config_lib.apply_overrides(config, {overrides!r})
setup = trainer.build(config, trainer.load_data(config))
loop = trainer.abstract_loop(setup)
def device_bytes(tree):  # Each device holds one shard of every array.
  return sum(
    x.dtype.itemsize * math.prod(x.sharding.shard_shape(x.shape)) for x in jax.tree.leaves(tree)
  )
params = loop["state"].params
block = params.get("layers") or params["block_0"]
print(json.dumps({{
  "query": list(map(str, block["self_attn"]["query"]["kernel"].sharding.spec)),
  "out": list(map(str, block["self_attn"]["out"]["kernel"].sharding.spec)),
  "fc_in": list(map(str, block["mlp"]["fc_in"]["kernel"].sharding.spec)),
  "fc_out": list(map(str, block["mlp"]["fc_out"]["kernel"].sharding.spec)),
  "mu_fc_in": [list(map(str, x.sharding.spec)) for p, x in
    jax.tree_util.tree_leaves_with_path(loop["state"].opt_state)
    if ".mu" in jax.tree_util.keystr(p) and "['fc_in']['kernel']" in jax.tree_util.keystr(p)][0],
  "param_bytes": device_bytes(params),
  "total_bytes": sum(x.dtype.itemsize * x.size for x in jax.tree.leaves(params)),
  "vocab": params["wte"]["embedding"].shape[0],
}}))
"""
TINY = [o for o in MODELS["gpt"][1:] if not o.startswith("train.batch_size")] + [
  "train.batch_size=16",
  "model.num_layers=2",
  "model.embed_dim=64",
  "model.num_heads=8",
]


def _placement(*overrides):
  code = PLACEMENT.format(overrides=[*TINY, *overrides])
  done = subprocess.run(
    [sys.executable, "-c", code],
    cwd=REPO,
    env=test_parallel._env(8),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("scan", [False, True])
def test_projections_are_split_over_tensor_and_bytes_shrink_as_the_layout_says(scan):
  placed = _placement(*LAYOUTS["data2-fsdp2-tensor2"], f"model.scan_layers={str(scan).lower()}")
  lead = ["None"] if scan else []  # The scanned stack's layer axis stays whole.
  assert placed["query"] == lead + ["fsdp", "tensor"]  # [D, N, H]: width, heads
  assert placed["out"] == lead + ["tensor", "None", "fsdp"]  # [N, H, D]
  assert placed["fc_in"] == lead + ["fsdp", "tensor"]  # [D, F]
  assert placed["fc_out"] == lead + ["tensor", "fsdp"]  # [F, D]
  assert placed["mu_fc_in"] == placed["fc_in"]  # Adam's moments follow their parameter.
  # The tensor axis repeats the batch, so a batch need only split over data x fsdp (1 here).
  tensor8 = _placement(
    *LAYOUTS["tensor8"], f"model.scan_layers={str(scan).lower()}", "train.batch_size=12"
  )
  assert tensor8["fc_in"] == lead + ["None", "tensor"]
  # Bytes per device by the rules, for D=64, 8 heads of 8, MLP 256, 2 layers, context 32, no
  # biases (the cpu recipe's use_bias=False); LayerNorm scales stay whole (too small to split).
  d, f, v, t, layers = 64, 256, placed["vocab"], 32, 2
  projections = 4 * d * d + 2 * d * f  # query, key, value, out; fc_in, fc_out
  norms = layers * 2 * d + d
  assert placed["total_bytes"] == 4 * (layers * projections + v * d + t * d + norms)
  split = lambda n, k: n // k if n % k == 0 else n  # An axis the mesh axis does not divide.
  # data=2 fsdp=2 tensor=2: projections over fsdp x tensor, wte [V, D] over tensor x fsdp, wpe
  # [T, D] over fsdp.
  assert placed["param_bytes"] == 4 * (
    layers * projections // 4 + split(v, 2) * d // 2 + t * d // 2 + norms
  )
  # tensor=8: the projections split 8 ways by heads or MLP units, wte by the vocabulary if 8
  # divides it, wpe (width over fsdp = 1) whole.
  assert tensor8["param_bytes"] == 4 * (layers * projections // 8 + split(v, 8) * d + t * d + norms)


def test_logical_specs_follow_the_rules_in_order_and_only_where_they_divide():
  sizes = {"data": 2, "fsdp": 2, "tensor": 4}
  rules = partitioning.RULES
  spec = lambda names, shape: partitioning.logical_spec(names, shape, rules, sizes)
  assert spec(("embed", "heads", "kv"), (64, 8, 8)) == P("fsdp", "tensor")
  assert spec(("heads", "kv", "embed"), (8, 8, 64)) == P("tensor", None, "fsdp")
  assert spec(("vocab", "embed"), (65, 64)) == P(None, "fsdp")  # 4 does not divide 65.
  assert spec(("embed", "heads", "kv"), (64, 6, 8)) == P("fsdp")  # Nor 6 heads.
  assert spec((None, "embed"), (32, 64)) == P(None, "fsdp")
  assert spec(("activation_batch", "activation_mlp"), (8, 16)) == P(("data", "fsdp"), "tensor")
  # An axis of size 1 splits nothing and is left out; a mesh axis serves one array axis only.
  assert (
    partitioning.logical_spec(
      ("embed", "mlp"), (64, 64), rules, {"data": 8, "fsdp": 1, "tensor": 1}
    )
    == P()
  )
  assert partitioning.logical_spec(
    ("mlp", "heads"), (64, 64), [("mlp", "tensor"), ("heads", "tensor")], sizes
  ) == P("tensor")


def test_models_name_their_parameters_and_scan_adds_the_layer_axis():
  kw = dict(vocab_size=50, block_size=16, num_layers=2, num_heads=2, embed_dim=16)
  tokens = np.zeros((1, 8), np.int32)
  axes = shardings.param_axes(GPT(**kw), [tokens])
  assert axes[("block_0", "self_attn", "query", "kernel")] == ("embed", "heads", "kv")
  assert axes[("block_1", "mlp", "fc_in", "kernel")] == ("embed", "mlp")
  assert axes[("block_1", "mlp", "fc_in", "bias")] == ("mlp",)
  assert axes[("wte", "embedding")] == ("vocab", "embed")
  assert ("ln_f", "scale") not in axes  # Unnamed: the FSDP heuristic places it.
  scanned = shardings.param_axes(GPT(**kw, scan_layers=True), [tokens])
  assert scanned[("layers", "self_attn", "query", "kernel")] == ("layers", "embed", "heads", "kv")
  # `init` returns the names in Flax's boxes; the train state holds the arrays.
  model = GPT(**kw)
  boxed = model.init(jax.random.key(0), tokens)["params"]["wte"]["embedding"]
  assert isinstance(boxed, nn.LogicallyPartitioned) and boxed.names == ("vocab", "embed")
  state = step_lib.create_train_state(model, optax.sgd(0.1), jax.random.key(0), tokens)
  assert isinstance(state.params["wte"]["embedding"], jax.Array)
  np.testing.assert_array_equal(state.params["wte"]["embedding"], boxed.value)


def test_unnamed_arrays_keep_the_fsdp_heuristic():
  axes = {("params", "w"): ("embed", "mlp")}
  abstract = {
    "params": {"w": jax.ShapeDtypeStruct((64, 128), np.float32)},
    "conv": jax.ShapeDtypeStruct((3, 3, 64, 128), np.float32),
  }
  specs = shardings.loop_specs(abstract, axes, partitioning.RULES, {"fsdp": 4, "tensor": 2})
  assert specs["params"]["w"] == P("fsdp", "tensor")
  assert specs["conv"] == shardings.fsdp_spec((3, 3, 64, 128), 4) == P(None, None, None, "fsdp")


@pytest.mark.parametrize(
  "rules, message",
  [
    ("heads=tensor", "must be a list of pairs"),
    ([["heads"]], "is not a \\(logical name, mesh axes\\) pair"),
    ([["heads", "model"]], "names mesh axes \\['model'\\]"),
    ([[3, "tensor"]], "is not a \\(logical name, mesh axes\\) pair"),
  ],
)
def test_bad_rules_are_refused_naming_the_fix(rules, message):
  with pytest.raises(ConfigError, match=message):
    shardings.check_rules(rules)


def test_rules_and_tensor_size_come_from_the_config():
  config = config_lib.base_config()
  assert config.parallel.mesh.tensor == 1
  config.parallel.rules = [["heads", None]]
  layout = parallel.make_layout(config.parallel)
  assert layout.rules == (("heads", None),)
  assert layout.mesh.axis_names == ("data", "fsdp", "tensor")
  config.parallel.strategy = "pmap"
  config.parallel.mesh.tensor = 2
  with pytest.raises(ConfigError, match="parallel.mesh.tensor must be 1"):
    parallel.make_layout(config.parallel)
  with pytest.raises(ConfigError, match="tensor=3"):
    mesh_layout.make_mesh(data=1, fsdp=1, tensor=3)


def test_activation_names_become_constraints_only_under_the_rules():
  x = np.ones((4, 8), np.float32)
  names = ("activation_batch", "activation_mlp")
  assert partitioning.constrain(x, names) is x  # Outside the rules: the array itself.
  mesh = mesh_layout.make_mesh(1, 1, 1)
  f = lambda x: partitioning.constrain(x * 2, names)
  assert "sharding_constraint" not in jax.jit(f).lower(x).as_text()
  with partitioning.sharding_rules(mesh, partitioning.RULES):
    # A new jit: one traced outside the rules would be reused from jit's cache.
    assert "sharding_constraint" in jax.jit(lambda x: f(x)).lower(x).as_text()
  # The jit layout traces its steps under the rules only where a tensor axis needs them.
  layout = mesh_layout.MeshLayout(mesh)
  assert layout._with_rules(f) is f


def test_axes_the_mesh_cannot_split_are_named_for_the_user():
  axes = {("q", "kernel"): ("embed", "heads", "kv"), ("wte",): ("vocab", "embed")}
  params = {
    "q": {"kernel": jax.ShapeDtypeStruct((64, 12, 8), np.float32)},  # 12 heads over tensor=8
    "wte": jax.ShapeDtypeStruct((50257, 64), np.float32),  # GPT-2's odd vocabulary
    "ln": jax.ShapeDtypeStruct((64,), np.float32),  # Unnamed: not reported.
  }
  sizes = {"data": 1, "fsdp": 1, "tensor": 8}
  assert shardings.whole_axes(params, axes, partitioning.RULES, sizes) == [
    "q/kernel: heads=12 over tensor",
    "wte: vocab=50257 over tensor",
  ]
  # Axes that divide, or rules over axes of one device, are not reported.
  assert shardings.whole_axes(params, axes, partitioning.RULES, {"fsdp": 2, "tensor": 1}) == []
