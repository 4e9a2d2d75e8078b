"""Many runs in one compiled program: seeds and scalar hyperparameters, side by side under vmap.

    jaxdl train experiments/mnist_cnn.py sweep.seeds=4
    jaxdl train experiments/mnist_cnn.py sweep.optimizer.learning_rate=[1e-3,3e-4,1e-4]

A sweep's members are every combination of `sweep.seeds` seeds (config.seed, config.seed + 1,
...) and the listed values of each swept key. Member i is the run `jaxdl train ... seed=S key=V`
would make: its own initialisation, dropout keys and data order (a Grain iterator of its own),
only computed in one program: the trainer stacks the members' train states, batches and keys
along a leading axis and `jax.vmap`s the train and eval steps over it. Checkpoints hold every
member; metrics are logged per member (`member<i>/train/loss`) and as their mean (`train/loss`,
so plots and summaries read a sweep like a single run) and standard deviation (`train/loss/std`).

Only values that enter the computation arithmetically can differ between members in one program
(shapes and Python control flow are fixed when it is traced): the seed, the optimizer scalars in
`SWEEPABLE`, and the models' dropout rates (`model.dropout_rate`, `model.attention_dropout_rate`,
..., which every jaxdl.nn model accepts as a traced scalar). Other model arguments change the
traced program; sweep them with separate runs.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import functools
import itertools
import json
import re
from typing import Any, Callable

import jax
import numpy as np

from jaxdl.errors import ConfigError

# Config keys whose value may differ between the members of one sweep: each is used by the
# optimizer (jaxdl.train.optim) in arithmetic only, so a traced value works in its place.
SWEEPABLE = (
  "optimizer.learning_rate",
  "optimizer.weight_decay",
  "optimizer.end_learning_rate",
  "optimizer.b1",
  "optimizer.b2",
)
# And model arguments that are dropout rates: each member's model is built with its traced rate.
SWEEPABLE_MODEL_ARGUMENT = re.compile(r"model\.\w*drop\w*_rate")


def sweepable(key: str) -> bool:
  """Whether config key `key` may take a different value in each member of one sweep."""
  return key in SWEEPABLE or bool(SWEEPABLE_MODEL_ARGUMENT.fullmatch(key))


def describe_sweepable() -> str:
  return ", ".join(f"sweep.{k}" for k in SWEEPABLE) + " and sweep.model.<dropout rate argument>"


@dataclasses.dataclass(frozen=True)
class Member:
  """One run of a sweep: its seed and the values it gives the swept keys."""

  seed: int
  values: dict[str, float]

  @property
  def label(self) -> str:
    return " ".join([f"seed={self.seed}"] + [f"{k}={v:g}" for k, v in self.values.items()])


def swept_values(sweep_config: Mapping[str, Any]) -> dict[str, list[float]]:
  """{"optimizer.learning_rate": [...], ...} from the nested `sweep` config section."""
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      if hasattr(value, "items"):
        walk(value, f"{prefix}{key}.")
      else:
        flat[f"{prefix}{key}"] = value

  walk({k: v for k, v in sweep_config.items() if k not in ("seeds", "method")}, "")
  for key, values in flat.items():
    if not sweepable(key):
      raise ConfigError(
        f"sweep.{key} cannot be swept in one program: only sweep.seeds, "
        f"{describe_sweepable()} can differ between the members of a sweep, since anything "
        "else changes the compiled program. Run separate trainings for it."
      )
    if (
      isinstance(values, (str, bytes))
      or not isinstance(values, Sequence)
      or not values
      or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    ):
      raise ConfigError(
        f"sweep.{key}={values!r} must be a non-empty list of numbers, e.g. sweep.{key}=[1e-3,3e-4]."
      )
  return {key: [float(v) for v in flat[key]] for key in sorted(flat)}


def members(config: Mapping[str, Any]) -> list[Member] | None:
  """The members of the sweep `config["sweep"]` asks for, or None when it asks for none (a plain
  run, with no member axis)."""
  sweep = config.get("sweep", {})
  seeds = sweep.get("seeds", 0)
  if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
    raise ConfigError(f"sweep.seeds={seeds!r} must be a whole number >= 0 (0 or 1: one seed).")
  values = swept_values(sweep)
  if seeds <= 1 and not values:
    return None
  seed_list = [config["seed"] + i for i in range(max(seeds, 1))]
  combos = itertools.product(seed_list, *values.values())
  return [Member(seed, dict(zip(values, rest))) for seed, *rest in combos]


def member_hparams(member_list: Sequence[Member]) -> dict[str, np.ndarray]:
  """Swept key -> float32 [N], the value of each member; {} for a seeds-only sweep."""
  keys = member_list[0].values
  return {key: np.asarray([m.values[key] for m in member_list], np.float32) for key in keys}


def with_values(section: Mapping[str, Any], prefix: str, values: Mapping[str, Any]) -> dict:
  """A copy of config section `prefix` (e.g. "optimizer") as a dict, with the swept `values` of
  its keys (full keys, "optimizer.learning_rate") put in."""
  out = dict(section)
  for key, value in values.items():
    head, _, leaf = key.partition(".")
    if head == prefix:
      out[leaf] = value
  return out


def aggregate(per_member: Sequence[Mapping[str, float]]) -> dict[str, float]:
  """Per-member metrics -> their mean under each key, `key/std`, and `member<i>/key`."""
  out = {}
  for key in per_member[0]:
    values = np.asarray([m[key] for m in per_member], np.float64)
    out[key] = float(values.mean())
    out[f"{key}/std"] = float(values.std())
  for i, metrics in enumerate(per_member):
    out.update({f"member{i}/{key}": float(value) for key, value in metrics.items()})
  return out


class StackedIterator:
  """The members' batches stacked along a new leading axis. Members with the same seed read the
  same batches, so there is one iterator per distinct seed (`make_iterator(seed)`); its state,
  which checkpoints save, is every such iterator's state."""

  def __init__(self, make_iterator: Callable[[int], Any], member_seeds: Sequence[int]):
    distinct = sorted(set(member_seeds))
    self._iterators = [make_iterator(seed) for seed in distinct]
    self._source = [distinct.index(seed) for seed in member_seeds]  # Member -> its iterator.

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batches = [next(it) for it in self._iterators]
    return {key: np.stack([batches[i][key] for i in self._source]) for key in batches[0]}

  # The interface grain.checkpoint.CheckpointHandler uses for iterators that are not Grain's own.
  def get_state(self) -> bytes:
    return json.dumps([it.get_state() for it in self._iterators]).encode()

  def set_state(self, state: bytes) -> None:
    states = json.loads(state)
    if len(states) != len(self._iterators):
      raise ConfigError(
        f"The checkpoint holds {len(states)} data positions, one per seed of the "
        f"sweep that wrote it, this run has {len(self._iterators)}; resume with "
        "the sweep it was written with."
      )
    for it, seed_state in zip(self._iterators, states):
      it.set_state(seed_state)

  def start_prefetch(self) -> None:
    for it in self._iterators:
      if hasattr(it, "start_prefetch"):
        it.start_prefetch()


