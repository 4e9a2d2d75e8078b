"""jaxdl.perf: peak table lookup by JAX's device kinds, XLA FLOP counts against formulas, the cached
CPU probe, and TFLOP/s and MFU arithmetic."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxdl import perf
from tests.conftest import REPO

# device_kind strings exactly as JAX reports them -> (PEAK_TFLOPS entry, bf16 TFLOP/s per device).
KINDS = {
  "NVIDIA H100 80GB HBM3": ("NVIDIA H100 SXM", 989.5),
  "NVIDIA H100 PCIe": ("NVIDIA H100 PCIe", 756.5),
  "NVIDIA H100 NVL": ("NVIDIA H100 NVL", 835.5),
  "NVIDIA H200": ("NVIDIA H200", 989.5),
  "NVIDIA H200 NVL": ("NVIDIA H200 NVL", 835.5),
  "NVIDIA A100-SXM4-40GB": ("NVIDIA A100", 312.0),
  "NVIDIA A100-SXM4-80GB": ("NVIDIA A100", 312.0),
  "NVIDIA A100-PCIE-40GB": ("NVIDIA A100", 312.0),
  "NVIDIA A100 80GB PCIe": ("NVIDIA A100", 312.0),
  "NVIDIA A10": ("NVIDIA A10", 125.0),
  "NVIDIA A10G": ("NVIDIA A10G", 70.0),
  "NVIDIA L4": ("NVIDIA L4", 121.0),
  "Tesla V100-SXM2-16GB": ("NVIDIA V100 SXM2", 15.7),
  "Tesla V100-PCIE-32GB": ("NVIDIA V100 PCIe", 14.0),
  "NVIDIA GeForce RTX 4090": ("NVIDIA GeForce RTX 4090", 165.2),
  "TPU v2": ("TPU v2", 22.5),
  "TPU v3": ("TPU v3", 61.5),
  "TPU v4": ("TPU v4", 275.0),
  "TPU v5 lite": ("TPU v5e", 197.0),
  "TPU v5p": ("TPU v5p", 459.0),
  "TPU v5": ("TPU v5p", 459.0),  # v5p on a TPU VM.
  "TPU v6 lite": ("TPU v6e", 918.0),
}


def _devices(kind, count, platform="gpu"):
  return [types.SimpleNamespace(device_kind=kind, platform=platform, id=i) for i in range(count)]


def _flops(fn, *args):
  return perf.compiled_flops(jax.jit(fn).lower(*args).compile())


# ------------------------------------------------------------------------------ Peak table


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_device_kinds_find_their_entry(kind):
  name, tflops = KINDS[kind]
  found = perf.lookup_peak(kind)
  assert found is not None and found[0] == name
  assert found[1].tflops("bfloat16") == tflops


@pytest.mark.parametrize(
  "kind", ["NVIDIA L40S", "NVIDIA GeForce RTX 3090", "cpu", "TPU7x", "AMD Instinct MI300X", ""]
)
def test_unknown_kinds_find_nothing(kind):
  # Whole words only: "l4" is not in "l40s", nor "a10" in "a100".
  assert perf.lookup_peak(kind) is None


def test_every_entry_is_dense_and_sourced():
  for name, peak in perf.PEAK_TFLOPS.items():
    assert peak.source and peak.match, name
    assert 0 < peak.float32 <= peak.bfloat16, name  # TF32 / bf16 passes never beat bf16.
    for pattern in peak.match:  # No pattern is shadowed by a more specific one.
      assert perf.lookup_peak(pattern)[0] == name, pattern
  # Dense, not "with sparsity": H100 SXM's datasheet says 1,979 bf16 (sparse), 989 TF32 (sparse).
  h100 = perf.PEAK_TFLOPS["NVIDIA H100 SXM"]
  assert (h100.bfloat16, h100.float32) == (1979 / 2, 989 / 2)


def test_dtype_chooses_the_column():
  h100 = perf.lookup_peak("NVIDIA H100 80GB HBM3")[1]
  assert h100.tflops("float32") == 494.5  # TF32 tensor cores, JAX's default f32 precision.
  assert h100.tflops("float16") == h100.tflops("bfloat16")
  v100 = perf.lookup_peak("Tesla V100-SXM2-16GB")[1]
  assert (v100.tflops("float16"), v100.tflops("bfloat16")) == (125.0, 15.7)  # No bf16 cores.
  tpu = perf.lookup_peak("TPU v4")[1]
  assert tpu.tflops("float32") == tpu.tflops("bfloat16")  # bf16 passes at default precision.


def test_peak_of_many_devices_is_the_sum():
  peak, source = perf.peak_flops_per_sec(_devices("NVIDIA H100 80GB HBM3", 8), jnp.bfloat16)
  assert peak == 8 * 989.5e12
  assert "8 x NVIDIA H100 SXM" in source and "bfloat16" in source
  peak, _ = perf.peak_flops_per_sec(_devices("TPU v5 lite", 4, "tpu"), "float32")
  assert peak == 4 * 197e12


def test_unknown_accelerator_has_no_peak_and_warns_once(caplog):
  kind = "Imaginary Accelerator 9000 (test_perf)"
  with caplog.at_level(logging.WARNING, logger="jaxdl"):
    first = perf.peak_flops_per_sec(_devices(kind, 2), "bfloat16")
    second = perf.peak_flops_per_sec(_devices(kind, 2), "bfloat16")
  assert first[0] is None and second[0] is None and kind in first[1]
  warnings = [r.getMessage() for r in caplog.records if kind in r.getMessage()]
  assert len(warnings) == 1
  assert "PEAK_TFLOPS" in warnings[0] and "perf/mfu is not reported" in warnings[0]


@pytest.mark.parametrize("dtype", ["int8", "float64", "fp8", None])
def test_bad_dtype_is_an_error(dtype):
  with pytest.raises(ValueError, match="compute dtype"):
    perf.peak_flops_per_sec(_devices("TPU v4", 1, "tpu"), dtype)


def test_no_devices_is_an_error():
  with pytest.raises(ValueError, match="no devices"):
    perf.peak_flops_per_sec([], "bfloat16")


# ------------------------------------------------------------------------------ FLOP counts


@pytest.mark.parametrize("m,k,n", [(8, 256, 128), (3, 5, 7), (64, 64, 64)])
def test_matmul_flops_are_2mnk(m, k, n):
  # XLA counts a multiply and an add for each of the k terms of each output: 2*m*n*k, not the
  # m*n*(2k-1) operations a naive loop does.
  assert _flops(jnp.dot, jnp.zeros((m, k)), jnp.zeros((k, n))) == 2 * m * n * k


def test_gradients_cost_two_or_three_forward_matmuls():
  batch, d_in, d_out = 16, 32, 8
  model = nn.Dense(d_out)
  x, y = jnp.ones((batch, d_in)), jnp.ones((batch, d_out))
  params = model.init(jax.random.key(0), x)
  loss = lambda p, x, y: jnp.mean((model.apply(p, x) - y) ** 2)
  matmul = 2 * batch * d_in * d_out
  forward = _flops(loss, params, x, y)
  assert matmul <= forward < 1.1 * matmul  # The rest: bias, difference, square, mean.
  # Gradient for the weights only (x is data): forward + x^T @ dy, two matmuls.
  weights_only = _flops(jax.value_and_grad(loss), params, x, y)
  assert 2 * forward <= weights_only < 2.2 * matmul
  # A layer whose input gradient flows on (any layer but the first) adds dy @ W^T: the rule of
  # thumb that a train step costs 3x the forward pass.
  with_input = _flops(jax.value_and_grad(loss, argnums=(0, 1)), params, x, y)
  assert 3 * matmul <= with_input < 3.3 * matmul and with_input >= 3 * forward - 0.1 * matmul


def test_loop_bodies_are_counted_once():
  """XLA's cost analysis does not multiply a while loop's body by its trip count (jax 0.10 CPU);
  if this starts failing XLA counts loops fully: drop `lower_bound` and update the module doc."""

  def repeated(a, b):
    return jax.lax.scan(lambda c, _: (c @ b, None), a, None, length=4)[0]

  a = jnp.zeros((8, 8))
  compiled = jax.jit(repeated).lower(a, a).compile()
  one_matmul = 2 * 8**3
  assert one_matmul <= perf.compiled_flops(compiled) < 2 * one_matmul
  assert perf.loop_trip_counts(compiled) == [4]
  assert perf.Efficiency.for_step(compiled, _devices("TPU v4", 1, "tpu")).lower_bound
  plain = jax.jit(jnp.dot).lower(a, a).compile()
  assert perf.loop_trip_counts(plain) == []
  assert not perf.Efficiency.for_step(plain, _devices("TPU v4", 1, "tpu")).lower_bound


class _Compiled:
  def __init__(self, cost):
    self.cost = cost

  def cost_analysis(self):
    if isinstance(self.cost, Exception):
      raise self.cost
    return self.cost


@pytest.mark.parametrize(
  "cost,expected",
  [
    ({"flops": 12.0}, 12.0),
    ([{"flops": 12.0}], 12.0),  # jax 0.10; older releases.
    ({"flops": -1.0}, None),
    ({"bytes accessed": 4.0}, None),
    ([], None),
    (None, None),
    (NotImplementedError("no cost analysis"), None),
  ],
)
def test_compiled_flops_across_versions_and_backends(cost, expected):
  assert perf.compiled_flops(_Compiled(cost)) == expected


def test_sharded_step_counts_one_device_and_for_step_multiplies():
  """Under sharded jit and pmap XLA counts one device's program; for_step sums the devices."""
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from jaxdl import perf
      mesh = Mesh(np.array(jax.devices()), ("data",))
      x = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=NamedSharding(mesh, P("data")))
      w = jax.ShapeDtypeStruct((32, 16), jnp.float32, sharding=NamedSharding(mesh, P()))
      jitted = jax.jit(jnp.dot).lower(x, w).compile()
      pmapped = jax.pmap(jnp.dot).lower(jnp.zeros((2, 32, 32)), jnp.zeros((2, 32, 16))).compile()
      fake = [type("D", (), {"device_kind": "TPU v4", "platform": "tpu"})()] * 2
      print(perf.compiled_flops(jitted), perf.compiled_flops(pmapped),
            perf.Efficiency.for_step(jitted, fake).flops_per_step)
      """)
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "JAX_PLATFORMS": "cpu",
  }
  out = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr
  total = 2 * 64 * 32 * 16
  assert [float(v) for v in out.stdout.split()] == [total / 2, total / 2, total]


# ------------------------------------------------------------------------------ CPU peak


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXDL_DATA_DIR", str(tmp_path / "data"))
  monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
  return tmp_path / "data" / "perf" / perf.CPU_PEAK_FILE


@pytest.fixture
def probes(monkeypatch):
  calls = []

  def fake_probe(dtype):
    calls.append(dtype)
    return 1.5e11

  monkeypatch.setattr(perf, "_probe_matmul", fake_probe)
  return calls


def test_cpu_peak_is_probed_once_and_cached(cache, probes):
  assert perf.measured_cpu_peak("float32") == 1.5e11
  assert perf.measured_cpu_peak(jnp.float32) == 1.5e11
  assert probes == ["float32"]
  entries = json.loads(cache.read_text())
  ((key, entry),) = entries.items()
  assert key == perf.cpu_cache_key("float32")
  assert f"jax {jax.__version__}" in key and f"{perf._num_cores()} cores" in key
  assert entry["flops_per_sec"] == 1.5e11
  perf.measured_cpu_peak("bfloat16")  # Another dtype is another measurement.
  assert probes == ["float32", "bfloat16"]


def test_new_jax_version_measures_again(cache, probes, monkeypatch):
  perf.measured_cpu_peak()
  monkeypatch.setattr(perf.jax, "__version__", "99.0.0")
  perf.measured_cpu_peak()
  assert len(probes) == 2 and len(json.loads(cache.read_text())) == 2


def test_corrupt_cache_is_measured_again(cache, probes):
  cache.parent.mkdir(parents=True)
  cache.write_text("{not json")
  assert perf.measured_cpu_peak() == 1.5e11 and len(probes) == 1
  assert json.loads(cache.read_text())


def test_a_peak_another_process_cached_meanwhile_wins(cache, monkeypatch):
  """Two runs probing at once (parallel test workers) end up reporting against one peak: the rate
  cached first, not whichever finished last."""

  def probe_while_another_process_caches(dtype):
    perf._write_cache(cache, {perf.cpu_cache_key(dtype): {"flops_per_sec": 2e11}})
    return 1.5e11

  monkeypatch.setattr(perf, "_probe_matmul", probe_while_another_process_caches)
  assert perf.measured_cpu_peak() == 2e11
  assert json.loads(cache.read_text())[perf.cpu_cache_key()]["flops_per_sec"] == 2e11


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
  monkeypatch.delenv("JAXDL_DATA_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert perf.cache_dir() == tmp_path / "xdg" / "jaxdl" / "perf"
  monkeypatch.setenv("JAXDL_DATA_DIR", str(tmp_path / "data"))  # jaxdl's own variable wins.
  assert perf.cache_dir() == tmp_path / "data" / "perf"
  monkeypatch.delenv("JAXDL_DATA_DIR")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert perf.cache_dir() == tmp_path / "home" / ".cache" / "jaxdl" / "perf"


def test_unwritable_cache_still_gives_the_peak(tmp_path, monkeypatch, probes, caplog):
  blocker = tmp_path / "file"
  blocker.write_text("")
  monkeypatch.setenv("JAXDL_DATA_DIR", str(blocker))  # A file where the folder should be.
  with caplog.at_level(logging.WARNING, logger="jaxdl"):
    assert perf.measured_cpu_peak() == 1.5e11
  assert "Could not cache" in caplog.text


def test_cpu_devices_share_the_measured_peak(cache, probes):
  peak, source = perf.peak_flops_per_sec(_devices("cpu", 4, "cpu"), "float32")
  assert peak == 1.5e11  # Forced host devices split one CPU: not 4x.
  assert "measured" in source and "not a datasheet" in source


def test_real_probe_measures_a_plausible_rate():
  flops = perf._probe_matmul("float32")
  assert 1e8 < flops < 1e15  # Between a very slow core and far beyond any CPU.


# ------------------------------------------------------------------------------ Metrics


def test_efficiency_metrics():
  metrics = perf.efficiency_metrics(2e12, 0.5, 8e12)
  assert metrics == pytest.approx({"perf/tflops_per_sec": 4.0, "perf/mfu": 0.5})
  assert perf.efficiency_metrics(2e12, 0.5, None) == pytest.approx({"perf/tflops_per_sec": 4.0})
  assert perf.efficiency_metrics(None, 0.5, 8e12) == {}
  for bad in (0, -1.0, float("nan"), None):
    with pytest.raises(ValueError, match="seconds_per_step"):
      perf.efficiency_metrics(2e12, bad, 8e12)


def test_efficiency_for_a_compiled_step_on_cpu(cache, probes):
  m, k, n = 32, 64, 16
  compiled = jax.jit(jnp.dot).lower(jnp.zeros((m, k)), jnp.zeros((k, n))).compile()
  eff = perf.Efficiency.for_step(compiled, jax.devices()[:1], "float32")
  assert (eff.flops_per_step, eff.peak_flops_per_sec) == (2 * m * n * k, 1.5e11)
  assert not eff.lower_bound
  seconds = 1e-6
  assert eff.metrics(seconds) == pytest.approx(
    {
      "perf/tflops_per_sec": 2 * m * n * k / seconds / 1e12,
      "perf/mfu": 2 * m * n * k / seconds / 1.5e11,
    }
  )
