"""Checkpoint files as {name: numpy array}: safetensors without torch, torch's .bin/.pth with it.

A checkpoint is a file or a folder (or a Hugging Face cache entry, models--NAME, read at the
snapshot its refs/main names). A folder is read the way `transformers` reads one: its
`config.json`, then `model.safetensors`, `model.safetensors.index.json` (shards), or
`pytorch_model.bin` (and its index). A file is a `.safetensors`, or a torch pickle (`.bin`, `.pt`,
`.pth`), loaded with `weights_only=True` so that opening it runs no code from it.
"""

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from jaxdl.errors import CheckpointError, ConfigError

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")
# Wrappers some training scripts save a state dict in ({"state_dict": {...}}, {"model": {...}}).
_WRAPPERS = ("state_dict", "model", "model_state_dict")


def require(module: str, extra: str, why: str) -> Any:
  """`import module`, or a one-line error naming the pip install that brings it."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ConfigError(
      f"{why} needs the package {module!r}, which is not installed; run: pip install "
      f"'jaxdl[{extra}]'"
    ) from None


def model_folder(path: str | Path) -> Path:
  """`path` itself, or for a Hugging Face cache entry (~/.cache/huggingface/hub/models--gpt2,
  holding refs/ and snapshots/) the snapshot its refs/main names, or its only snapshot."""
  path = Path(path).expanduser()
  snapshots = path / "snapshots"
  if not snapshots.is_dir():
    return path
  main = path / "refs" / "main"
  if main.is_file() and (snapshots / main.read_text().strip()).is_dir():
    return snapshots / main.read_text().strip()
  found = sorted(p for p in snapshots.iterdir() if p.is_dir())
  if len(found) == 1:
    return found[0]
  raise CheckpointError(
    f"{str(path)!r} is a Hugging Face cache entry with {len(found)} snapshots and no refs/main; "
    f"point at one of them: {[str(p) for p in found[:5]]}."
  )


def read_config(path: str | Path) -> dict[str, Any] | None:
  """The folder's config.json as a dict; None for a single file or a folder without one."""
  path = model_folder(path)
  if path.is_dir() and (path / CONFIG).is_file():
    return json.loads((path / CONFIG).read_text())
  return None


def weight_files(path: str | Path) -> list[Path]:
  """The files holding a checkpoint's tensors (several for a sharded one)."""
  path = model_folder(path)
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise CheckpointError(
      f"Pretrained checkpoint {str(path)!r} does not exist; give the path of a Hugging Face or "
      "timm model folder, or of a .pth or .safetensors file (nothing is downloaded)."
    )
  for index in (SAFETENSORS_INDEX, TORCH_BIN_INDEX):
    if (path / index).is_file():
      shards = json.loads((path / index).read_text())["weight_map"].values()
      return [path / name for name in dict.fromkeys(shards)]
  for single in (SAFETENSORS, TORCH_BIN):
    if (path / single).is_file():
      return [path / single]
  found = sorted(p.name for p in path.iterdir())[:10]
  raise CheckpointError(
    f"Pretrained checkpoint folder {str(path)!r} holds no weights: expected {SAFETENSORS}, "
    f"{SAFETENSORS_INDEX} or {TORCH_BIN} (it holds {found}). Point at a Hugging Face model "
    "folder, or at a .safetensors/.pth file."
  )


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint at `path` (a file or a folder), by name."""
  tensors: dict[str, np.ndarray] = {}
  for file in weight_files(path):
    tensors.update(_read_file(file))
  return tensors


def _read_file(file: Path) -> dict[str, np.ndarray]:
  if file.suffix == ".safetensors":
    safetensors = require("safetensors", "hf", "Reading .safetensors files")
    with safetensors.safe_open(str(file), framework="numpy") as f:
      return {name: f.get_tensor(name) for name in f.keys()}
  if file.suffix in _TORCH_SUFFIXES:
    return _read_torch(file)
  raise CheckpointError(
    f"{str(file)!r}: unknown checkpoint file type {file.suffix!r}; give a .safetensors, "
    ".bin, .pt or .pth file, or a Hugging Face model folder."
  )


def _read_torch(file: Path) -> dict[str, np.ndarray]:
  torch = require("torch", "torch", f"Reading {file.name} (a torch pickle)")
  state = torch.load(str(file), map_location="cpu", weights_only=True)
  for wrapper in _WRAPPERS:
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  if not isinstance(state, dict):
    raise CheckpointError(
      f"{str(file)!r} holds a {type(state).__name__}, not a state dict; save the model's "
      "state_dict() rather than the model."
    )
  out = {}
  for name, tensor in state.items():
    name = name.removeprefix("module.")  # Saved from DataParallel / DistributedDataParallel.
    if tensor.dtype == torch.bfloat16:
      out[name] = tensor.float().numpy().astype(np.dtype("bfloat16"))
    else:
      out[name] = tensor.detach().cpu().numpy()
  return out


def write_safetensors(tensors: dict[str, np.ndarray], file: str | Path) -> None:
  """`tensors` as a .safetensors file that transformers (and safetensors.torch) read."""
  safetensors_numpy = require("safetensors.numpy", "hf", "Writing .safetensors files")
  contiguous = {name: np.asarray(array, order="C") for name, array in tensors.items()}
  safetensors_numpy.save_file(contiguous, str(file), metadata={"format": "pt"})


def write_torch(tensors: dict[str, np.ndarray], file: str | Path) -> None:
  """`tensors` as a torch state dict pickle (.pth), what `load_state_dict` takes."""
  torch = require("torch", "torch", "Writing .pth files")
  torch.save({name: torch.from_numpy(np.array(a)) for name, a in tensors.items()}, str(file))
