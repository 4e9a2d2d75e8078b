"""Scan over layers, remat and the mesh for jaxdl's GPT, measured without running a step.

Compile seconds, XLA's temporaries, and the bytes of parameters and optimizer state per device.

Run (from the repository root):
    python benchmarks/scale_gpt.py compile   # GPT-2 small width, 12 and 24 layers, scan vs unrolled
    python benchmarks/scale_gpt.py remat     # GPT-2 small at context 1024: each remat policy
    python benchmarks/scale_gpt.py mesh      # GPT-2 small and medium over six meshes of 8 devices
    python benchmarks/scale_gpt.py SUBCOMMAND --smoke   # tiny sizes, seconds on 2 CPU cores
Options, with their defaults (--smoke's in parentheses):
  compile: --layers 12,24 (2,4)  --context 256 (32)  --batch 8 (2)  --repeats 1
  remat:   --layers 12 (4)  --context 1024 (32)  --batch 2 (2)
           --policies none,full,dots_saveable,dots_with_no_batch_dims_saveable
  mesh:    --presets gpt2_small,gpt2_medium (one GPT of 2 layers, 8 heads, width 64)
           --vocab-size (the preset's)  --scan-layers
  each:    --json OUT (the rows with exact bytes and seconds, and the environment)
--smoke's width is 64 with 2 heads, its vocabulary 256.
Each prints a markdown table last. The runtimes at full size are in benchmarks/README.md.

The model and its step are benchmarks/gpu_models.py's (imported from there): jaxdl.nn.GPT with
float32 parameters and bfloat16 compute, GPT-2's biases and tied LM head, no dropout, XLA's
attention (attention_impl="jax"), the model's `remat` and `scan_layers` fields; one train step is
jaxdl.train.step.make_train_step with the LanguageModelling task and AdamW from
jaxdl.train.optim.make_optimizer (nanoGPT's settings), jitted with the state donated. Nothing is
allocated or run: the train state comes from jax.eval_shape and the tokens [batch, context + 1]
and the key are jax.ShapeDtypeStructs. Figures are for the backend JAX runs on (the table's title
names it); here that is the CPU, where the compiler is XLA:CPU's.

1. compile: for a GPT of GPT-2 small's width (768, 12 heads, vocabulary 50,304) at each depth of
   --layers, scanned (scan_layers=True: one block compiled and run in a loop) and unrolled, the
   wall seconds of `jax.jit(step).lower(...)` (tracing and lowering to StableHLO) and of
   `.compile()` (XLA). JAX's persistent compilation cache is switched off and jax.clear_caches()
   runs before each measurement, so nothing compiled earlier helps; a tiny program is compiled
   first so the backend's start-up is not counted. Forms alternate within a depth, --repeats
   times; the table gives the medians and unrolled / scanned of lower + compile.
2. remat: at GPT-2 small's shape (12 layers, width 768, 12 heads, vocabulary 50,304) and context
   1024, the step compiled under each remat policy of jaxdl.nn.remat (none: every activation
   kept; full: only each block's input; dots_saveable: matmul outputs; dots_with_no_batch_dims_
   saveable: the projections' outputs, not attention's), scanned and unrolled. XLA's memory
   analysis of each: temporaries (compiled.memory_analysis().temp_size_in_bytes: activations kept
   for the backward pass, gradients, the optimizer's intermediates) and arguments (state and
   batch); the ratio is to remat=none of the same form. What a policy saves is up to the
   compiler, which schedules the recomputation (benchmarks/README.md has what XLA:CPU does).
3. mesh: for each preset of --presets (jaxdl.nn.gpt.GPT_PRESETS: GPT-2 small, 124M parameters,
   and medium, 355M, at their vocabulary of 50,257) and each mesh of MESHES (8 devices), the
   bytes of parameters and of AdamW's state on the device holding the most. Each array's
   PartitionSpec is the jit layout's (jaxdl.train.shardings.loop_specs with the model's logical
   axis names and the default rules, jaxdl.nn.partitioning.RULES); its bytes on a device are
   NamedSharding(mesh, spec).shard_shape(shape) x itemsize, the same on every device (the rules
   split only dimensions the mesh axes divide). "whole" is the parameters' bytes that every
   device holds in full; "of 1 device" is the sum over what one device holds without a mesh.
   The mesh is of 8 CPU devices (jax.devices("cpu"), whatever the default backend): where JAX
   has fewer, the script runs itself again in a process started with
   XLA_FLAGS=--xla_force_host_platform_device_count=8 and passes its output on.
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
from pathlib import Path
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
import numpy as np

from jaxdl.nn import partitioning
from jaxdl.nn.gpt import GPT_PRESETS
from jaxdl.nn.remat import REMAT_POLICIES
from jaxdl.summary import human_bytes
from jaxdl.train import mesh_layout, shardings, tasks
from jaxdl.train import step as step_lib

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_models  # noqa: E402  # benchmarks/ is not a package: from this folder.

GptConfig = gpu_models.GptConfig
DEVICES = 8  # The mesh subcommand's device count.
FORCE_DEVICES = "--xla_force_host_platform_device_count"
WIDTH = dict(num_heads=12, embed_dim=768, vocab_size=gpu_models.PADDED_VOCAB)  # GPT-2 small's.
SMOKE = dict(num_heads=2, embed_dim=64, vocab_size=256)
# Eight heads for the mesh: tensor=8 splits them (GPT-2 small's 12 are split by 2 and 4 only).
SMOKE_MESH = GptConfig(num_layers=2, num_heads=8, embed_dim=64, block_size=32, vocab_size=256)
ATTENTION = "jax"  # XLA's attention, on every backend.
MESHES = {  # name -> (data, fsdp, tensor)
  "data=8": (8, 1, 1),
  "fsdp=8": (1, 8, 1),
  "data=2 fsdp=2 tensor=2": (2, 2, 2),
  "fsdp=4 tensor=2": (1, 4, 2),
  "tensor=8": (1, 1, 8),
  "fsdp=2 tensor=4": (1, 2, 4),
}


# ---------------------------------------------------------------- The step, abstractly


@dataclasses.dataclass
class Abstract:
  """A GPT, its optimizer and its train state as ShapeDtypeStructs (nothing allocated)."""

  model: Any
  tx: Any
  schedule: Any
  state: Any
  key: Any  # A PRNG key's ShapeDtypeStruct.

  @classmethod
  def of(cls, config: GptConfig) -> "Abstract":
    model = gpu_models.gpt_model(config, ATTENTION)
    tx, schedule = gpu_models.gpt_optimizer()
    key = jax.eval_shape(lambda: jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((1, config.block_size), jnp.int32)
    init = lambda k, t: step_lib.create_train_state(model, tx, k, t)
    return cls(model, tx, schedule, jax.eval_shape(init, key, tokens), key)


@dataclasses.dataclass
class Compiled:
  compiled: Any
  lower_seconds: float
  compile_seconds: float


def compile_step(config: GptConfig, batch_size: int) -> Compiled:
  """The jitted train step lowered and compiled for abstract inputs; only those two are timed."""
  a = Abstract.of(config)
  train_step = step_lib.make_train_step(a.model, a.tx, a.schedule, tasks.LanguageModelling())
  step = jax.jit(train_step, donate_argnums=0)
  batch = {"tokens": jax.ShapeDtypeStruct((batch_size, config.block_size + 1), jnp.int32)}
  start = time.perf_counter()
  lowered = step.lower(a.state, batch, a.key)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  return Compiled(compiled, lowered_at - start, time.perf_counter() - lowered_at)


@contextlib.contextmanager
def no_compilation_cache():
  """JAX's persistent compilation cache off (and back as it was after)."""
  before = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", before)


