"""`jaxdl export WORKDIR --format hf|timm|torchvision|torch --out DIR`: a trained run as a
checkpoint the reference library loads (transformers' from_pretrained, torchvision's
load_state_dict, ...), with its tokenizer when it has a pretrained one.

What is exported is what `jaxdl eval` evaluates: the moving average of the parameters when the
run keeps one (train.ema_decay > 0), else the parameters, with BatchNorm statistics; a LoRA run's
adapters merged into their kernels.
"""

from pathlib import Path
from typing import Any

import jax

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
) -> list[Path]:
  """Writes the checkpoint at `step` (default: the latest) of the run in `workdir` into the folder
  `out` in `format`; for a sweep, its member `member`. Returns the files written."""
  from jaxdl import pretrained, trainer  # pylint: disable=g-import-not-at-top

  workdir = Path(workdir)
  config = workdir_lib.load_config(workdir)
  # The model as the run built it: its data fill in num_classes / vocab_size.
  setup = trainer.build(config, trainer.load_data(config), training=False)
  step, variables = _saved_variables(workdir, step, config.model)
  members = sweep_lib.members(config)
  if members is not None:  # Every array has a leading member axis.
    if not 0 <= member < len(members):
      raise UserError(
        f"--member {member}: the sweep in {workdir} has members 0 to {len(members) - 1}."
      )
    variables = jax.tree.map(lambda x: x[member], variables)
  written = pretrained.save(setup.model, variables, out, format, overwrite=overwrite)
  # A text run's published tokenizer travels with its weights; an image run has none.
  if (workdir / workdir_lib.TOKENIZER_FILE).is_file():
    tokenizer = workdir_lib.load_tokenizer(workdir)
    if hasattr(tokenizer, "save_pretrained"):
      written += tokenizer.save_pretrained(out, overwrite=overwrite)
  return written
