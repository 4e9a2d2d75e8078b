"""Optax optimizers and learning-rate schedules from the `optimizer` config section.

Parameters can be frozen, given their own learning rate, or spared weight decay by regular
expressions over their paths (see jaxdl.train.param_paths); those patterns are checked against the
parameters when the optimizer is initialised, which the trainer does before the first step.
"""

import math
from typing import Any, Mapping, Sequence

import jax
import optax

from jaxdl.errors import ConfigError
from jaxdl.nn.layer_stack import LAYERS
from jaxdl.train import param_paths

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "step")
DECAY_MASKS = ("matrices", "all")


def _is_matrix(keypath: Any, p: Any) -> bool:
  """ndim >= 2 per layer: a scanned stack's leading layer axis (under LAYERS) does not count."""
  stacked = any(getattr(k, "key", None) == LAYERS for k in keypath)
  return p.ndim - stacked >= 2


def weight_decay_mask(cfg: Mapping[str, Any]):
  """Which parameters weight decay applies to: "matrices" (kernels and embeddings, ndim >= 2; not
  biases or normalisation scales, as in GPT-2, BERT and most modern recipes) or "all"."""
  if cfg["weight_decay_mask"] == "all":
    return None
  if cfg["weight_decay_mask"] == "matrices":
    return lambda params: jax.tree_util.tree_map_with_path(_is_matrix, params)
  raise ConfigError(
    f"Unknown optimizer.weight_decay_mask {cfg['weight_decay_mask']!r}; choose one "
    f"of {DECAY_MASKS}."
  )


def _decay_mask(cfg: Mapping[str, Any]):
  """`weight_decay_mask` less the parameters that `no_weight_decay` names; None decays all."""
  base = weight_decay_mask(cfg)
  excluded = cfg.get("no_weight_decay", [])
  if not excluded:
    return base

  def mask(params):
    # Inside a freeze partition `params` lacks the frozen leaves, so a pattern may match nothing
    # here; the whole tree was checked when the optimizer was initialised.
    keep = base(params) if base is not None else jax.tree.map(lambda _: True, params)
    skip = param_paths.match(params, excluded, "optimizer.no_weight_decay", require_match=False)
    return jax.tree.map(lambda k, s: k and not s, keep, skip)

  return mask


def frozen_mask(cfg: Mapping[str, Any], params: Any) -> Any:
  """A tree of bools like `params`: True for the parameters `optimizer.freeze` selects."""
  patterns = cfg.get("freeze", [])
  if not patterns:
    return jax.tree.map(lambda _: False, params)
  return param_paths.match(params, patterns, "optimizer.freeze")


def lr_multipliers(cfg: Mapping[str, Any]) -> list[tuple[Any, float]]:
  """The (compiled pattern, factor) pairs of `optimizer.lr_multipliers`, checked."""
  entries = cfg.get("lr_multipliers", [])
  if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
    raise ConfigError(
      f"optimizer.lr_multipliers={entries!r} must be a list of (pattern, factor) "
      "pairs, e.g. [('head/.*', 10.0)]."
    )
  for entry in entries:
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
      raise ConfigError(
        f"optimizer.lr_multipliers entry {entry!r} must be a (pattern, factor) "
        "pair, e.g. ('head/.*', 10.0)."
      )
    pattern, factor = entry
    if (
      isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor)
    ):
      raise ConfigError(
        f"optimizer.lr_multipliers: the factor for {pattern!r} is {factor!r}; "
        "give a positive number, e.g. 0.1."
      )
    if factor == 0:
      raise ConfigError(
        f"optimizer.lr_multipliers: the factor for {pattern!r} is 0, which would "
        "stop those parameters from training; list the pattern in optimizer.freeze "
        "instead, which also keeps no optimizer state for them."
      )
    if factor < 0:
      raise ConfigError(
        f"optimizer.lr_multipliers: the factor for {pattern!r} is {factor}; a "
        "negative rate would climb the loss. Give a positive number."
      )
  compiled = param_paths.compile_patterns([p for p, _ in entries], "optimizer.lr_multipliers")
  return [(pattern, float(factor)) for pattern, (_, factor) in zip(compiled, entries)]


