"""How fast a train step runs against what the hardware could do: TFLOP/s and MFU.

Every run logs two numbers:
    perf/tflops_per_sec  FLOPs of one compiled train step (XLA's cost analysis) x steps per second.
    perf/mfu             that over the peak FLOP/s of the devices the step runs on.

The peak of an accelerator comes from `PEAK_TFLOPS`, vendors' dense (no sparsity) datasheet
figures, found by `jax.Device.device_kind`. A CPU has no such figure that XLA could reach, so its
peak is measured: the best rate of a jitted matmul (`measured_cpu_peak`), probed once per machine
and cached. MFU on CPU is therefore against that achievable matmul rate, not a datasheet.

What XLA's count includes, and what it does not:
  * The count is of the compiled program of ONE device. Under pmap, and under jit over a mesh
    (data parallel, FSDP), every device runs that program on its shard, so the step's total is the
    count x the number of devices (`Efficiency.for_step` does this).
  * A while loop's body is counted once, not once per iteration (seen with jax 0.10 on CPU): a
    step that scans k micro-batches (grad accumulation) or scans over layers is undercounted.
    `loop_trip_counts` finds such loops; `Efficiency.lower_bound` says when they make the numbers
    a lower bound.

Lowering and compiling the jitted step for its FLOPs costs no extra compile: the jitted function
reuses that executable on its first call.
"""

import collections
import dataclasses
import json
import logging
import math
import os
from pathlib import Path
import platform
import re
import tempfile
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

logger = logging.getLogger("jaxdl")

COMPUTE_DTYPES = ("bfloat16", "float16", "float32")


@dataclasses.dataclass(frozen=True)
class Peak:
  """Dense peak TFLOP/s of one JAX device of a kind, by the dtype its matmuls run in.

  `float32` is the rate of float32 matmuls at JAX's default precision: TF32 tensor cores on NVIDIA
  Ampere and later, bf16 passes of the MXU on TPU. With precision="highest" the real ceiling is
  lower (NVIDIA's non-tensor FP32 rate; several bf16 passes on TPU), so MFU reads low.
  """

  bfloat16: float
  float32: float
  source: str  # Where the figures come from (a datasheet or Cloud TPU page).
  # device_kind patterns: each a run of words that must all be words of the normalised kind
  # (`normalize_kind`); the pattern with the most words wins, so "tpu v5 lite" beats "tpu v5".
  match: tuple[str, ...]
  float16: float | None = None  # Only where it is not the bfloat16 figure (V100: no bf16 cores).

  def tflops(self, dtype: str) -> float:
    """Peak TFLOP/s for matmuls in `dtype` (one of COMPUTE_DTYPES)."""
    if dtype == "float16" and self.float16 is not None:
      return self.float16
    return self.float32 if dtype == "float32" else self.bfloat16