METHODS = ("vmap", "map")


def over_members(method: str) -> Callable[..., Callable[..., Any]]:
  """How a sweep runs a per-member function over its stacked members (`sweep.method`):
  "vmap" batches them into one computation (members side by side: fastest where one member
  leaves the device idle); "map" runs them one after another in one compiled loop (jax.lax.map),
  each member computed exactly as its separate run would be.

  Returns wrap(fn, shared=()) -> fn over members; `shared[i]` marks arguments every member
  reads whole (no member axis)."""
  if method not in METHODS:
    raise ConfigError(f"sweep.method={method!r} must be one of {', '.join(METHODS)}.")

  def wrap(fn, shared=()):
    shared = tuple(shared)
    if method == "vmap":
      in_axes = tuple(None if s else 0 for s in shared) or 0
      return jax.vmap(fn, in_axes=in_axes)

    def mapped(*args, **kwargs):
      flags = shared + (False,) * (len(args) - len(shared))
      per_member = tuple(a for a, s in zip(args, flags) if not s)

      def one(member_args):
        it = iter(member_args)
        full = [a if s else next(it) for a, s in zip(args, flags)]
        member_kwargs = {k: v for k, v in zip(kwargs, member_args[len(per_member) :])}
        return fn(*full, **member_kwargs)

      return jax.lax.map(one, per_member + tuple(kwargs.values()))

    return mapped

  return wrap


