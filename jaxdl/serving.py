"""The serving artifact: what `jaxdl export WORKDIR --format stablehlo --out DIR` writes and
`jaxdl predict DIR ...` (jaxdl.predict) reads.

    DIR/model.stablehlo  the evaluation forward, (params, inputs) -> logits, serialised by
                         jax.export with a symbolic batch dimension, lowered for several platforms
    DIR/params.npz       its parameters, {"params/Conv_0/kernel": array, "batch_stats/...": ...}
    DIR/signature.json   inputs and outputs (shapes with "batch"), the task, the classes, the
                         preprocessing predict applies, the run's step, jaxdl's and jax's versions
    DIR/tokenizer.json   text models: the run's tokenizer (jaxdl.data.tokenizers)

The parameters travel beside the program, not inside it, so the artifact stays small to load and
its weights can be read or swapped with numpy. It runs with jax and numpy alone, without jaxdl:

    import numpy as np
    from jax import export
    with open("DIR/model.stablehlo", "rb") as f:
      forward = export.deserialize(bytearray(f.read()))
    params = dict(np.load("DIR/params.npz"))
    logits = forward.call(params, inputs)  # inputs as signature.json describes, any batch size

The forward is the one `jaxdl eval` evaluates: the model in evaluation mode (no dropout, BatchNorm's
running statistics) with the moving average of the parameters when the run keeps one and LoRA's
adapters merged, under the kernel set `jaxdl eval` settles on the exporting machine (or the one
`--kernels` names). On one CPU device its logits equal `jaxdl eval`'s to the bit at the same batch
size (XLA may round a product differently at another batch size, as `jaxdl eval` itself would). A
sweep's member is exported as its own run computes it, which `jaxdl eval sweep.method=map`
reproduces to the bit; the default vmap evaluates the members side by side, rounding differently.
"""

import dataclasses
import importlib.metadata
import json
from typing import Any

import jax
import numpy as np

from jaxdl import paths
from jaxdl.errors import CheckpointError, UserError
from jaxdl.train import param_paths

MODEL_FILE = "model.stablehlo"
PARAMS_FILE = "params.npz"
SIGNATURE_FILE = "signature.json"
TOKENIZER_FILE = "tokenizer.json"
FILES = (MODEL_FILE, PARAMS_FILE, SIGNATURE_FILE, TOKENIZER_FILE)
FORMAT = "jaxdl.stablehlo/1"  # signature.json's "format": what predict knows how to read.

# jax.export lowers for a platform without its device; a GPU or TPU host then runs the artifact
# as it is. cpu and cuda by default: one module serves both (lowering rules rarely differ).
DEFAULT_PLATFORMS = ("cpu", "cuda")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# Tasks whose evaluation forward is one call from inputs to logits, and what predict makes of it.
SERVED_TASKS = ("classify", "lm")


def flat_params(variables: dict[str, Any]) -> dict[str, np.ndarray]:
  """The variables `model.apply` takes as {"collection/module/.../name": numpy array}: the form of
  params.npz and of the exported forward's first argument."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    keys = [getattr(k, "key", None) for k in path]
    if not all(isinstance(k, str) and k and "/" not in k for k in keys):
      raise UserError(
        f"Variable {jax.tree_util.keystr(path)} is not under a nest of named dicts, which "
        "params.npz needs (names joined by '/'); this model cannot be exported as stablehlo."
      )
    array = np.asarray(leaf)
    if array.dtype.kind not in "biuf":
      raise UserError(
        f"Variable {'/'.join(keys)} is {array.dtype}, which a .npz file cannot hold; export a "
        "model with float32 parameters."
      )
    flat["/".join(keys)] = array
  return flat


def check_platforms(platforms: Any) -> tuple[str, ...]:
  """`platforms` (a sequence, or a comma-separated string) as a tuple of known platform names."""
  names = (
    tuple(p.strip() for p in platforms.split(",")) if isinstance(platforms, str) else platforms
  )
  unknown = [p for p in names if p not in PLATFORMS]
  if not names or unknown:
    raise UserError(
      f"--platforms {','.join(names)}: {unknown or 'none given'}; choose among "
      f"{', '.join(PLATFORMS)}, e.g. --platforms cpu,cuda."
    )
  return tuple(dict.fromkeys(names))


def export_forward(
  model: Any,
  params: dict[str, np.ndarray],
  example_input: np.ndarray,
  platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
) -> jax.export.Exported:
  """`model.apply(unflatten(params), inputs, train=False)` exported for `platforms`, its inputs
  shaped like `example_input` [B, ...] except for the batch, which is symbolic."""

  def forward(params, inputs):
    return model.apply(param_paths.unflatten(params), inputs, train=False)

  (batch,) = jax.export.symbolic_shape("batch")
  param_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in params.items()}
  input_spec = jax.ShapeDtypeStruct((batch, *example_input.shape[1:]), example_input.dtype)
  try:
    return jax.export.export(jax.jit(forward), platforms=platforms)(param_specs, input_spec)
  except jax.errors.InconclusiveDimensionOperation as e:
    raise UserError(
      "The model's forward depends on the batch size, which the export leaves symbolic "
      f"({str(e).splitlines()[0]}); it cannot be exported for any batch. --debug shows where."
    ) from e
  except NotImplementedError as e:  # An operation without a lowering for one of the platforms.
    raise UserError(
      f"The model cannot be lowered for {', '.join(platforms)} ({str(e).splitlines()[0]}); "
      "leave that platform out of --platforms."
    ) from e


def tensor_spec(name: str, shape: Any, dtype: Any) -> dict[str, Any]:
  """signature.json's description of one input or output, the batch axis written "batch"."""
  return {
    "name": name,
    "dtype": np.dtype(dtype).name,
    "shape": ["batch" if not isinstance(d, int) else d for d in shape],
  }