def form(scan: bool) -> str:
  return "scan" if scan else "unrolled"


# ---------------------------------------------------------------- 1. compile


def run_compile(args) -> tuple[list[dict[str, Any]], str]:
  width = SMOKE if args.smoke else WIDTH
  rows = []
  jax.jit(lambda x: x + 1).lower(1.0).compile()  # The backend's start-up, not counted.
  for layers in args.layers:
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.repeats):
      for scan in (True, False):
        config = GptConfig(num_layers=layers, block_size=args.context, scan_layers=scan, **width)
        jax.clear_caches()
        c = compile_step(config, args.batch)
        times[scan].append((c.lower_seconds, c.compile_seconds))
        print(
          f"  {layers} layers {form(scan)}: lower {c.lower_seconds:.2f} s, compile "
          f"{c.compile_seconds:.2f} s",
          flush=True,
        )
        del c
    for scan in (True, False):
      lower = statistics.median(t[0] for t in times[scan])
      compile_ = statistics.median(t[1] for t in times[scan])
      rows.append(
        dict(
          layers=layers,
          form=form(scan),
          lower_seconds=lower,
          compile_seconds=compile_,
          seconds=lower + compile_,
          runs=[list(t) for t in times[scan]],
        )
      )
    rows[-1]["unrolled_over_scanned"] = rows[-1]["seconds"] / rows[-2]["seconds"]
  config = GptConfig(num_layers=0, block_size=args.context, **width)
  shape = config.describe().split(" ", 1)[1]  # Less "L=0".
  title = (
    f"Compile seconds of the GPT train step, {shape}, batch {args.batch}, median of {args.repeats}"
  )
  lines = [
    "| layers | form | lower s | compile s | lower + compile s | unrolled / scanned |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    ratio = f"{r['unrolled_over_scanned']:.2f}x" if "unrolled_over_scanned" in r else "-"
    lines.append(
      f"| {r['layers']} | {r['form']} | {r['lower_seconds']:.2f} | {r['compile_seconds']:.2f} | "
      f"{r['seconds']:.2f} | {ratio} |"
    )
  return rows, f"## {title}\n\n" + "\n".join(lines)


# ---------------------------------------------------------------- 2. remat


def run_remat(args) -> tuple[list[dict[str, Any]], str]:
  width = SMOKE if args.smoke else WIDTH
  rows = []
  for scan in (True, False):
    for policy in args.policies:
      config = GptConfig(
        num_layers=args.layers,
        block_size=args.context,
        remat=policy,
        scan_layers=scan,
        **width,
      )
      c = compile_step(config, args.batch)
      stats = c.compiled.memory_analysis()
      rows.append(
        dict(
          form=form(scan),
          remat=policy,
          temp_bytes=stats.temp_size_in_bytes,
          argument_bytes=stats.argument_size_in_bytes,
          output_bytes=stats.output_size_in_bytes,
          alias_bytes=stats.alias_size_in_bytes,
          compile_seconds=c.lower_seconds + c.compile_seconds,
        )
      )
      print(f"  {form(scan)} remat={policy}: temporaries {human_bytes(rows[-1]['temp_bytes'])}")
      del c
  for r in rows:
    none = next((n for n in rows if n["form"] == r["form"] and n["remat"] == "none"), None)
    r["temp_over_none"] = r["temp_bytes"] / none["temp_bytes"] if none else None
  config = GptConfig(num_layers=args.layers, block_size=args.context, **width)
  title = (
    f"Temporaries of the GPT train step by remat policy, {config.describe()}, batch {args.batch}"
  )
  lines = [
    "| form | remat | temporaries | vs none | arguments | lower + compile s |",
    "|---|---|---|---|---|---|",
  ]
  for r in rows:
    ratio = "-" if r["temp_over_none"] is None else f"{r['temp_over_none']:.2f}x"
    lines.append(
      f"| {r['form']} | {r['remat']} | {human_bytes(r['temp_bytes'])} | {ratio} | "
      f"{human_bytes(r['argument_bytes'])} | {r['compile_seconds']:.1f} |"
    )
  return rows, f"## {title}\n\n" + "\n".join(lines)


# ---------------------------------------------------------------- 3. mesh


def bytes_per_device(tree: Any, specs: Any, mesh) -> int:
  """Bytes of `tree`'s arrays on one device when placed by `specs` on `mesh`."""
  sizes = jax.tree.map(
    lambda x, spec: (
      math.prod(NamedSharding(mesh, spec).shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
    ),
    tree,
    specs,
  )
  return sum(jax.tree.leaves(sizes))


def whole_bytes(tree: Any, specs: Any) -> int:
  """Bytes of `tree`'s arrays that `specs` leave whole on every device."""
  sizes = jax.tree.map(
    lambda x, spec: 0 if any(spec) else math.prod(x.shape) * np.dtype(x.dtype).itemsize,
    tree,
    specs,
  )
  return sum(jax.tree.leaves(sizes))


def mesh_configs(args) -> dict[str, GptConfig]:
  if args.smoke:
    return {"GPT (smoke)": dataclasses.replace(SMOKE_MESH, scan_layers=args.scan_layers)}
  configs = {}
  for name in args.presets:
    preset = dict(GPT_PRESETS[name])
    if args.vocab_size:
      preset["vocab_size"] = args.vocab_size
    configs[name] = GptConfig(scan_layers=args.scan_layers, **preset)
  return configs


def run_mesh(args) -> tuple[list[dict[str, Any]], str]:
  devices = jax.devices("cpu")[:DEVICES]
  rows = []
  for name, config in mesh_configs(args).items():
    a = Abstract.of(config)
    state = a.state
    axes = shardings.param_axes(a.model, (jax.ShapeDtypeStruct((1, 8), jnp.int32),))
    loop = {"state": state}
    one_device = sum(
      math.prod(x.shape) * np.dtype(x.dtype).itemsize
      for x in jax.tree.leaves([state.params, state.opt_state])
    )
    for mesh_name, (data, fsdp, tensor) in MESHES.items():
      mesh = mesh_layout.make_mesh(data, fsdp, tensor, devices=devices)
      specs = shardings.loop_specs(loop, axes, partitioning.RULES, dict(mesh.shape))["state"]
      params = bytes_per_device(state.params, specs.params, mesh)
      opt = bytes_per_device(state.opt_state, specs.opt_state, mesh)
      rows.append(
        dict(
          model=name,
          config=config.describe(),
          layers=config.layers,
          mesh=mesh_name,
          param_bytes=params,
          opt_state_bytes=opt,
          total_bytes=params + opt,
          fraction=(params + opt) / one_device,
          param_whole_bytes=whole_bytes(state.params, specs.params),
        )
      )
  title = (
    f"Parameters and AdamW state per device, float32, {DEVICES} devices, "
    f"{'scanned' if args.scan_layers else 'unrolled'} layers"
  )
  lines = [
    "| model | mesh | parameters | optimizer state | sum | of 1 device | parameters whole |",
    "|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['model']} | {r['mesh']} | {human_bytes(r['param_bytes'])} | "
      f"{human_bytes(r['opt_state_bytes'])} | {human_bytes(r['total_bytes'])} | "
      f"{r['fraction']:.3f} | {human_bytes(r['param_whole_bytes'])} |"
    )
  return rows, f"## {title}\n\n" + "\n".join(lines)


def with_device_count(xla_flags: str, count: int) -> str:
  """XLA_FLAGS forcing `count` CPU devices, the other flags kept."""
  kept = [f for f in xla_flags.split() if not f.startswith(FORCE_DEVICES)]
  return " ".join([*kept, f"{FORCE_DEVICES}={count}"])


def rerun_with_devices(argv: list[str]) -> int:
  """This script run again in a process whose JAX has DEVICES CPU devices; its output passed on."""
  env = dict(os.environ, XLA_FLAGS=with_device_count(os.environ.get("XLA_FLAGS", ""), DEVICES))
  proc = subprocess.run(
    [sys.executable, str(Path(__file__).resolve()), *argv],
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  sys.stdout.write(proc.stdout)
  sys.stderr.write(proc.stderr)
  return proc.returncode


# ---------------------------------------------------------------- Driver


def int_list(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  smoke_help = "tiny sizes (width 64, context 32, vocabulary 256) for a test"
  c = sub.add_parser("compile", help="compile seconds, scanned vs unrolled")
  c.add_argument("--layers", type=int_list, default=None, help="depths (12,24; smoke 2,4)")
  c.add_argument("--context", type=int, default=None, help="tokens per row (256; smoke 32)")
  c.add_argument("--batch", type=int, default=None, help="rows (8; smoke 2)")
  c.add_argument("--repeats", type=int, default=1, help="measurements per form; medians (1)")
  r = sub.add_parser("remat", help="temporaries of each remat policy, scanned and unrolled")
  r.add_argument("--layers", type=int, default=None, help="depth (12; smoke 4)")
  r.add_argument("--context", type=int, default=None, help="tokens per row (1024; smoke 32)")
  r.add_argument("--batch", type=int, default=None, help="rows (2)")
  r.add_argument(
    "--policies",
    default=",".join(REMAT_POLICIES),
    help=f"remat policies ({','.join(REMAT_POLICIES)})",
  )
  m = sub.add_parser("mesh", help="parameter and optimizer bytes per device under 8-device meshes")
  m.add_argument("--presets", default="gpt2_small,gpt2_medium", help="GPT_PRESETS names")
  m.add_argument("--vocab-size", type=int, default=None, help="instead of the preset's")
  m.add_argument("--scan-layers", action="store_true", help="the scanned form's parameters")
  for s in (c, r, m):
    s.add_argument("--smoke", action="store_true", help=smoke_help)
    s.add_argument("--json", metavar="OUT", help="also write the rows as JSON to OUT")
  args = p.parse_args(argv)
  defaults = {
    "compile": dict(layers=[12, 24], context=256, batch=8),
    "remat": dict(layers=12, context=1024, batch=2),
  }.get(args.command, {})
  if args.smoke:
    defaults = {
      "compile": dict(layers=[2, 4], context=32, batch=2),
      "remat": dict(layers=4, context=32, batch=2),
    }.get(args.command, {})
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.command == "remat":
    args.policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    unknown = [x for x in args.policies if x not in REMAT_POLICIES]
    if unknown or not args.policies:
      p.error(f"--policies: unknown {unknown}; choose from {', '.join(REMAT_POLICIES)}")
  if args.command == "mesh":
    args.presets = [x.strip() for x in args.presets.split(",") if x.strip()]
    unknown = [x for x in args.presets if x not in GPT_PRESETS]
    if unknown:
      p.error(f"--presets: unknown {unknown}; choose from {', '.join(GPT_PRESETS)}")
  if args.command in ("compile", "remat"):
    depths = args.layers if isinstance(args.layers, list) else [args.layers]
    if min(*depths, args.context, args.batch, getattr(args, "repeats", 1)) < 1 or not depths:
      p.error("--layers, --context, --batch and --repeats must be at least 1")
  return args


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.command == "mesh" and len(jax.devices("cpu")) < DEVICES:
    return rerun_with_devices(argv)
  runner = {"compile": run_compile, "remat": run_remat, "mesh": run_mesh}[args.command]
  device = jax.devices()[0]
  start = time.perf_counter()
  with no_compilation_cache():
    rows, table = runner(args)
  seconds = time.perf_counter() - start
  if args.json:
    import jaxlib  # pylint: disable=g-import-not-at-top

    environment = {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "devices": len(jax.devices()),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "cpu_count": os.cpu_count(),
    }
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(
        {"environment": environment, "args": vars(args), "seconds": seconds, "rows": rows},
        f,
        indent=1,
      )
    print(f"wrote {args.json}")
  backend = f"{jax.default_backend()} ({device.device_kind}), jax {jax.__version__}"
  print(f"\n{table.replace('## ', f'## {backend}: ', 1)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
