"""`jaxdl export WORKDIR --format hf|timm|torchvision|torch --out DIR`: a trained run as a
checkpoint the reference library loads (transformers' from_pretrained, torchvision's
load_state_dict, ...), with its tokenizer when it has a pretrained one.

`--format stablehlo`: the run's evaluation forward for serving, a jax.export program with a
symbolic batch beside its parameters and a signature.json (jaxdl.serving), which `jaxdl predict`
and any program with jax and numpy run.

What is exported is what `jaxdl eval` evaluates: the moving average of the parameters when the
run keeps one (train.ema_decay > 0), else the parameters, with BatchNorm statistics; a LoRA run's
adapters merged into their kernels.
"""

from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxdl import paths, serving
from jaxdl import sweep as sweep_lib
from jaxdl import workdir as workdir_lib
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import CheckpointError, UserError
from jaxdl.train import lora


def _saved_variables(
  workdir: Path, step: int | None, model_config: Any
) -> tuple[int, dict[str, Any]]:
  checkpointer = Checkpointer(workdir / workdir_lib.CHECKPOINT_DIR, read_only=True)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise CheckpointError(f"{workdir} has no checkpoints yet; train it first.")
    step = steps[-1] if step is None else step
    state = checkpointer.restore_as_saved(step)["state"]
  finally:
    checkpointer.close()
  params = lora.saved_params(state, model_config)  # LoRA adapters merged into their kernels.
  return step, {"params": params, **(state.get("model_state") or {})}


def export_workdir(
  workdir: str | Path,
  out: str | Path,
  format: str,
  *,
  step: int | None = None,
  member: int = 0,
  overwrite: bool = False,
) -> list[Path | str]:
  """Writes the checkpoint at `step` (default: the latest) of the run in `workdir` into the folder
  `out` in `format`; for a sweep, its member `member`. Returns the files written."""
  if format == "stablehlo":
    return export_stablehlo(workdir, out, step=step, member=member, overwrite=overwrite)
  from jaxdl import pretrained, trainer  # pylint: disable=g-import-not-at-top

  workdir = paths.workdir_path(workdir)
  config = workdir_lib.load_config(workdir)
  # The model as the run built it: its data fill in num_classes / vocab_size.
  setup = trainer.build(config, trainer.load_data(config), training=False)
  step, variables = _saved_variables(workdir, step, config.model)
  variables, _ = _member_variables(variables, config, workdir, member)
  written = pretrained.save(setup.model, variables, out, format, overwrite=overwrite)
  # A text run's published tokenizer travels with its weights; an image run has none.
  if (workdir / workdir_lib.TOKENIZER_FILE).is_file():
    tokenizer = workdir_lib.load_tokenizer(workdir)
    if hasattr(tokenizer, "save_pretrained"):
      written += tokenizer.save_pretrained(out, overwrite=overwrite)
  return written


def _member_variables(variables: Any, config: Any, workdir: Any, member: int) -> tuple[Any, Any]:
  """(one run's variables, the member's index or None): a sweep's member `member` (every array of
  a sweep's variables has a leading member axis)."""
  members = sweep_lib.members(config)
  if members is None:
    return variables, None
  if not 0 <= member < len(members):
    raise UserError(
      f"--member {member}: the sweep in {workdir} has members 0 to {len(members) - 1}."
    )
  return jax.tree.map(lambda x: x[member], variables), member


def export_stablehlo(
  workdir: str | Path,
  out: str,
  *,
  step: int | None = None,
  member: int = 0,
  overwrite: bool = False,
  kernels: str | None = None,
  platforms: Any = serving.DEFAULT_PLATFORMS,
) -> list[str]:
  """Writes the evaluation forward of the checkpoint at `step` (default: the latest) of the run
  in `workdir` (a sweep's member `member`) into the folder `out` as jaxdl.serving describes, under
  the kernel set `kernels` (default: the one `jaxdl eval` settles here), lowered for `platforms`.
  Returns the files written."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top

  from jaxdl import predict, trainer  # pylint: disable=g-import-not-at-top

  platforms = serving.check_platforms(platforms)
  config = workdir_lib.load_config(workdir)
  if kernels is not None:
    config.runtime.kernels = kernels
  # The devices `jaxdl eval` would see, so that runtime.kernels=auto settles the same way.
  trainer.split_cpu_host(config)
  data = trainer.load_data(config)
  workdir_lib.check_tokenizer(paths.workdir_path(workdir), data.tokenizer)
  setup = trainer.build(config, data, training=False)
  task = setup.task
  if task.name not in serving.SERVED_TASKS:
    raise UserError(
      f"{workdir} trains a {task.name} task; --format stablehlo serves classifiers and "
      "next-token language models, whose evaluation is one call from inputs to logits "
      + (
        "(a masked LM such as BERT exports to transformers with --format hf)."
        if task.name == "masked_lm"
        else "(a seq2seq model also decodes step by step)."
      )
    )
  step, variables = _saved_variables(paths.workdir_path(workdir), step, config.model)
  variables, member_index = _member_variables(variables, config, workdir, member)
  variables = {k: v for k, v in nn.unbox(dict(variables)).items() if k != "cache"}
  params = serving.flat_params(variables)
  (example_input,) = task.model_inputs(data.example_batch(1))
  example_input = np.asarray(example_input)
  exported = serving.export_forward(setup.model, params, example_input, platforms)
  (logits,) = exported.out_avals
  signature = {
    "format": serving.FORMAT,
    "task": task.name,
    "inputs": [
      serving.tensor_spec(
        getattr(task, "input_key", "tokens"), exported.in_avals[-1].shape, example_input.dtype
      )
    ],
    "outputs": [serving.tensor_spec("logits", logits.shape, logits.dtype)],
    "call": "exported.call(dict(np.load('params.npz')), inputs)",
    "classes": predict.class_names(data, config) if task.name == "classify" else None,
    "num_classes": int(logits.shape[-1]) if task.name == "classify" else None,
    "vocab_size": getattr(data.tokenizer, "vocab_size", None),
    "preprocessing": predict.preprocessing(data, task, example_input),
    "platforms": list(platforms),
    "kernels": setup.plan.kernels,
    "model": config.model.get("cls") or config.model.name,
    "workdir": str(workdir),
    "step": int(step),
    "member": member_index,
    "versions": {p: serving.version(p) for p in ("jaxdl", "jax", "jaxlib", "flax")},
  }
  tokenizer_json = data.tokenizer.to_json() if data.tokenizer is not None else None
  return serving.write(out, exported, params, signature, tokenizer_json, overwrite=overwrite)
