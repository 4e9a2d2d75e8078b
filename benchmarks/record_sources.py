"""Training batches per second from the record sources (data.name=hf | parquet | arrayrecord)
against the same MNIST images held in memory from the IDX files, measured in one run.

    python benchmarks/record_sources.py [--mnist ../shared/data/mnist] [--batches 1000]

Writes MNIST (train and test) as a Hugging Face dataset (save_to_disk, images as uint8 lists), as
Parquet files (images as PNG bytes) and as ArrayRecord shards (`jaxdl data convert`, raw uint8)
into a temporary folder, loads each with data.cache=memory (decoded once at load) and
data.cache=none (read and decoded batch by batch), and times the load and the Grain pipeline
(batch 64, 2 reader threads) as the trainer consumes it.
Needs `pip install -e ".[datasets,parquet]"`.
"""

import argparse
import io
import os
import tempfile
import time

from jaxdl import data as data_lib
from jaxdl.data import convert
from jaxdl.data.mnist import load_mnist


def _write_sources(mnist, folder: str) -> dict[str, tuple[str, str, dict]]:
  import datasets
  from PIL import Image
  import pyarrow as pa
  import pyarrow.parquet as pq

  def png(image_HW):
    out = io.BytesIO()
    Image.fromarray(image_HW).save(out, format="PNG")
    return out.getvalue()

  splits = {"train": mnist.train, "test": mnist.test}
  datasets.DatasetDict(
    {
      name: datasets.Dataset.from_dict({"image": list(s.image[..., 0]), "label": s.label})
      for name, s in splits.items()
    }
  ).save_to_disk(os.path.join(folder, "hf"))
  for name, split in splits.items():
    table = pa.table({"image": [png(x) for x in split.image[..., 0]], "label": split.label})
    pq.write_table(table, os.path.join(folder, f"{name}.parquet"))
  convert.convert(
    "mnist", [f"dir={mnist.source['path']}"], os.path.join(folder, "ar"), show_progress=False
  )
  return {
    "hf (uint8 lists)": ("hf", os.path.join(folder, "hf"), {}),
    "parquet (PNG)": (
      "parquet",
      folder,
      {"train_files": "train.parquet", "eval_files": "test.parquet"},
    ),
    "arrayrecord (raw)": ("arrayrecord", os.path.join(folder, "ar"), {}),
  }


def _batches_per_second(dataset, num_batches: int) -> float:
  batches = iter(dataset.train_batches(batch_size=64, seed=0, num_threads=2, prefetch=4))
  for _ in range(20):  # Threads started, buffers full.
    next(batches)
  start = time.perf_counter()
  for _ in range(num_batches):
    next(batches)
  return num_batches / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mnist", default="../shared/data/mnist", help="the MNIST IDX files")
  parser.add_argument("--batches", type=int, default=1000, help="batches timed per source")
  args = parser.parse_args(argv)
  mnist = load_mnist(args.mnist, allow_download=False)
  os.environ["HF_DATASETS_OFFLINE"] = "1"
  baseline = _batches_per_second(mnist, args.batches)
  print(f"{'source':20s} {'cache':7s} {'load s':>7s} {'batches/s':>10s} {'/ IDX':>6s}")
  print(f"{'IDX in memory':20s} {'-':7s} {'-':>7s} {baseline:10.0f} {1.0:6.2f}")
  with tempfile.TemporaryDirectory() as folder:
    for label, (name, path, options) in _write_sources(mnist, folder).items():
      for cache in ("memory", "none"):
        start = time.perf_counter()
        dataset = data_lib.load_dataset(name, path, cache=cache, **options)
        load_s = time.perf_counter() - start
        rate = _batches_per_second(
          dataset, args.batches if cache == "memory" else args.batches // 4
        )
        print(f"{label:20s} {cache:7s} {load_s:7.1f} {rate:10.0f} {rate / baseline:6.2f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