# NVIDIA datasheets print tensor-core rates "with sparsity" (2:4), twice the dense rate; the
# figures below are the dense halves. A TPU device in JAX is a chip from v4 on (megacore), but one
# of the chip's two TensorCores on v2 and v3, so those chips' figures are halved.
PEAK_TFLOPS: dict[str, Peak] = {
  # H100, H200, GH200: https://www.nvidia.com/en-us/data-center/h100/,
  # https://www.nvidia.com/en-us/data-center/h200/,
  # https://www.nvidia.com/en-us/data-center/grace-hopper-superchip/
  # JAX reports the SXM part as "NVIDIA H100 80GB HBM3", so a bare "h100" is SXM.
  "NVIDIA H100 SXM": Peak(989.5, 494.5, "NVIDIA H100 datasheet (SXM)", ("h100",)),
  "NVIDIA H100 PCIe": Peak(756.5, 378.0, "NVIDIA H100 datasheet (PCIe)", ("h100 pcie",)),
  "NVIDIA H100 NVL": Peak(835.5, 417.5, "NVIDIA H100 datasheet (NVL)", ("h100 nvl",)),
  "NVIDIA H200": Peak(989.5, 494.5, "NVIDIA H200 datasheet (SXM)", ("h200",)),
  "NVIDIA H200 NVL": Peak(835.5, 417.5, "NVIDIA H200 datasheet (NVL)", ("h200 nvl",)),
  "NVIDIA GH200": Peak(989.5, 494.5, "NVIDIA GH200 datasheet", ("gh200",)),
  # A100 40GB and 80GB, SXM and PCIe, share one peak: https://www.nvidia.com/content/dam/en-zz/
  # Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
  "NVIDIA A100": Peak(312.0, 156.0, "NVIDIA A100 datasheet", ("a100",)),
  # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a10/pdf/a10-datasheet.pdf
  "NVIDIA A10": Peak(125.0, 62.5, "NVIDIA A10 datasheet", ("a10",)),
  # AWS's variant of the A10 (G5 instances). NVIDIA publishes no datasheet; these are the
  # figures AWS-facing vendors quote, e.g.
  # https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/
  "NVIDIA A10G": Peak(
    70.0, 35.0, "A10G figures as quoted for AWS G5 (no NVIDIA datasheet)", ("a10g",)
  ),
  # https://www.nvidia.com/en-us/data-center/l4/
  "NVIDIA L4": Peak(121.0, 60.0, "NVIDIA L4 datasheet", ("l4",)),
  # Volta has fp16 tensor cores but none for bf16 or tf32: those run at the FP32 rate.
  # https://images.nvidia.com/content/technologies/volta/pdf/
  # volta-v100-datasheet-update-us-1165301-r5.pdf
  "NVIDIA V100 SXM2": Peak(
    15.7, 15.7, "NVIDIA V100 datasheet (SXM2)", ("v100 sxm2", "v100 sxm3"), float16=125.0
  ),
  "NVIDIA V100 PCIe": Peak(14.0, 14.0, "NVIDIA V100 datasheet (PCIe)", ("v100",), float16=112.0),
  "NVIDIA V100S PCIe": Peak(16.4, 16.4, "NVIDIA V100S datasheet", ("v100s",), float16=130.0),
  # GeForce: bf16 with FP32 accumulate (what XLA uses). Ada whitepaper, appendix table:
  # https://images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf
  "NVIDIA GeForce RTX 4090": Peak(
    165.2, 82.6, "NVIDIA Ada GPU architecture whitepaper", ("rtx 4090",)
  ),
  # Cloud TPU "peak compute per chip (bf16)":
  # https://cloud.google.com/tpu/docs/system-architecture-tpu-vm
  "TPU v2": Peak(
    22.5, 22.5, "Cloud TPU docs: 45 TFLOP/s per v2 chip, 2 devices a chip", ("tpu v2",)
  ),
  "TPU v3": Peak(
    61.5, 61.5, "Cloud TPU docs: 123 TFLOP/s per v3 chip, 2 devices a chip", ("tpu v3",)
  ),
  # https://cloud.google.com/tpu/docs/v4
  "TPU v4": Peak(275.0, 275.0, "Cloud TPU docs (v4)", ("tpu v4",)),
  # https://cloud.google.com/tpu/docs/v5e; JAX calls it "TPU v5 lite".
  "TPU v5e": Peak(197.0, 197.0, "Cloud TPU docs (v5e)", ("tpu v5 lite", "tpu v5e")),
  # https://cloud.google.com/tpu/docs/v5p; JAX reports "TPU v5" on a TPU VM, "TPU v5p" on
  # Pathways.
  "TPU v5p": Peak(459.0, 459.0, "Cloud TPU docs (v5p)", ("tpu v5p", "tpu v5")),
  # https://cloud.google.com/tpu/docs/v6e (Trillium); JAX calls it "TPU v6 lite".
  "TPU v6e": Peak(918.0, 918.0, "Cloud TPU docs (v6e)", ("tpu v6 lite", "tpu v6e")),
}

_warned_kinds: set[str] = set()  # Unknown device kinds already warned about, once per process.


def normalize_kind(device_kind: str) -> str:
  """'NVIDIA A100-SXM4-80GB' -> 'nvidia a100 sxm4 80gb': lower case, words split on non-alnum."""
  return " ".join(re.findall(r"[a-z0-9]+", device_kind.lower()))