def unstack(tree: Any, num_members: int) -> list[Any]:
  """A host tree whose leaves have a leading member axis -> one tree per member."""
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(num_members)]


class SingleRun:
  """A run without a sweep: one seed, and no member axis on any array.

  `SingleRun` and `Sweep` are the two forms of `Runs`: the trainer calls the same methods on either
  and never asks which it holds."""

  member_axis = False  # Whether the loop state and batches have a leading member axis.

  def __init__(self, seed: int):
    self.seed = seed
    self.count = 1  # Runs trained side by side.

  def init(self, init_loop: Callable[[int, dict], Any]) -> Callable[[], Any]:
    """() -> the loop state of step 0, from `init_loop(seed, hparams)` of one run."""
    return functools.partial(init_loop, self.seed, {})

  def update(self, update: Callable[..., Any]) -> Callable[..., Any]:
    """`update(state, sums, batch, rng, hparams)` of one run -> (state, sums, batch, rng) of all."""
    return functools.partial(update, hparams={})

  def eval_step(self, eval_step: Callable[..., Any]) -> Callable[..., Any]:
    """`eval_step(state, batch)` of one run -> of all (every run sees the same batch)."""
    return eval_step

  def batches(self, batches_for: Callable[[int], Any]) -> Any:
    """The train batches of all runs, from `batches_for(seed)`, the iterator of one."""
    return batches_for(self.seed)

  def map_states(self, fn: Callable[[Any], Any], tree: Any) -> Any:
    """`fn` of one run's tree (host or device arrays) applied to each run's part of `tree`."""
    return fn(tree)

  def metrics(self, sums: Any, to_metrics: Callable[[Any], dict[str, float]]) -> dict[str, float]:
    """The metrics of every run's host `sums` (`to_metrics` of one run's), as one dict."""
    return to_metrics(sums)

  def describe(self, metrics: dict[str, float], summary: Callable[[dict], str]) -> str:
    """`metrics` (as `self.metrics` returns them) in words, from `summary` of one run's."""
    return summary(metrics)

  def which(self, flags: np.ndarray) -> str:
    """Words naming the runs whose entry of `flags` [count] is true ("" for a single run)."""
    del flags
    return ""


class Sweep:
  """The members of a sweep (see the module docstring), side by side along a leading axis of
  every array of the loop state and of each batch."""

  member_axis = True

  def __init__(self, member_list: Sequence[Member], method: str = "vmap"):
    self.members = list(member_list)
    self.count = len(self.members)
    self._over = over_members(method)
    self._hparams = member_hparams(self.members)

  def init(self, init_loop):
    seeds = np.asarray([m.seed for m in self.members], np.int32)
    return functools.partial(self._over(init_loop), seeds, self._hparams)

  def update(self, update):
    return functools.partial(self._over(update), hparams=self._hparams)

  def eval_step(self, eval_step):
    return self._over(eval_step, shared=(False, True))

  def batches(self, batches_for):
    return StackedIterator(batches_for, [m.seed for m in self.members])

  def map_states(self, fn, tree):
    return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *map(fn, unstack(tree, self.count)))

  def metrics(self, sums, to_metrics):
    return aggregate([to_metrics(s) for s in unstack(sums, self.count)])

  def describe(self, metrics, summary):
    lines = [f"mean of {self.count} sweep members: {summary(metrics)}"]
    for i, member in enumerate(self.members):
      prefix = f"member{i}/"
      own = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
      lines.append(f"  member {i} ({member.label}): {summary(own)}")
    return "\n".join(lines)

  def which(self, flags):
    named = [f"{i} ({m.label})" for i, m in enumerate(self.members) if flags[i]]
    return " in sweep member(s) " + ", ".join(named)


Runs = SingleRun | Sweep


def runs(config: Mapping[str, Any]) -> Runs:
  """The runs `config` trains: a Sweep when its `sweep` section asks for members, else one run."""
  member_list = members(config)
  if member_list is None:
    return SingleRun(config["seed"])
  return Sweep(member_list, config.get("sweep", {}).get("method", "vmap"))
