"""`jaxdl export --format stablehlo` and `jaxdl predict` (jaxdl.serving, jaxdl.predict): the
exported forward, loaded in a fresh process without jaxdl, gives the logits of `jaxdl eval`'s
forward to the bit at batch sizes 1 and 7; predict prepares files and text exactly as the
evaluation pipeline does; signature.json describes the real shapes; a sweep exports one member;
what cannot be served is refused.
"""

import json
import os
from pathlib import Path
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from jaxdl import cli, predict, serving, trainer
from jaxdl import config as config_lib
from jaxdl import workdir as workdir_lib
from jaxdl.checkpoint import Checkpointer
from jaxdl.data import image_folder
from jaxdl.errors import UserError
from jaxdl.train import lora as lora_lib
from jaxdl.train import param_paths
from jaxdl.train import step as step_lib
from tests.conftest import REPO

# The few lines signature.json and jaxdl.serving document, run where jaxdl is never imported.
FRESH_PROCESS = """
import sys
import numpy as np
from jax import export

directory, inputs_file, out_file = sys.argv[1:]
with open(f"{directory}/model.stablehlo", "rb") as f:
  forward = export.deserialize(bytearray(f.read()))
params = dict(np.load(f"{directory}/params.npz"))
inputs = np.load(inputs_file)
np.savez(out_file, **{name: np.asarray(forward.call(params, x)) for name, x in inputs.items()})
assert not any(m == "jaxdl" or m.startswith("jaxdl.") for m in sys.modules), "jaxdl imported"
"""

# A small CNN with BatchNorm and dropout, for a model whose evaluation differs from training.
BN_MODEL = """
import flax.linen as nn
from jaxdl.nn import BatchNorm, Classifier, Dropout, Flatten, Pool, Sequential


def bn_cnn(num_classes):
  return Sequential([
    nn.Conv(8, (3, 3)), BatchNorm(), nn.relu, Pool(4), Flatten(), Dropout(0.5),
    Classifier(num_classes),
  ])
"""


def _train(workdir, experiment, *overrides):
  config = config_lib.load_experiment(experiment)
  config_lib.apply_overrides(config, ["data.download=false", *overrides])
  trainer.train(config, workdir, show_progress=False)
  return workdir


def _export(workdir, out, *flags):
  assert cli.main(["export", str(workdir), "--format", "stablehlo", "--out", str(out), *flags]) == 0
  return out


def _eval_forward(workdir, *overrides):
  """(logits(batch) -> [B, ...] or [members, B, ...], setup, data): the forward `jaxdl eval
  WORKDIR *overrides` computes (jaxdl.trainer.evaluate_workdir: the run's model, kernels, layout
  and restored state, with step_lib.make_eval_step's parameters), its logits kept instead of
  summed into metrics."""
  config = workdir_lib.load_config(workdir)
  config_lib.apply_overrides(config, list(overrides))
  data = trainer.load_data(config)
  setup = trainer.build(config, data, training=False)
  checkpointer = Checkpointer(Path(workdir) / workdir_lib.CHECKPOINT_DIR, read_only=True)
  step = checkpointer.all_steps()[-1]
  loop = setup.layout.from_saved(checkpointer.restore(step, trainer.abstract_loop(setup)))
  checkpointer.close()
  lora = lora_lib.settings(config.model.get("lora"))

  def logits_step(state, batch):
    variables = {"params": step_lib.model_params(state, lora), **state.model_state}
    return setup.model.apply(variables, *setup.task.model_inputs(batch), train=False)

  forward = setup.layout.compile_eval(setup.runs.eval_step(logits_step))
  return lambda batch: forward(loop["state"], setup.layout.put_batch(batch)), setup, data


def _first_eval_batch(data, batch_size):
  return next(iter(data.eval_batches(batch_size=batch_size)))


def _fresh_logits(directory, inputs, tmp_path):
  """{name: logits} of the exported model on each of `inputs` {name: array}, computed in a new
  Python process that imports jax and numpy only."""
  np.savez(tmp_path / "inputs.npz", **inputs)
  subprocess.run(
    [sys.executable, "-c", FRESH_PROCESS, str(directory), "inputs.npz", "logits.npz"],
    cwd=tmp_path,
    check=True,
    env={**os.environ, "PYTHONPATH": ""},
  )
  return dict(np.load(tmp_path / "logits.npz"))


