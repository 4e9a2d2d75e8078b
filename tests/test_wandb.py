"""The W&B tracker (jaxdl.wandb_tracker) in offline mode: what a run logs, read back from the files
wandb wrote, equals metrics.jsonl, config.json and metadata.json; a resumed run continues the same
W&B run; a failed or interrupted run says so; W&B changes no result; only process 0 logs; a
missing wandb is a one-line error. No test reaches the network: W&B's server address and proxy
point at a local socket that must stay silent."""

import json
import math
import os
from pathlib import Path
import signal
import socket
import struct
import sys
import time
import zlib

import jax
import pytest

from jaxdl import cli, trainer, wandb_tracker
from jaxdl import config as config_lib
from jaxdl import metrics as metrics_lib
from jaxdl.errors import ConfigError, NonFiniteLossError
from tests.conftest import REPO

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402  # pylint: disable=g-import-not-at-top

EXPERIMENT = REPO / "experiments" / "mnist_cnn.py"
SMALL = [
  "train.batch_size=32",
  "train.log_every_steps=5",
  "train.eval_every_steps=10",
  "data.eval_batch_size=500",
]


def _train(workdir, *overrides):
  config = config_lib.load_experiment(EXPERIMENT)
  config_lib.apply_overrides(config, [*SMALL, *overrides])
  return trainer.train(config, workdir, show_progress=False)


# ---------------------------------------------------------------------------------------------
# Reading what wandb wrote: WORKDIR/wandb/offline-run-*/run-ID.wandb, one file each time a process
# logs to the run. The file is a LevelDB log (W&B's header, then 32 KiB blocks of CRC-checked
# chunks) of wandb_internal_pb2.Record messages, as `wandb sync` reads it.

_HEADER = 7  # ":W&B", a 2-byte magic, a version byte.
_BLOCK = 32 * 1024
_FULL, _LAST = 1, 4  # The chunk kinds that end a record (2, 3: its first, middle parts).


def _records(path: Path):
  data = path.read_bytes()
  assert data[:4] == b":W&B", data[:_HEADER]
  pos, pending = _HEADER, b""
  while pos + 7 <= len(data):
    if _BLOCK - pos % _BLOCK < 7:  # Too little room left for a chunk header: padding.
      pos += _BLOCK - pos % _BLOCK
      continue
    crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
    chunk = data[pos + 7 : pos + 7 + length]
    pos += 7 + length
    if len(chunk) < length:
      break  # Still being written.
    if kind == 0:
      break  # Zeros past the last record.
    assert zlib.crc32(bytes([kind]) + chunk) == crc, f"corrupt chunk at {pos}"
    pending += chunk
    if kind in (_FULL, _LAST):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      yield record
      pending = b""


def _key(item) -> str:
  return item.key or ".".join(item.nested_key)


def _segment(path: Path) -> dict:
  """One process's part of a run: its id, config, history by step, summary, exit code."""
  seg = {"config": {}, "history": {}, "summary": {}, "exit_code": None, "preempting": False}
  for record in _records(path):
    kind = record.WhichOneof("record_type")
    if kind == "run":
      seg.update(id=record.run.run_id, project=record.run.project, tags=list(record.run.tags))
      seg.update(name=record.run.display_name)
      updates = record.run.config.update
    elif kind == "config":
      updates = record.config.update
    else:
      updates = ()
    seg["config"].update({_key(u): json.loads(u.value_json) for u in updates})
    if kind == "history":
      values = {_key(i): json.loads(i.value_json) for i in record.history.item}
      seg["history"][record.history.step.num] = {
        k: v for k, v in values.items() if not k.startswith("_")
      }
    elif kind == "summary":
      seg["summary"].update({_key(u): json.loads(u.value_json) for u in record.summary.update})
    elif kind == "exit":
      seg["exit_code"] = record.exit.exit_code
    elif kind == "preempting":
      seg["preempting"] = True
  seg["summary"] = {k: v for k, v in seg["summary"].items() if not k.startswith("_")}
  return seg


def _finished_segment(path: Path) -> dict:
  """`_segment` once W&B has written the run's exit: wandb-core writes the file on its own
  after `finish()` returns (and before the process exits)."""
  deadline = time.monotonic() + 60
  while (seg := _segment(path))["exit_code"] is None and time.monotonic() < deadline:
    time.sleep(0.05)
  assert seg["exit_code"] is not None, f"{path} has no exit record"
  return seg


def _segments(workdir: Path) -> list[dict]:
  """The run's segments, in the order they logged."""
  paths = (workdir / "wandb").glob("offline-run-*/run-*.wandb")
  return sorted(map(_finished_segment, paths), key=lambda s: min(s["history"], default=0))


def _history(segments: list[dict]) -> dict[int, dict]:
  merged = {}
  for seg in segments:
    assert not merged.keys() & seg["history"].keys()  # No step logged by two processes.
    merged.update(seg["history"])
  return merged


