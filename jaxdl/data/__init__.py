"""jaxdl's data layer: loading datasets into memory and batching them with Grain.

Datasets are found by name in `DATASETS`, a plain dict from name to loader. A loader takes
`(data_dir: str = "", *, allow_download: bool | None = None)` and returns a `LoadedData`; adding a
dataset means adding one entry.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxdl.data.mnist import load_mnist
from jaxdl.data.pipeline import LoadedData, Split, eval_batches, steps_per_epoch, train_batches
from jaxdl.errors import DataError

__all__ = [
    "DATASETS",
    "LoadedData",
    "Split",
    "eval_batches",
    "load_dataset",
    "steps_per_epoch",
    "train_batches",
]

DATASETS: dict[str, Callable[..., LoadedData]] = {
    "mnist": load_mnist,
}


def load_dataset(
    name: str, data_dir: str = "", *, allow_download: bool | None = None) -> LoadedData:
  """Loads the dataset registered as `name` (see each loader for where it looks for files).

  Raises:
    DataError: `name` is not registered, or the loader cannot find or read the data.
  """
  loader = DATASETS.get(name)
  if loader is None:
    raise DataError(
        f"Unknown dataset {name!r}. Known datasets: {', '.join(sorted(DATASETS))}; use one of "
        f"these names.")
  return loader(data_dir, allow_download=allow_download)