def scale_by_path(factors: Sequence[tuple[Any, float]]) -> optax.GradientTransformation:
  """Multiplies each update by the factor of the first pattern its path fully matches (else 1).

  Placed after the optimizer, this scales the learning rate of those parameters, and with adamw
  their decoupled weight decay too, as PyTorch's parameter groups do. Stateless.
  """

  def factor_of(path: str) -> float:
    return next((f for pattern, f in factors if pattern.fullmatch(path)), 1.0)

  def update_fn(updates, state, params=None):
    del params

    def scale(keypath, u):
      factor = factor_of(param_paths.path_str(keypath))
      return u if factor == 1.0 else u * factor

    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _check_selections(cfg: Mapping[str, Any], params: Any) -> None:
  """Refuses patterns that would silently do nothing: matching no path, only frozen parameters,
  only parameters an earlier lr_multipliers pattern already claims, or only parameters that
  weight_decay_mask already spares."""
  frozen = param_paths.named_leaves(frozen_mask(cfg, params))
  trainable = [p for p, f in frozen.items() if not f]
  if frozen and not trainable:
    raise ConfigError(
      f"optimizer.freeze={list(cfg['freeze'])} selects every parameter, so "
      "nothing would train; narrow the patterns."
    )
  base = weight_decay_mask(cfg) if cfg.get("no_weight_decay") else None
  decayed = param_paths.named_leaves(base(params) if base else jax.tree.map(lambda _: True, params))
  checks = [
    ("optimizer.lr_multipliers", [p for p, _ in cfg.get("lr_multipliers", [])]),
    ("optimizer.no_weight_decay", list(cfg.get("no_weight_decay", []))),
  ]
  for what, patterns in checks:
    claimed: set[str] = set()
    for pattern in patterns:
      selected = param_paths.named_leaves(param_paths.match(params, [pattern], what))
      hits = [p for p, m in selected.items() if m]
      shown = ", ".join(hits[:4]) + (", ..." if len(hits) > 4 else "")
      live = [p for p in hits if not frozen[p]]
      if not live:
        raise ConfigError(
          f"{what}: pattern {pattern!r} selects only frozen parameters ({shown}), "
          "so it has no effect; remove it or narrow optimizer.freeze."
        )
      if what == "optimizer.no_weight_decay" and not any(decayed[p] for p in live):
        raise ConfigError(
          f"{what}: pattern {pattern!r} selects only parameters that "
          f"optimizer.weight_decay_mask={cfg['weight_decay_mask']!r} already "
          f"spares ({shown}), so it has no effect; remove it."
        )
      if what == "optimizer.lr_multipliers" and claimed.issuperset(live):
        raise ConfigError(
          f"{what}: every parameter pattern {pattern!r} selects is already "
          "matched by an earlier pattern, and the first match wins; move it "
          "earlier or remove it."
        )
      claimed.update(live)


def make_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then constant, cosine decay to `end_learning_rate`,
  or steps: the rate is multiplied by `decay_factor` at each of `decay_boundaries`, given as
  fractions of the run (He et al.'s CIFAR recipe: [0.5, 0.75] and 0.1)."""
  peak, warmup = cfg["learning_rate"], cfg["warmup_steps"]
  if cfg["schedule"] == "constant":
    if warmup <= 0:
      return optax.constant_schedule(peak)
    return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
    )
  if cfg["schedule"] == "cosine":
    decay_steps = cfg["decay_steps"] or total_steps
    if decay_steps <= warmup:
      raise ConfigError(
        f"optimizer.decay_steps ({decay_steps}) must exceed optimizer.warmup_steps "
        f"({warmup}) for the cosine schedule; lower warmup_steps or raise decay_steps."
      )
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=warmup,
      decay_steps=decay_steps,
      end_value=cfg["end_learning_rate"],
    )
  if cfg["schedule"] == "step":
    boundaries = sorted(cfg["decay_boundaries"])
    if not boundaries or not all(0 < b < 1 for b in boundaries):
      raise ConfigError(
        f"optimizer.decay_boundaries={list(cfg['decay_boundaries'])} must be "
        "fractions of the run in (0, 1), e.g. [0.5, 0.75], for the step schedule."
      )
    steps = {}  # Step -> factor; boundaries falling on one step multiply.
    for b in boundaries:
      step = max(warmup, int(b * total_steps))
      steps[step] = steps.get(step, 1.0) * cfg["decay_factor"]
    decay = optax.piecewise_constant_schedule(peak, steps)
    if warmup <= 0:
      return decay
    return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), lambda step: decay(step + warmup)], [warmup]
    )
  raise ConfigError(f"Unknown optimizer.schedule {cfg['schedule']!r}; choose one of {SCHEDULES}.")


