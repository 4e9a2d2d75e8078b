"""Small learnable data sets and runs shared by the record-source tests (hf, parquet)."""

import io

import flax.linen as nn
import numpy as np

from jaxdl import config as config_lib
from jaxdl import data as data_lib
from jaxdl import metrics as metrics_lib
from jaxdl import trainer
from tests.conftest import REPO

NUM_CLASSES = 4
NUM_TRAIN, NUM_TEST = 256, 64


class TinyNet(nn.Module):
  """A strided convolution and a dense layer: compiles and trains in moments."""

  num_classes: int

  @nn.compact
  def __call__(self, x_BHWC, train=False):
    del train
    x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2))(x_BHWC))
    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


def images_and_labels(count, seed, size=8):
  """uint8 [count, size, size] images whose class (0..3) is the quadrant that is brighter, plus
  noise; and int64 labels."""
  rng = np.random.default_rng(seed)
  label = rng.integers(0, NUM_CLASSES, count)
  image = rng.integers(0, 120, (count, size, size))
  half = size // 2
  for i, c in enumerate(label):
    top, left = divmod(int(c), 2)
    image[i, top * half : (top + 1) * half, left * half : (left + 1) * half] += 120
  return image.astype(np.uint8), label


def png_bytes(image_HW):
  from PIL import Image

  buffer = io.BytesIO()
  Image.fromarray(image_HW).save(buffer, "PNG")
  return buffer.getvalue()


def texts(count, seed):
  """Short sentences from a small vocabulary, for language modelling and classification."""
  rng = np.random.default_rng(seed)
  words = np.array(["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "home"])
  return [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(count)]


IMAGE_RUN = [
  "model.cls=tests.records_fixtures:TinyNet",
  f"model.num_classes={NUM_CLASSES}",
  "train.batch_size=16",
  "train.log_every_steps=4",
  "train.eval_every_steps=8",
  "train.checkpoint_every_steps=4",
  "data.eval_batch_size=64",
]
TEXT_RUN = [
  "model.num_layers=1",
  "model.num_heads=2",
  "model.embed_dim=16",
  "model.block_size=16",
  "data.block_size=16",
  "train.batch_size=8",
  "data.eval_batch_size=64",
  "train.log_every_steps=4",
  "train.eval_every_steps=8",
  "train.checkpoint_every_steps=4",
  "optimizer.warmup_steps=2",
  "optimizer.decay_steps=16",  # Fixed, so a stopped and resumed run follows the same schedule.
]


def train(workdir, kind, dataset, *overrides):
  """Trains an image ("image") or character-level GPT ("text") run on data.name=`dataset` in
  `workdir`; `overrides` may set the dataset's options."""
  experiment = "mnist_cnn.py" if kind == "image" else "shakespeare_char_gpt.py"
  config = config_lib.load_experiment(REPO / "experiments" / experiment)
  # The experiment's dataset gives way to `dataset`, keeping the options both take.
  known = data_lib.COMMON_KEYS | set(data_lib.DATASETS[dataset].options)
  for key in [key for key in config.data.keys() if key not in known]:
    del config.data[key]
  config.data.name = dataset
  data_lib.complete_config(config.data)
  config_lib.apply_overrides(config, [*(IMAGE_RUN if kind == "image" else TEXT_RUN), *overrides])
  return trainer.train(config, workdir, show_progress=False)


def logged(workdir):
  """Every logged record, `perf/` timings left out, in order."""
  return [
    {k: v for k, v in record.items() if not k.startswith("perf/")}
    for record in metrics_lib.read_metrics(workdir)
  ]


def straight_again_and_resumed(tmp_path_factory, kind, dataset, steps, *overrides):
  """{name: logged records} of a run of 2 * `steps`, the same again, and one stopped at `steps`
  and resumed to 2 * `steps`."""
  root = tmp_path_factory.mktemp(f"{kind}_runs")
  for name in ("straight", "again"):
    train(root / name, kind, dataset, f"train.num_steps={2 * steps}", *overrides)
  first = train(root / "resumed", kind, dataset, f"train.num_steps={steps}", *overrides)
  assert first.step == steps
  train(root / "resumed", kind, dataset, f"train.num_steps={2 * steps}", *overrides)
  return {name: logged(root / name) for name in ("straight", "again", "resumed")}