def lookup_peak(device_kind: str) -> tuple[str, Peak] | None:
  """(name, Peak) of the `PEAK_TFLOPS` entry for `device_kind` as JAX reports it; None if none.

  Patterns match whole words, so "a10" does not match an A100, nor "l4" an L40S.
  """
  words = set(normalize_kind(device_kind).split())
  best, best_len = None, 0
  for name, peak in PEAK_TFLOPS.items():
    for pattern in peak.match:
      pattern_words = pattern.split()
      if len(pattern_words) > best_len and words.issuperset(pattern_words):
        best, best_len = (name, peak), len(pattern_words)
  return best


def _dtype_name(compute_dtype: Any) -> str:
  try:
    name = jnp.dtype(compute_dtype).name
  except TypeError:
    name = None
  if name not in COMPUTE_DTYPES:
    raise ValueError(
      f"No peak FLOP/s for compute dtype {compute_dtype!r}; use one of "
      f"{', '.join(COMPUTE_DTYPES)} (the dtype the model's matmuls run in)."
    )
  return name


def peak_flops_per_sec(
  devices: Sequence[jax.Device], compute_dtype: Any = "bfloat16"
) -> tuple[float | None, str]:
  """Total peak FLOP/s of `devices` for matmuls in `compute_dtype`, and where it comes from.

  Args:
    devices: the devices the step runs on (e.g. jax.devices()); an accelerator's total is its
      per-device peak x the count.
    compute_dtype: bfloat16, float16 or float32 (a name or dtype).

  Returns:
    (FLOP/s, source): for CPU devices the measured matmul rate of the whole CPU, which they all
    share (`measured_cpu_peak`); for accelerators the sum of `PEAK_TFLOPS`. (None, reason) for a
    device kind the table lacks, with a warning, once per kind, saying how to add it.
  """
  dtype = _dtype_name(compute_dtype)
  devices = list(devices)
  if not devices:
    raise ValueError(
      "peak_flops_per_sec got no devices; pass the devices the step runs on, e.g. jax.devices()."
    )
  if all(d.platform == "cpu" for d in devices):
    # Forced host devices (--xla_force_host_platform_device_count) split one CPU, not add to it.
    return measured_cpu_peak(dtype), (
      f"measured {dtype} matmul rate of this CPU ({_cpu_model()}, {_num_cores()} cores), "
      f"shared by its {len(devices)} device(s); not a datasheet figure"
    )
  counts = collections.Counter(d.device_kind for d in devices)
  total, parts = 0.0, []
  for kind, count in counts.items():
    found = lookup_peak(kind)
    if found is None:
      if kind not in _warned_kinds:
        _warned_kinds.add(kind)
        logger.warning(
          "No peak FLOP/s known for device kind %r, so perf/mfu is not reported "
          "(perf/tflops_per_sec still is). To add it, put its dense %s TFLOP/s in "
          "jaxdl.perf.PEAK_TFLOPS, matched by words of %r.",
          kind,
          dtype,
          normalize_kind(kind),
        )
      return None, f"no peak FLOP/s known for device kind {kind!r}"
    name, peak = found
    total += count * peak.tflops(dtype) * 1e12
    parts.append(
      f"{count} x {name} at {peak.tflops(dtype):g} TFLOP/s {dtype} dense ({peak.source})"
    )
  return total, "; ".join(parts)


# ------------------------------------------------------------------------------ CPU peak

PROBE_SIZE = 1024  # Square matmul of the probe: big enough to keep every core busy.
PROBE_SECONDS = 0.03  # Each timed repetition runs at least this long (calls of the matmul).
PROBE_REPS = 5  # The best repetition counts: the least disturbed by other processes.
CPU_PEAK_FILE = "cpu_peak.json"


def cache_dir() -> Path:
  """Where measured CPU peaks are kept: the jaxdl cache's "perf" folder.

  The jaxdl cache is $JAXDL_DATA_DIR when set (as for datasets,
  jaxdl.data.download.cache_root), else $XDG_CACHE_HOME/jaxdl, else ~/.cache/jaxdl.
  """
  if not os.environ.get("JAXDL_DATA_DIR") and os.environ.get("XDG_CACHE_HOME"):
    return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "jaxdl" / "perf"
  # pylint: disable=g-import-not-at-top  # jaxdl.data pulls in Grain; only the cache needs it.
  from jaxdl.data import download

  return download.cache_root() / "perf"


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass  # Not Linux: platform.processor() names the CPU on macOS and Windows.
  return platform.processor() or platform.machine() or "unknown CPU"