# ---------------------------------------------------------------- An MNIST CNN


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
  """The seed CNN after 8 steps with a moving average of its parameters (which evaluation, and so
  export, must use), exported; the eval forward and the first eval batches of sizes 1 and 7."""
  root = tmp_path_factory.mktemp("mnist")
  workdir = _train(
    root / "run",
    REPO / "experiments" / "mnist_cnn.py",
    "train.batch_size=32",
    "train.num_steps=8",
    "train.log_every_steps=8",
    "train.eval_every_steps=8",
    "train.ema_decay=0.5",
    "data.eval_batch_size=500",
  )
  out = _export(workdir, root / "exported")
  forward, setup, data = _eval_forward(workdir)
  batches = {f"b{n}": _first_eval_batch(data, n) for n in (1, 7)}
  return {
    "root": root,
    "workdir": workdir,
    "out": out,
    "setup": setup,
    "data": data,
    "batches": batches,
    "logits": {name: forward(batch) for name, batch in batches.items()},
  }


def test_exported_cnn_in_a_fresh_process_gives_the_eval_logits_to_the_bit(mnist, tmp_path):
  images = {name: batch["image"] for name, batch in mnist["batches"].items()}
  fresh = _fresh_logits(mnist["out"], images, tmp_path)
  for name, reference in mnist["logits"].items():
    assert fresh[name].shape == reference.shape
    assert np.array_equal(fresh[name], reference), name


def test_eval_forward_is_what_jaxdl_eval_scores(mnist):
  """The reference logits are those `jaxdl eval` reports on: its accuracy and loss over the whole
  test split follow from them (and from the exported model's, run in this process)."""
  step, metrics, _ = trainer.evaluate_workdir(mnist["workdir"])
  artifact = serving.load(str(mnist["out"]))
  correct, loss_sum, count = 0, 0.0, 0
  for batch in mnist["data"].eval_batches(batch_size=500):
    logits = artifact(batch["image"]).astype(np.float64)
    mask = batch["mask"]
    log_probs = (
      logits
      - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))[:, None]
      - logits.max(-1, keepdims=True)
    )
    correct += int(np.sum((logits.argmax(-1) == batch["label"]) & mask))
    loss_sum += float(-np.sum(log_probs[np.arange(len(mask)), batch["label"]] * mask))
    count += int(mask.sum())
  assert step == artifact.signature["step"] == 8
  assert count == metrics["eval/num_examples"]
  assert correct == round(metrics["eval/accuracy"] * count)
  assert loss_sum / count == pytest.approx(metrics["eval/loss"], rel=1e-5)


def test_signature_describes_the_real_shapes(mnist):
  signature = json.loads((mnist["out"] / serving.SIGNATURE_FILE).read_text())
  artifact = serving.load(str(mnist["out"]))
  assert signature["task"] == "classify"
  assert signature["inputs"] == [
    {"name": "image", "dtype": "float32", "shape": ["batch", 28, 28, 1]}
  ]
  assert signature["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
  assert signature["num_classes"] == 10
  assert signature["kernels"] == mnist["setup"].plan.kernels
  assert signature["platforms"] == ["cpu", "cuda"]
  assert tuple(artifact.exported.platforms) == ("cpu", "cuda")
  assert signature["preprocessing"] == {
    "kind": "image",
    "size": 28,
    "channels": 1,
    "color": "L",
    "resize_shorter_side": 28,
    "scale": "1/255",
    "mean": None,
    "std": None,
  }
  # The exported program takes what the signature says, with any batch.
  *param_avals, input_aval = artifact.exported.in_avals
  assert str(input_aval.shape[0]) == "batch" and input_aval.shape[1:] == (28, 28, 1)
  assert [a.shape for a in param_avals] == [
    artifact.params[k].shape for k in sorted(artifact.params)
  ]
  # params.npz holds the moving average, as evaluation uses it, not the trained parameters.
  saved = Checkpointer(mnist["workdir"] / "checkpoints", read_only=True)
  state = saved.restore_as_saved(8)["state"]
  saved.close()
  ema = serving.flat_params({"params": state["ema_params"]})
  assert ema.keys() == artifact.params.keys()
  for name, array in ema.items():
    assert np.array_equal(artifact.params[name], array), name
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(ema.values(), serving.flat_params({"params": state["params"]}).values())
  )