def _nonzero(value: Any) -> bool:
  """Whether a setting is on. A traced value (a sweep member's, jaxdl.sweep) counts as on, so
  every member's optimizer has the same structure whatever its value."""
  return isinstance(value, jax.core.Tracer) or bool(value)


def make_optimizer(
  cfg: Mapping[str, Any], total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer named by `cfg["name"]`, with gradient clipping first when enabled.

  `freeze` gives the parameters it selects a zero update and no optimizer state (Adam's moments
  hold `optax.MaskedNode` for them); clipping and the rest see only the trainable parameters.
  `lr_multipliers` scales the updates of the parameters it selects, `no_weight_decay` spares
  them weight decay. Without these keys the optimizer (and its state) is as it always was.
  """
  schedule = make_schedule(cfg, total_steps)
  name = cfg["name"]
  freeze = cfg.get("freeze", [])
  param_paths.compile_patterns(freeze, "optimizer.freeze")  # Bad patterns fail here, not later.
  multipliers = lr_multipliers(cfg)
  no_decay = cfg.get("no_weight_decay", [])
  param_paths.compile_patterns(no_decay, "optimizer.no_weight_decay")
  if no_decay and (name == "adam" or not _nonzero(cfg["weight_decay"])):
    raise ConfigError(
      f"optimizer.no_weight_decay={list(no_decay)} has no effect: "
      f"{name} with optimizer.weight_decay={cfg['weight_decay']} decays no "
      "weights. Remove it, or use adamw or sgd with weight_decay > 0."
    )
  if name == "adam":
    tx = optax.adam(schedule, b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"])
  elif name == "adamw":
    tx = optax.adamw(
      schedule,
      b1=cfg["b1"],
      b2=cfg["b2"],
      eps=cfg["eps"],
      weight_decay=cfg["weight_decay"],
      mask=_decay_mask(cfg),
    )
  elif name == "sgd":
    tx = optax.sgd(schedule, momentum=cfg["momentum"] or None, nesterov=cfg["nesterov"])
    if _nonzero(cfg["weight_decay"]):
      tx = optax.chain(optax.add_decayed_weights(cfg["weight_decay"], _decay_mask(cfg)), tx)
  else:
    raise ConfigError(f"Unknown optimizer.name {name!r}; choose one of {OPTIMIZERS}.")
  if cfg["nesterov"] and name != "sgd":
    raise ConfigError(f"optimizer.nesterov=True applies to sgd only, not {name!r}.")
  if cfg["grad_clip_norm"] > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg["grad_clip_norm"]), tx)
  if multipliers:
    tx = optax.chain(tx, scale_by_path(multipliers))
  if freeze:
    # Everything above runs on the trainable parameters alone: clipping measures their norm only.
    labels = lambda tree: jax.tree.map(
      lambda f: "frozen" if f else "trainable", frozen_mask(cfg, tree)
    )
    tx = optax.multi_transform({"frozen": optax.set_to_zero(), "trainable": tx}, labels)
  if freeze or multipliers or no_decay:
    inner_init = tx.init

    def init(params):
      _check_selections(cfg, params)
      return inner_init(params)

    tx = tx._replace(init=init)
  return tx, schedule
