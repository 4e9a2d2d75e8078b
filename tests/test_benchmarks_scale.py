"""benchmarks/scale_gpt.py at smoke sizes: its three tables, held to what they must show.

compile and remat run in this process (lowering and compiling only); mesh needs 8 devices, so it
runs itself again in a process with 8 forced CPU devices. The mesh's bytes are held to counts of
the smoke GPT's parameters by hand: a wrong sharding or an unsharded count fails them.
"""

import json

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def scale_gpt():
  return load_benchmark("scale_gpt")


def table_rows(stdout: str) -> list[dict[str, str]]:
  """The markdown table at the end of the output, as {column: cell} per row."""
  lines = [l for l in stdout.splitlines() if l.startswith("|")]
  header = [c.strip() for c in lines[0].strip("|").split("|")]
  return [dict(zip(header, (c.strip() for c in l.strip("|").split("|")))) for l in lines[2:]]


def run(scale_gpt, capsys, tmp_path, *argv) -> tuple[list[dict[str, str]], list[dict]]:
  out = tmp_path / "rows.json"
  assert scale_gpt.main([*argv, "--smoke", "--json", str(out)]) == 0
  stdout = capsys.readouterr().out
  assert stdout.rstrip().splitlines()[-1].startswith("|")  # The table comes last.
  return table_rows(stdout), json.loads(out.read_text())["rows"]


@pytest.mark.slow  # Four compiles; CI runs it.
def test_compile_times_scanned_and_unrolled_at_two_depths(scale_gpt, capsys, tmp_path):
  table, rows = run(scale_gpt, capsys, tmp_path, "compile")
  assert [(r["layers"], r["form"]) for r in table] == [
    ("2", "scan"),
    ("2", "unrolled"),
    ("4", "scan"),
    ("4", "unrolled"),
  ]
  for r in rows:
    assert r["lower_seconds"] > 0 and r["compile_seconds"] > 0
    assert r["seconds"] == pytest.approx(r["lower_seconds"] + r["compile_seconds"])
  for scanned, unrolled in (rows[0:2], rows[2:4]):
    ratio = unrolled["seconds"] / scanned["seconds"]
    assert unrolled["unrolled_over_scanned"] == pytest.approx(ratio)
  assert [r["unrolled / scanned"] for r in table][::2] == ["-", "-"]


@pytest.mark.slow  # Four compiles; CI runs it.
def test_remat_full_keeps_fewer_temporaries_in_a_scanned_stack(scale_gpt, capsys, tmp_path):
  # Two policies of the four keep it quick; every policy runs the same code.
  table, rows = run(scale_gpt, capsys, tmp_path, "remat", "--policies", "none,full")
  assert [(r["form"], r["remat"]) for r in table] == [
    ("scan", "none"),
    ("scan", "full"),
    ("unrolled", "none"),
    ("unrolled", "full"),
  ]
  temp = {(r["form"], r["remat"]): r["temp_bytes"] for r in rows}
  # At the smoke size the 4 blocks' activations are most of the temporaries; full remat keeps
  # only each block's input. Unrolled, XLA:CPU's temporaries stay as they are with remat (as
  # they do for jax.checkpoint on a plain function), so that form is not held to it.
  assert temp["scan", "full"] < 0.6 * temp["scan", "none"]
  for r in rows:
    none = temp[r["form"], "none"]
    assert r["temp_over_none"] == pytest.approx(r["temp_bytes"] / none)
    assert r["argument_bytes"] > 0


def smoke_param_counts(L=2, D=64, F=256, V=256, T=32) -> dict[str, tuple[int, int]]:
  """The smoke GPT's parameters (2 layers, 8 heads of 8, width 64, MLP 256, vocabulary 256,
  context 32) as (split, whole) counts under fsdp=8 and under tensor=8.

  Per block: LayerNorms 2 x 2D; query, key, value [D, 8, 8] + biases 3D; out [8, 8, D] + bias D;
  fc_in [D, F] + bias F; fc_out [F, D] + bias D. Then wte [V, D], wpe [T, D], ln_f 2D.
  """
  matrices = L * (4 * D * D + 2 * D * F)
  biases_and_norms = L * (4 * D + 3 * D + D + F + D) + 2 * D
  # fsdp splits the width D of every matrix and embedding; biases and norms stay whole.
  fsdp = (matrices + V * D + T * D, biases_and_norms)
  # tensor splits heads (query/key/value and their biases, out), MLP units (fc_in and its bias,
  # fc_out) and the vocabulary (wte); the output biases, norms and wpe stay whole.
  tensor = (matrices + L * (3 * D + F) + V * D, L * (4 * D + D + D) + T * D + 2 * D)
  assert sum(fsdp) == sum(tensor)
  return {"fsdp": fsdp, "tensor": tensor}


def test_mesh_bytes_per_device_follow_the_shardings(scale_gpt, capsys, tmp_path):
  table, rows = run(scale_gpt, capsys, tmp_path, "mesh")
  assert [r["mesh"] for r in table] == list(scale_gpt.MESHES)
  by_mesh = {r["mesh"]: r for r in rows}
  counts = smoke_param_counts()
  total = sum(counts["fsdp"])
  assert by_mesh["data=8"]["param_bytes"] == 4 * total  # Replicated: float32, whole.
  split, whole = counts["fsdp"]
  assert by_mesh["fsdp=8"]["param_bytes"] == 4 * (split // 8 + whole)
  assert by_mesh["fsdp=8"]["param_whole_bytes"] == 4 * whole
  split, whole = counts["tensor"]
  assert by_mesh["tensor=8"]["param_bytes"] == 4 * (split // 8 + whole)
  for r in rows:
    # AdamW's two moments follow their parameters; its two step counts are int32 scalars.
    assert r["opt_state_bytes"] == 2 * r["param_bytes"] + 8
    assert r["total_bytes"] == r["param_bytes"] + r["opt_state_bytes"]
    assert r["fraction"] == pytest.approx(r["total_bytes"] / (3 * 4 * total + 8))
  # Within its whole biases and norms, fsdp=8 holds an eighth of data=8's parameters.
  assert by_mesh["fsdp=8"]["param_bytes"] / by_mesh["data=8"]["param_bytes"] < 0.14


def test_device_count_flag_replaces_a_forced_one(scale_gpt):
  flags = "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=1"
  assert scale_gpt.with_device_count(flags, 8) == (
    "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=8"
  )


@pytest.mark.parametrize(
  "argv, message",
  [
    (["remat", "--policies", "none,fulll"], "unknown ['fulll']"),
    (["mesh", "--presets", "gpt2_large"], "unknown ['gpt2_large']"),
    (["compile", "--layers", "0,2"], "must be at least 1"),
  ],
)
def test_bad_options_are_refused(scale_gpt, capsys, argv, message):
  with pytest.raises(SystemExit):
    scale_gpt.parse_args(argv)
  assert message in capsys.readouterr().err