def _num_cores() -> int:
  """Cores this process may use (a container's or taskset's share), not the machine's total."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def cpu_cache_key(dtype: str = "float32") -> str:
  """What a measured peak depends on: CPU model, usable cores, JAX and jaxlib versions, dtype."""
  jaxlib_version = getattr(getattr(jax, "lib", None), "__version__", None)
  jaxlib = f" jaxlib {jaxlib_version}" if jaxlib_version else ""
  return (
    f"{_cpu_model()} | {_num_cores()} cores | jax {jax.__version__}{jaxlib} | "
    f"{PROBE_SIZE}x{PROBE_SIZE} {dtype}"
  )


def _probe_matmul(dtype: str) -> float:
  """FLOP/s of the best timed repetition of a jitted PROBE_SIZE^2 matmul on the first CPU device.

  Takes well under a second on a laptop: one warm-up (compile), then PROBE_REPS repetitions of
  enough calls to last PROBE_SECONDS each.
  """
  cpu = jax.devices("cpu")[0]  # On a GPU host too: the default device would be the GPU.
  x = jax.device_put(jnp.ones((PROBE_SIZE, PROBE_SIZE), dtype), cpu)
  matmul = jax.jit(jnp.dot)
  matmul(x, x).block_until_ready()  # Compiles.
  start = time.perf_counter()
  matmul(x, x).block_until_ready()
  calls = max(1, math.ceil(PROBE_SECONDS / max(time.perf_counter() - start, 1e-6)))
  best = math.inf
  for _ in range(PROBE_REPS):
    start = time.perf_counter()
    for _ in range(calls):
      out = matmul(x, x)
    out.block_until_ready()  # Calls run in order, so the last one finishing means all have.
    best = min(best, time.perf_counter() - start)
  return 2 * PROBE_SIZE**3 * calls / best


def _read_cache(path: Path) -> dict[str, Any]:
  try:
    entries = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return {}  # Missing or corrupt: measure again and rewrite it.
  return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
  """Atomically, so concurrent runs (a sweep's workers) never read half a file."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(entries, f, indent=1, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except OSError as e:  # A read-only cache costs a re-measurement next run, never the run itself.
    logger.warning(
      "Could not cache the measured CPU peak in %s (%s); it will be measured again "
      "next run. Set JAXDL_DATA_DIR or XDG_CACHE_HOME to a writable folder.",
      path,
      e,
    )


def _cached_rate(entries: dict[str, Any], key: str) -> float | None:
  cached = entries.get(key)
  if (
    isinstance(cached, dict)
    and isinstance(cached.get("flops_per_sec"), (int, float))
    and cached["flops_per_sec"] > 0
  ):
    return float(cached["flops_per_sec"])
  return None


def measured_cpu_peak(dtype: Any = "float32") -> float:
  """Achievable FLOP/s of this whole CPU for `dtype` matmuls: measured once, then cached.

  The probe (`_probe_matmul`, about 0.1-1 s) runs once per CPU model, core count, JAX version and
  dtype (`cpu_cache_key`); the result is kept in `cache_dir()`/cpu_peak.json. MFU on CPU is
  against this rate, which XLA's own matmul reaches, not against a datasheet's.
  """
  dtype = _dtype_name(dtype)
  path, key = cache_dir() / CPU_PEAK_FILE, cpu_cache_key(dtype)
  cached = _cached_rate(_read_cache(path), key)
  if cached is not None:
    return cached
  flops = _probe_matmul(dtype)
  entries = _read_cache(path)
  # Another process may have measured it meanwhile (parallel test workers, a sweep's processes):
  # the first measurement stays, so that concurrent runs report their MFU against one peak.
  cached = _cached_rate(entries, key)
  if cached is not None:
    return cached
  entries[key] = {"flops_per_sec": flops, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
  _write_cache(path, entries)
  logger.info(
    "Measured this CPU's %s matmul rate: %.1f GFLOP/s (cached in %s).", dtype, flops / 1e9, path
  )
  return flops


# ------------------------------------------------------------------------------ FLOPs of a step


def compiled_flops(compiled: Any) -> float | None:
  """FLOPs of one call of a compiled program (`jax.jit(f).lower(*args).compile()`, also pmap).

  XLA's cost analysis: a dict in jax 0.10, a list of one dict in older releases. For pmap and
  sharded jit it is one device's program; a while loop's body counts once (see the module doc).
  None where the backend does not implement it or reports no (or a negative) count.
  """
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Backends without it raise various errors.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = cost.get("flops") if isinstance(cost, dict) else None
  return float(flops) if flops is not None and flops >= 0 else None


def loop_trip_counts(compiled: Any) -> list[int | None]:
  """How many times each while loop of the compiled program runs (None where XLA cannot tell).

  XLA's cost analysis counts a loop body once, so loops that run more than once (a scan over
  micro-batches or layers) make `compiled_flops` an undercount.
  """
  try:
    text = compiled.as_text()
  except Exception:  # pylint: disable=broad-except
    return []
  counts = []
  for line in (text or "").splitlines():
    if re.search(r"\swhile\(", line):
      found = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
      counts.append(int(found.group(1)) if found else None)
  return counts


# ------------------------------------------------------------------------------ Metrics


def efficiency_metrics(
  flops_per_step: float | None, seconds_per_step: float, peak_flops_per_sec: float | None
) -> dict[str, float]:
  """{"perf/tflops_per_sec", "perf/mfu"} of a step; a metric whose input is None is left out.

  Args:
    flops_per_step: FLOPs of one step summed over all devices.
    seconds_per_step: measured wall-clock time of one step.
    peak_flops_per_sec: the devices' total peak (`peak_flops_per_sec`).
  """
  if not (
    isinstance(seconds_per_step, (int, float))
    and math.isfinite(seconds_per_step)
    and seconds_per_step > 0
  ):
    raise ValueError(
      f"seconds_per_step must be a positive number of seconds, got "
      f"{seconds_per_step!r}; time at least one finished step."
    )
  if flops_per_step is None:
    return {}
  flops_per_sec = flops_per_step / seconds_per_step
  metrics = {"perf/tflops_per_sec": flops_per_sec / 1e12}
  if peak_flops_per_sec:
    metrics["perf/mfu"] = flops_per_sec / peak_flops_per_sec
  return metrics


@dataclasses.dataclass(frozen=True)
class Efficiency:
  """A train step's FLOPs and its devices' peak, measured once; `metrics` for each timing."""

  flops_per_step: float | None  # Over all devices; None when XLA gives no count.
  peak_flops_per_sec: float | None  # Over all devices; None for unknown accelerators.
  peak_source: str = ""  # Where the peak comes from, for the log.
  lower_bound: bool = False  # The step has loops run more than once: FLOPs are undercounted.

  @classmethod
  def for_step(
    cls,
    compiled: Any,
    devices: Sequence[jax.Device],
    compute_dtype: Any = "bfloat16",
    steps_loop: bool = False,
  ) -> "Efficiency":
    """From the compiled train step and the devices that each run it (all of a pmap or mesh).

    `steps_loop`: `compiled` runs several steps as a loop whose trip count is an argument
    (jaxdl.train.step.steps_in_one_call); its body, one step, is what the cost analysis counts.
    """
    devices = list(devices)
    per_device = compiled_flops(compiled)
    peak, source = peak_flops_per_sec(devices, compute_dtype)
    counts = loop_trip_counts(compiled)
    if steps_loop and None in counts:
      counts.remove(None)
    repeated = any(n is None or n > 1 for n in counts)
    return cls(
      flops_per_step=None if per_device is None else per_device * len(devices),
      peak_flops_per_sec=peak,
      peak_source=source,
      lower_bound=repeated,
    )

  def metrics(self, seconds_per_step: float) -> dict[str, float]:
    """perf/tflops_per_sec and perf/mfu at `seconds_per_step` (see `efficiency_metrics`)."""
    return efficiency_metrics(self.flops_per_step, seconds_per_step, self.peak_flops_per_sec)