def test_predict_on_png_files_gives_the_classes_of_the_eval_logits(mnist, tmp_path, capsys):
  batch = mnist["batches"]["b7"]
  pixels = mnist["data"].test.image[:7, ..., 0]  # uint8, as the IDX file holds them.
  files = []
  for i, image in enumerate(pixels):
    Image.fromarray(image).save(tmp_path / f"digit{i}.png")
    files.append(str(tmp_path / f"digit{i}.png"))
  steps = json.loads((mnist["out"] / serving.SIGNATURE_FILE).read_text())["preprocessing"]
  np.testing.assert_array_equal(predict.load_images(files, steps), batch["image"])
  assert cli.main(["predict", str(mnist["out"]), *files, "--top-k", "3", "--logits"]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  reference = mnist["logits"]["b7"]
  assert [line["input"] for line in lines] == files
  for line, logits in zip(lines, reference):
    assert np.array_equal(np.asarray(line["logits"], np.float32), logits)
    assert [c["index"] for c in line["top_k"]] == list(np.argsort(-logits, kind="stable")[:3])
    assert [c["class"] for c in line["top_k"]] == [str(c["index"]) for c in line["top_k"]]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(
      [c["probability"] for c in line["top_k"]], probs[np.argsort(-probs)[:3]], rtol=1e-6
    )


def test_out_folder_in_use_is_refused_without_overwrite(mnist, tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  args = ["export", str(mnist["workdir"]), "--format", "stablehlo", "--out", str(out)]
  assert cli.main(args) == 2
  first_line = capsys.readouterr().err.splitlines()[0]
  assert "is not empty" in first_line and "--overwrite" in first_line
  assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
  (out / serving.TOKENIZER_FILE).write_text("{}")  # An earlier export's, of a text model.
  assert cli.main([*args, "--overwrite"]) == 0
  assert sorted(p.name for p in out.iterdir()) == sorted(
    ["notes.txt", serving.MODEL_FILE, serving.PARAMS_FILE, serving.SIGNATURE_FILE]
  )


def test_export_flags_that_do_not_apply_are_refused(mnist, tmp_path, capsys):
  base = ["export", str(mnist["workdir"]), "--out", str(tmp_path / "o")]
  assert cli.main([*base, "--format", "hf", "--kernels", "plain"]) == 2
  assert "--format stablehlo" in capsys.readouterr().err.splitlines()[0]
  assert cli.main([*base, "--format", "stablehlo", "--platforms", "cpu,gpu"]) == 2
  assert "cpu, cuda, rocm, tpu" in capsys.readouterr().err.splitlines()[0]
  assert cli.main(["predict", str(mnist["root"]), "x.png"]) == 2
  assert "not an exported model" in capsys.readouterr().err.splitlines()[0]
  assert cli.main(["predict", str(mnist["out"])]) == 2
  assert "No inputs: give image files" in capsys.readouterr().err.splitlines()[0]


# ---------------------------------------------------------------- A sweep, with BatchNorm


@pytest.fixture(scope="module")
def bn_sweep(tmp_path_factory):
  """Two seeds of a CNN with BatchNorm and dropout trained side by side, member 1 exported."""
  root = tmp_path_factory.mktemp("sweep")
  (root / "bn_model.py").write_text(BN_MODEL)
  workdir = _train(
    root / "run",
    REPO / "experiments" / "mnist_cnn.py",
    f"model.cls={root / 'bn_model.py'}:bn_cnn",
    "sweep.seeds=2",
    "train.batch_size=32",
    "train.num_steps=4",
    "train.log_every_steps=4",
    "train.eval_every_steps=4",
    "train.ema_decay=0.5",
    "data.eval_batch_size=500",
  )
  return {"root": root, "workdir": workdir, "out": _export(workdir, root / "m1", "--member", "1")}


@pytest.mark.slow  # Trains and compiles a 2-member BatchNorm sweep: ~13 s on 2 cores.
def test_a_sweep_member_exports_its_own_eval_forward(bn_sweep, tmp_path, capsys):
  """The member as its own run computes it: `jaxdl eval sweep.method=map`'s logits to the bit. The
  sweep's default, vmap, evaluates the members side by side in one batched convolution, whose
  rounding differs in the last bits."""
  by_member, _, data = _eval_forward(bn_sweep["workdir"], "sweep.method=map")
  side_by_side = _eval_forward(bn_sweep["workdir"])[0]
  batches = {f"b{n}": _first_eval_batch(data, n) for n in (1, 7)}
  fresh = _fresh_logits(bn_sweep["out"], {k: b["image"] for k, b in batches.items()}, tmp_path)
  for name, batch in batches.items():
    both = by_member(batch)  # [members, B, classes]
    assert np.array_equal(fresh[name], both[1]), name
    assert not np.array_equal(both[0], both[1])
    np.testing.assert_allclose(fresh[name], side_by_side(batch)[1], rtol=1e-5, atol=1e-6)
  signature = json.loads((bn_sweep["out"] / serving.SIGNATURE_FILE).read_text())
  assert signature["member"] == 1
  assert any(name.startswith("batch_stats/") for name in serving.load(str(bn_sweep["out"])).params)
  args = ["export", str(bn_sweep["workdir"]), "--format", "stablehlo", "--out", str(tmp_path / "x")]
  assert cli.main([*args, "--member", "2"]) == 2
  assert "members 0 to 1" in capsys.readouterr().err.splitlines()[0]


def test_a_task_without_a_forward_to_serve_is_refused(tmp_path, capsys):
  config = config_lib.load_experiment(REPO / "experiments" / "reverse_transformer.py")
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(config_lib.to_json(config))
  args = ["export", str(tmp_path), "--format", "stablehlo", "--out", str(tmp_path / "out")]
  assert cli.main(args) == 2
  assert "seq2seq task; --format stablehlo serves classifiers" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- Image folders


def _image_folder(root):
  """train/ and val/ of two classes, RGB images of odd sizes (so they are resized and cropped)."""
  rng = np.random.default_rng(0)
  files = {"train": [], "val": []}
  for split, count in (("train", 3), ("val", 3)):
    for name in ("cat", "dog"):
      (root / split / name).mkdir(parents=True)
      for i in range(count):
        height, width = rng.integers(12, 40, size=2)
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        path = root / split / name / f"{i}.png"
        Image.fromarray(pixels).save(path)
        files[split].append(str(path))
  return files


@pytest.mark.parametrize("streaming", [False, True])
def test_predict_prepares_images_as_the_image_folder_evaluation_does(tmp_path, streaming):
  from jaxdl.train import tasks  # pylint: disable=g-import-not-at-top

  files = _image_folder(tmp_path)
  data = image_folder.load_image_folder(
    str(tmp_path), image_size=16, augment="none", normalize=True, streaming=streaming
  )
  steps = predict.preprocessing(data, tasks.make_task(data), data.example_batch(1)["image"])
  assert steps["mean"] is not None and steps["resize_shorter_side"] == (18 if streaming else 16)
  batch = _first_eval_batch(data, len(files["val"]))
  assert np.array_equal(predict.load_images(files["val"], steps), batch["image"])
  assert predict.class_names(data, config_lib.from_json('{"data": {"name": "image_folder"}}')) == [
    "cat",
    "dog",
  ]


# ---------------------------------------------------------------- Text


FRESH_WORDS = ("great", "moving", "sharp", "funny", "bold", "classic", "loved", "warm")
ROTTEN_WORDS = ("dull", "boring", "long", "loud", "flat", "hated", "tired", "weak")


def _reviews_csv(path):
  """80 short reviews, fresh ones from FRESH_WORDS and rotten ones from ROTTEN_WORDS."""
  rng = np.random.default_rng(0)
  lines = ["category,text,movie_name,has_plot_and_reviews"]
  for i in range(80):
    fresh = i % 2 == 0
    words = rng.choice(FRESH_WORDS if fresh else ROTTEN_WORDS, size=rng.integers(2, 9))
    lines.append(f"{'fresh' if fresh else 'rotten'},{' '.join(words)} film {i},m,False")
  path.write_text("\n".join(lines) + "\n")
  return path


@pytest.fixture(scope="module")
def reviews_run(tmp_path_factory):
  """A small bidirectional LSTM with attention pooling classifying reviews, 4 steps, exported."""
  root = tmp_path_factory.mktemp("reviews")
  workdir = _train(
    root / "run",
    REPO / "experiments" / "reviews_lstm_attention.py",
    f"data.dir={_reviews_csv(root / 'reviews.csv')}",
    "data.max_length=12",
    "data.vocab_size=40",
    "data.test_fraction=0.3",
    "model.embed_dim=8",
    "model.features=8",
    "model.attention_dim=8",
    "train.batch_size=8",
    "train.num_steps=4",
    "train.log_every_steps=4",
    "train.eval_every_steps=4",
  )
  return {"workdir": workdir, "out": _export(workdir, root / "exported")}


@pytest.mark.slow  # Compiling the bidirectional LSTM (train, eval, export): ~30 s on 2 cores.
def test_text_classifier_exports_and_predicts_as_evaluation_does(reviews_run, tmp_path, capsys):
  from jaxdl.data import reviews  # pylint: disable=g-import-not-at-top

  forward, _, data = _eval_forward(reviews_run["workdir"])
  batches = {f"b{n}": _first_eval_batch(data, n) for n in (1, 7)}
  fresh = _fresh_logits(reviews_run["out"], {k: b["tokens"] for k, b in batches.items()}, tmp_path)
  for name, batch in batches.items():
    assert np.array_equal(fresh[name], forward(batch)), name
  signature = json.loads((reviews_run["out"] / serving.SIGNATURE_FILE).read_text())
  assert signature["inputs"] == [{"name": "tokens", "dtype": "int32", "shape": ["batch", 12]}]
  assert signature["classes"] == ["rotten", "fresh"]
  assert signature["preprocessing"]["first"] == "cls"
  # Texts as the reviews pipeline encodes them ([CLS], cut, [PAD]), one longer than 12 tokens.
  texts = ["great moving film", "dull and long, so long, far too long and loud and flat", "warm"]
  artifact = serving.load(str(reviews_run["out"]))
  rows = reviews.encode_reviews(data.tokenizer, texts, 12)
  np.testing.assert_array_equal(
    predict.encode_texts(texts, artifact.tokenizer, signature["preprocessing"]), rows
  )
  text_file = tmp_path / "texts.txt"
  text_file.write_text("\n".join(texts[1:]) + "\n")
  args = ["predict", str(reviews_run["out"]), texts[0], "--text-file", str(text_file), "--logits"]
  assert cli.main(args) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  reference = forward({"tokens": rows, "label": np.zeros(3, np.int32), "mask": np.ones(3, bool)})
  assert [line["input"] for line in lines] == texts
  for line, logits in zip(lines, reference):
    assert np.array_equal(np.asarray(line["logits"], np.float32), logits)
    assert [c["class"] for c in line["top_k"]] == [
      ["rotten", "fresh"][i] for i in np.argsort(-logits)
    ]


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
  """A one-layer character GPT on the shipped Shakespeare, 4 steps, context 16, exported."""
  root = tmp_path_factory.mktemp("gpt")
  workdir = _train(
    root / "run",
    REPO / "experiments" / "shakespeare_char_gpt.py",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.embed_dim=16",
    "model.block_size=16",
    "model.dropout_rate=0.0",
    "data.block_size=16",
    "data.val_fraction=0.002",  # About 2,000 characters: a quick evaluation.
    "data.eval_batch_size=64",
    "train.batch_size=8",
    "train.num_steps=4",
    "train.log_every_steps=4",
    "train.eval_every_steps=4",
    "train.checkpoint_every_steps=4",
    "optimizer.warmup_steps=0",
  )
  return {"workdir": workdir, "out": _export(workdir, root / "exported")}


@pytest.mark.slow  # Trains, evaluates and exports a char GPT: ~10-14 s on 2 cores.
def test_language_model_exports_and_continues_text_greedily(gpt_run, tmp_path, capsys):
  from jaxdl import sampling  # pylint: disable=g-import-not-at-top

  forward, setup, data = _eval_forward(gpt_run["workdir"])
  batches = {f"b{n}": _first_eval_batch(data, n) for n in (1, 7)}
  inputs = {k: setup.task.model_inputs(b)[0] for k, b in batches.items()}
  fresh = _fresh_logits(gpt_run["out"], inputs, tmp_path)
  for name, batch in batches.items():
    assert np.array_equal(fresh[name], forward(batch)), name
  signature = json.loads((gpt_run["out"] / serving.SIGNATURE_FILE).read_text())
  vocab = data.tokenizer.vocab_size
  assert signature["inputs"] == [{"name": "tokens", "dtype": "int32", "shape": ["batch", 16]}]
  assert signature["outputs"] == [
    {"name": "logits", "dtype": "float32", "shape": ["batch", 16, vocab]}
  ]
  # The greedy continuation is `jaxdl generate --temperature 0`'s while the context fits.
  prompts = ["ROMEO:", "To be, or not"]
  assert cli.main(["predict", str(gpt_run["out"]), *prompts, "--max-new-tokens", "6"]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  params = param_paths.unflatten(serving.load(str(gpt_run["out"])).params)["params"]
  for prompt, line in zip(prompts, lines):
    expected = sampling.generate(
      setup.model, params, data.tokenizer.encode(prompt), max_new_tokens=6, temperature=0
    )
    assert line["continuation"] == data.tokenizer.decode(expected)
    assert line["next_tokens"][0]["id"] == expected[0]


def test_a_forward_that_needs_the_batch_size_is_refused():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class HalvesTheBatch(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(2)(x[: x.shape[0] // 2] if x.shape[0] > 3 else x)

  model = HalvesTheBatch()
  x = np.zeros((4, 3), np.float32)
  params = serving.flat_params(model.init(jax.random.key(0), x))
  with pytest.raises(UserError, match="^The model's forward depends on the batch size"):
    serving.export_forward(model, params, x)


def test_a_missing_flatbuffers_is_one_line_naming_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "flatbuffers", None)  # `import flatbuffers` fails.
  with pytest.raises(UserError, match=r"pip install 'jaxdl\[export\]'$"):
    serving.load(str(tmp_path))
