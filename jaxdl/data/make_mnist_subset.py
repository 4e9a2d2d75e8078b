"""Builds the MNIST subset shipped in jaxdl/data/mnist_subset/.

The subset lets examples and tests run with no network and no data directory. It is real MNIST:
the first `--num-train` training and first `--num-test` test examples of the full set, in file
order (MNIST's files are not sorted by class, so a prefix is close to class-balanced), written as
the four canonical gzip IDX files. The source is checked against the known SHA-256 digests of the
full set first, so the subset cannot silently come from other data.

The shipped copy was made with

  python -m jaxdl.data.make_mnist_subset --src ../shared/data/mnist \\
      --out jaxdl/data/mnist_subset --num-train 10000 --num-test 2000

Output is byte-identical across runs (gzip with mtime 0 and no file name in its header), so
rebuilding it leaves the repository unchanged.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys

import numpy as np

from jaxdl.data import download, mnist
from jaxdl.data.idx import read_idx, write_idx
from jaxdl.errors import DataError


def build_subset(src: Path, out: Path, num_train: int, num_test: int) -> dict[str, np.ndarray]:
  """Writes the first examples of each split of the full set in `src` to `out`.

  Returns the subset's label arrays by split, for reporting.
  """
  found, missing = mnist.find_files(src)
  if missing:
    raise DataError(
      f"{str(src)!r} lacks the MNIST files {', '.join(missing)}; pass --src with the full set."
    )
  for role, path in found.items():
    name = mnist.FILES[role]
    if download.content_sha256(path) != mnist.SHA256[name]:
      raise DataError(
        f"{str(path)!r} is not the genuine full MNIST {name} (SHA-256 mismatch); "
        f"the subset must be cut from the known-good set."
      )

  out.mkdir(parents=True, exist_ok=True)
  labels = {}
  for split, count in (("train", num_train), ("test", num_test)):
    for kind in ("image", "label"):
      role = f"{split}_{kind}"
      array = read_idx(found[role])
      if not 0 < count <= len(array):
        raise DataError(f"Asked for {count} {split} examples; the full set has {len(array)}.")
      write_idx(out / f"{mnist.FILES[role]}.gz", array[:count])
      if kind == "label":
        labels[split] = array[:count]
  return labels


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--src", type=Path, required=True, help="directory with the full MNIST set")
  parser.add_argument("--out", type=Path, required=True, help="directory to write the subset to")
  parser.add_argument("--num-train", type=int, default=10_000)
  parser.add_argument("--num-test", type=int, default=2_000)
  args = parser.parse_args(argv)
  try:
    labels = build_subset(args.src, args.out, args.num_train, args.num_test)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  total = 0
  for name in sorted(os.listdir(args.out)):
    size = (args.out / name).stat().st_size
    total += size
    print(f"{name}: {size} bytes")
  print(f"total: {total} bytes")
  for split, label in labels.items():
    counts = np.bincount(label, minlength=mnist.NUM_CLASSES)
    print(f"{split} class counts (0-9): {counts.tolist()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