def _logged(workdir: Path) -> dict[int, dict]:
  """metrics.jsonl merged by step, its non-finite strings ("nan") read back as floats."""
  merged = {}
  for record in metrics_lib.read_metrics(workdir):
    values = {k: float(v) if isinstance(v, str) else v for k, v in record.items()}
    merged.setdefault(values.pop("step"), {}).update(values)
  return merged


def _same(a: dict, b: dict) -> bool:
  """Equal to the bit, NaN equal to NaN."""
  return a.keys() == b.keys() and all(
    x == y or (math.isnan(x) and math.isnan(y)) for x, y in ((a[k], b[k]) for k in a)
  )


# ---------------------------------------------------------------------------------------------
# W&B offline, every directory it uses under the test's, and a silent socket as its server.


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
  """W&B's environment for the module's runs; yields the socket W&B must never reach."""
  root = tmp_path_factory.mktemp("wandb_env")
  server = socket.socket()
  server.bind(("127.0.0.1", 0))
  server.listen(16)
  address = "http://127.0.0.1:%d" % server.getsockname()[1]
  env = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_ERROR_REPORTING": "false",
    "WANDB_BASE_URL": address,
    "HTTP_PROXY": address,
    "HTTPS_PROXY": address,
    **{f"WANDB_{d}_DIR": str(root / d.lower()) for d in ("CACHE", "CONFIG", "DATA")},
    "WANDB_DIR": str(root / "wandb_dir"),
  }
  with pytest.MonkeyPatch.context() as patch:
    for name, value in env.items():
      patch.setenv(name, value)
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "https_proxy", "WANDB_API_KEY"):
      patch.delenv(name, raising=False)
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_TAGS", "WANDB_NAME", "WANDB_RUN_ID"):
      patch.delenv(name, raising=False)
    yield server
  server.close()


def _no_connection(server: socket.socket) -> None:
  server.settimeout(0)
  try:
    connection, peer = server.accept()
  except BlockingIOError:
    return
  connection.close()
  pytest.fail(f"offline W&B connected to its server address or proxy (from {peer})")


@pytest.fixture(scope="module")
def resumed(offline, tmp_path_factory):
  """A run logged to W&B, stopped at step 10 and resumed to 20; and the same run without W&B.

  Returns (W&B workdir, plain workdir, the run id the first part kept)."""
  root = tmp_path_factory.mktemp("resumed")
  _train(root / "wandb", "train.num_steps=10", "log.wandb=true", "log.wandb_tags=['a','b']")
  first_id = json.loads((root / "wandb" / wandb_tracker.RUN_ID_FILE).read_text())["id"]
  _train(root / "wandb", "train.num_steps=20", "log.wandb=true", "log.wandb_tags=['a','b']")
  _train(root / "plain", "train.num_steps=10")
  _train(root / "plain", "train.num_steps=20")
  return root / "wandb", root / "plain", first_id


def test_history_is_metrics_jsonl_step_by_step(resumed):
  workdir, _, _ = resumed
  history, logged = _history(_segments(workdir)), _logged(workdir)
  assert sorted(history) == sorted(logged) == [5, 10, 15, 20]
  for step in logged:  # Train means, eval metrics and perf/ timings, to the bit.
    assert _same(history[step], logged[step]), step
  assert {"train/loss", "eval/accuracy", "perf/examples_per_sec"} <= logged[20].keys()


def test_summary_is_the_last_logged_values(resumed):
  workdir, _, _ = resumed
  last = {}
  for step in sorted(_logged(workdir)):
    last.update(_logged(workdir)[step])
  assert _same(_segments(workdir)[-1]["summary"], last)


def test_config_is_config_json_and_metadata_json(resumed):
  workdir, _, _ = resumed
  saved = json.loads((workdir / "config.json").read_text())
  runs = json.loads((workdir / "metadata.json").read_text())["runs"]
  segments = _segments(workdir)
  assert len(segments) == len(runs) == 2
  for seg, run, num_steps in zip(segments, runs, (10, 20)):
    config = {k: v for k, v in seg["config"].items() if k not in ("_wandb", "jaxdl")}
    assert config == {**saved, "train": {**saved["train"], "num_steps": num_steps}}
    assert seg["config"]["jaxdl"] == run  # Versions, git commit, devices, command, plan.
  assert runs[1]["start_step"] == 10 and runs[1]["git_commit"] is not None


def test_resumed_run_continues_the_same_wandb_run(resumed):
  workdir, _, first_id = resumed
  assert json.loads((workdir / wandb_tracker.RUN_ID_FILE).read_text()) == {"id": first_id}
  first, second = _segments(workdir)
  assert first["id"] == second["id"] == first_id
  assert sorted(first["history"]) == [5, 10] and sorted(second["history"]) == [15, 20]
  for seg in (first, second):
    assert (seg["project"], seg["name"], seg["tags"]) == ("jaxdl", workdir.name, ["a", "b"])
    assert seg["exit_code"] == 0 and not seg["preempting"]


def test_wandb_changes_no_result(resumed):
  workdir, plain, _ = resumed

  def results(run):  # Line by line; perf/ timings differ between any two runs.
    return [
      {k: v for k, v in r.items() if not k.startswith("perf/")}
      for r in metrics_lib.read_metrics(run)
    ]

  assert results(workdir) == results(plain)
  assert not (plain / "wandb").exists() and not (plain / wandb_tracker.RUN_ID_FILE).exists()


