"""Optax optimizers and learning-rate schedules from the `optimizer` config section."""

from typing import Any, Mapping

import jax
import optax

from jaxdl.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
DECAY_MASKS = ("matrices", "all")


def weight_decay_mask(cfg: Mapping[str, Any]):
  """Which parameters weight decay applies to: "matrices" (kernels and embeddings, ndim >= 2; not
  biases or normalisation scales, as in GPT-2, BERT and most modern recipes) or "all"."""
  if cfg["weight_decay_mask"] == "all":
    return None
  if cfg["weight_decay_mask"] == "matrices":
    return lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  raise ConfigError(f"Unknown optimizer.weight_decay_mask {cfg['weight_decay_mask']!r}; choose one "
                    f"of {DECAY_MASKS}.")


def make_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then constant, cosine decay to `end_learning_rate`,
  or steps: the rate is multiplied by `decay_factor` at each of `decay_boundaries`, given as
  fractions of the run (He et al.'s CIFAR recipe: [0.5, 0.75] and 0.1)."""
  peak, warmup = cfg["learning_rate"], cfg["warmup_steps"]
  if cfg["schedule"] == "constant":
    if warmup <= 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  if cfg["schedule"] == "cosine":
    decay_steps = cfg["decay_steps"] or total_steps
    if decay_steps <= warmup:
      raise ConfigError(f"optimizer.decay_steps ({decay_steps}) must exceed optimizer.warmup_steps "
                        f"({warmup}) for the cosine schedule; lower warmup_steps or raise decay_steps.")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=decay_steps,
        end_value=cfg["end_learning_rate"])
  if cfg["schedule"] == "step":
    boundaries = sorted(cfg["decay_boundaries"])
    if not boundaries or not all(0 < b < 1 for b in boundaries):
      raise ConfigError(f"optimizer.decay_boundaries={list(cfg['decay_boundaries'])} must be "
                        "fractions of the run in (0, 1), e.g. [0.5, 0.75], for the step schedule.")
    steps = {}  # Step -> factor; boundaries falling on one step multiply.
    for b in boundaries:
      step = max(warmup, int(b * total_steps))
      steps[step] = steps.get(step, 1.0) * cfg["decay_factor"]
    decay = optax.piecewise_constant_schedule(peak, steps)
    if warmup <= 0:
      return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                                 lambda step: decay(step + warmup)], [warmup])
  raise ConfigError(f"Unknown optimizer.schedule {cfg['schedule']!r}; choose one of {SCHEDULES}.")


def make_optimizer(cfg: Mapping[str, Any],
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer named by `cfg["name"]`, with gradient clipping first when enabled."""
  schedule = make_schedule(cfg, total_steps)
  name = cfg["name"]
  if name == "adam":
    tx = optax.adam(schedule, b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"])
  elif name == "adamw":
    tx = optax.adamw(schedule, b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"],
                     weight_decay=cfg["weight_decay"], mask=weight_decay_mask(cfg))
  elif name == "sgd":
    tx = optax.sgd(schedule, momentum=cfg["momentum"] or None, nesterov=cfg["nesterov"])
    if cfg["weight_decay"]:
      tx = optax.chain(optax.add_decayed_weights(cfg["weight_decay"], weight_decay_mask(cfg)), tx)
  else:
    raise ConfigError(f"Unknown optimizer.name {name!r}; choose one of {OPTIMIZERS}.")
  if cfg["nesterov"] and name != "sgd":
    raise ConfigError(f"optimizer.nesterov=True applies to sgd only, not {name!r}.")
  if cfg["grad_clip_norm"] > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg["grad_clip_norm"]), tx)
  return tx, schedule