def version(package: str) -> str | None:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def write(
  out: str,
  exported: jax.export.Exported,
  params: dict[str, np.ndarray],
  signature: dict[str, Any],
  tokenizer_json: str | None = None,
  *,
  overwrite: bool = False,
) -> list[str]:
  """Writes the artifact into the folder `out` (a local path or gs://bucket/path),
  which must be empty or new unless `overwrite`. Returns the files written."""
  from jaxdl.pretrained import files  # pylint: disable=g-import-not-at-top

  files.require("flatbuffers", "export", "jaxdl export --format stablehlo")
  directory = paths.workdir_path(out)
  if directory.exists():
    if not directory.is_dir():
      raise UserError(f"--out {out} is a file; give a folder for the exported model.")
    if not overwrite and any(directory.iterdir()):
      raise UserError(
        f"--out {out} is not empty; give a new or empty folder, or --overwrite to replace an "
        "earlier export there."
      )
  directory.mkdir(parents=True, exist_ok=True)
  for name in FILES:  # An earlier export's tokenizer must not outlive it.
    if (directory / name).exists():
      (directory / name).unlink()
  (directory / MODEL_FILE).write_bytes(bytes(exported.serialize()))
  with (directory / PARAMS_FILE).open("wb") as f:
    np.savez(f, **params)
  (directory / SIGNATURE_FILE).write_text(json.dumps(signature, indent=2) + "\n")
  names = [MODEL_FILE, PARAMS_FILE, SIGNATURE_FILE]
  if tokenizer_json is not None:
    (directory / TOKENIZER_FILE).write_text(tokenizer_json)
    names.append(TOKENIZER_FILE)
  return [str(directory / name) for name in names]


@dataclasses.dataclass(frozen=True)
class Artifact:
  """An exported model, loaded: call it on a batch of inputs for its logits."""

  exported: jax.export.Exported
  params: dict[str, np.ndarray]
  signature: dict[str, Any]
  tokenizer: Any = None  # jaxdl.data.tokenizers tokenizer of a text model, else None.

  def __call__(self, inputs: np.ndarray) -> np.ndarray:
    return np.asarray(self.exported.call(self.params, inputs))


def load(directory: str) -> Artifact:
  """The artifact `jaxdl export --format stablehlo` wrote into `directory`."""
  from jaxdl.data import tokenizers  # pylint: disable=g-import-not-at-top
  from jaxdl.pretrained import files  # pylint: disable=g-import-not-at-top

  files.require("flatbuffers", "export", "Reading an exported model")
  folder = paths.workdir_path(directory)
  missing = [n for n in (MODEL_FILE, PARAMS_FILE, SIGNATURE_FILE) if not (folder / n).is_file()]
  if missing:
    raise CheckpointError(
      f"{directory} is not an exported model: it lacks {', '.join(missing)}. Give the --out "
      "folder of `jaxdl export WORKDIR --format stablehlo --out DIR`."
    )
  signature = json.loads((folder / SIGNATURE_FILE).read_text())
  if signature.get("format") != FORMAT:
    raise CheckpointError(
      f"{directory}/{SIGNATURE_FILE} has format {signature.get('format')!r}, not {FORMAT!r}: "
      "another jaxdl release wrote it. Export the run again with this one."
    )
  exported = jax.export.deserialize(bytearray((folder / MODEL_FILE).read_bytes()))
  with (folder / PARAMS_FILE).open("rb") as f:
    params = dict(np.load(f))
  tokenizer = None
  if (folder / TOKENIZER_FILE).is_file():
    tokenizer = tokenizers.tokenizer_from_json((folder / TOKENIZER_FILE).read_text())
  return Artifact(exported, params, signature, tokenizer)