def test_failed_run_finishes_with_exit_code_1(offline, tmp_path):
  with pytest.raises(NonFiniteLossError):
    _train(
      tmp_path / "diverged",
      "log.wandb=true",
      "optimizer.name=sgd",
      "optimizer.learning_rate=1e4",
      "train.num_steps=30",
      "train.log_every_steps=1",
    )
  (seg,) = _segments(tmp_path / "diverged")
  assert seg["exit_code"] == 1
  logged = _logged(tmp_path / "diverged")
  assert logged and all(_same(seg["history"][step], logged[step]) for step in logged)


def test_nonfinite_values_reach_wandb_as_floats(offline, tmp_path):
  config = config_lib.base_config()
  config_lib.apply_overrides(config, ["log.wandb=true"])
  tracker = wandb_tracker.start(config, tmp_path, {"command": ["test"]})
  writer = metrics_lib.MetricWriter(tmp_path, sinks=[tracker])
  values = {"a": float("nan"), "b": float("inf"), "c": -float("inf"), "d": 0.1}
  writer.write(3, values)
  writer.close()
  (line,) = metrics_lib.read_metrics(tmp_path)
  assert line == {"step": 3, "a": "nan", "b": "inf", "c": "-inf", "d": 0.1}
  (seg,) = _segments(tmp_path)
  assert _same(seg["history"][3], values) and _same(seg["summary"], values)
  assert seg["config"]["jaxdl"] == {"command": ["test"]} and seg["exit_code"] == 0


def test_interrupted_run_finishes_as_preempted(offline, tmp_path, monkeypatch):
  original_write = metrics_lib.MetricWriter.write

  def write_then_interrupt(self, step, metrics):
    original_write(self, step, metrics)
    if step == 5:  # Inside train(), where its handler is installed: a real SIGINT.
      os.kill(os.getpid(), signal.SIGINT)

  monkeypatch.setattr(metrics_lib.MetricWriter, "write", write_then_interrupt)
  stopped = _train(tmp_path / "stopped", "train.num_steps=20", "log.wandb=true")
  assert stopped.interrupted_by == signal.SIGINT
  (seg,) = _segments(tmp_path / "stopped")
  assert seg["exit_code"] == 128 + signal.SIGINT and seg["preempting"]  # As `jaxdl train` exits.


def test_only_process_0_logs(offline, tmp_path, monkeypatch):
  config = config_lib.base_config()
  config_lib.apply_overrides(config, ["log.wandb=true"])
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setitem(sys.modules, "wandb", None)  # Not needed, so not imported.
  wandb_tracker.check(config)
  assert wandb_tracker.start(config, tmp_path, {}) is None
  writer = metrics_lib.MetricWriter(tmp_path, sinks=[_Refusing()])
  writer.write(1, {"train/loss": 1.0})
  writer.close()
  assert list(tmp_path.iterdir()) == []


class _Refusing:
  def write(self, step, values):
    raise AssertionError("a process other than 0 logged")

  close = write


def test_missing_wandb_is_a_one_line_error(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "wandb", None)
  workdir = tmp_path / "run"
  argv = ["train", str(EXPERIMENT), "--workdir", str(workdir), "log.wandb=true"]
  assert cli.main(argv) == 2
  first_line = capsys.readouterr().err.strip().splitlines()[0]
  assert "log.wandb=true" in first_line and "pip install 'jaxdl[wandb]'" in first_line
  assert not workdir.exists()  # Refused before the run wrote anything.


def test_wandb_that_cannot_start_is_a_user_error(tmp_path, monkeypatch):
  def refuse(**kwargs):
    raise wandb.errors.CommError("no route to api.wandb.ai")

  monkeypatch.setattr(wandb, "init", refuse)
  config = config_lib.base_config()
  config_lib.apply_overrides(config, ["log.wandb=true"])
  with pytest.raises(ConfigError, match=r"^log.wandb=true: W&B could not start the run \(Comm"):
    wandb_tracker.start(config, tmp_path, {})


def test_tags_must_be_strings(tmp_path):
  config = config_lib.base_config()
  config_lib.apply_overrides(config, ["log.wandb=true", "log.wandb_tags=[1]"])
  with pytest.raises(ConfigError, match=r"^log.wandb_tags=\[1\] is not a list of tags"):
    wandb_tracker.check(config)


def test_workdir_from_before_the_log_section_resumes_with_wandb():
  saved = config_lib.base_config()
  del saved["log"]
  new = config_lib.base_config()
  config_lib.apply_overrides(new, ["log.wandb=true", "log.wandb_project=mine"])
  assert config_lib.resume_conflicts(saved, new) == []
  assert wandb_tracker._log_settings(saved)["wandb"] is False  # pylint: disable=protected-access


# Last in the module (the file runs in order, on one xdist worker): every run above has logged.
def test_offline_wandb_never_reaches_the_network(resumed, offline):
  del resumed  # The module's main runs, whichever tests were selected.
  _no_connection(offline)
