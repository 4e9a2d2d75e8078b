"""Workdirs through etils.epath (jaxdl.paths): a workdir given as text, pathlib.Path or epath.Path
trains the same, and a gs:// workdir trains, resumes, evaluates and holds its lock as a local one.

gs:// here is a fake bucket in a temporary directory: gcsfs's place in fsspec's registry is taken
by a file system that stores gs://BUCKET/KEY under it and, like GCS, cannot append and honours
create-only writes. What does not go through fsspec is pointed at the same directory: Orbax's
TensorStore arrays (its GCS kvstore spec becomes a file one) and tensorboardX's event files (its
gs:// writer becomes one through epath). Everything else jaxdl writes must go through epath: the
tests run in an empty current directory, which must stay empty (a gs:// path handed to open() or
pathlib would land in ./gs:/...).
"""

import contextlib
import gzip
import json
import os
import pathlib
import sys
import time

from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem
from orbax.checkpoint._src.path import gcs_utils
import pytest
from tensorboardX import record_writer

from jaxdl import cli, paths, trainer, workdir_lock
from jaxdl import config as config_lib
from jaxdl import metrics as metrics_lib
from jaxdl.checkpoint import Checkpointer
from jaxdl.errors import CheckpointError, UserError
from tests.conftest import REPO

EXPERIMENT = REPO / "experiments" / "mnist_cnn.py"
# 10 steps at batch 32: logged at 5 and 10, evaluated at 10, saved at 5 and 10 (and where a run
# stops). The gs:// run stops at 7, mid-interval, and resumes.
SMALL = [
  "train.batch_size=32",
  "runtime.kernels=xla",
  "train.log_every_steps=5",
  "train.eval_every_steps=10",
  "train.checkpoint_every_steps=5",
  "data.eval_batch_size=500",
]
RUN = "gs://bucket/run"


@contextlib.contextmanager
def _fake_gcs(root: pathlib.Path):
  """gs:// (and gcs://) stored under `root` for the length of the block; yields the file system's
  class, whose `creates` counts create-only writes."""

  class FakeGCS(DirFileSystem):
    protocol = ("gs", "gcs")
    cachable = False
    creates = 0

    def __init__(self, *args, **kwargs):
      del args, kwargs  # gcsfs's options (epath passes finalize_on_close).
      super().__init__(path=str(root), fs=LocalFileSystem(auto_mkdir=True))

    def open(self, path, mode="rb", *args, **kwargs):
      if "a" in mode:  # gcsfs turns it into "w", a silent overwrite.
        raise NotImplementedError(f"GCS objects cannot be appended to: {path}")
      return super().open(path, mode, *args, **kwargs)

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
      if mode != "create":
        return super().pipe_file(path, value, **kwargs)
      type(self).creates += 1
      local = self._join(path)
      os.makedirs(os.path.dirname(local), exist_ok=True)
      with open(local, "xb") as f:  # GCS: the upload's ifGenerationMatch=0 precondition.
        f.write(value)

  class EpathEventFiles:  # tensorboardX's record-writer factory, for gs:// paths.
    def open(self, path):
      return epath.Path(path).open("wb")

    def directory_check(self, path):
      pass

  def tensorstore_spec(path):
    return {"driver": "file", "path": f"{root}/{path.removeprefix('gs://')}"}

  registry = sys.modules["fsspec.registry"]._registry  # fsspec.registry is a read-only view.
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(registry, "gs", FakeGCS)
    patch.setitem(registry, "gcs", FakeGCS)
    patch.setattr(gpath, "_is_tf_installed", lambda: False)  # epath would use tf.io.gfile.
    patch.setitem(record_writer.REGISTERED_FACTORIES, "gs", EpathEventFiles())
    patch.setattr(gcs_utils, "get_kvstore_for_gcs", tensorstore_spec)
    patch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()
    try:
      yield FakeGCS
    finally:
      epath_backend.fsspec_backend._get_filesystem.cache_clear()


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The fake gs:// root (gs://b/k is bucket/b/k), in an empty current directory."""
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  with _fake_gcs(tmp_path / "bucket"):
    yield tmp_path / "bucket"
  assert not os.listdir(cwd), "a gs:// path was written as a local one"


def _config(*overrides):
  config = config_lib.load_experiment(EXPERIMENT)
  config_lib.apply_overrides(config, [*SMALL, *overrides])
  return config


def _records(workdir):
  return [
    {k: v for k, v in r.items() if not k.startswith("perf/")}
    for r in metrics_lib.read_metrics(workdir)
  ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Three local 10-step runs, their workdir given as text, pathlib.Path and epath.Path; and a
  gs:// run trained to step 7 (profiling step 2) by a process killed after its last checkpoint
  (its metrics writer never closes), then resumed to 10 by `jaxdl train --workdir gs://...`. The
  fake bucket stays in place while the module's tests run."""
  root = tmp_path_factory.mktemp("epath")
  local = {
    "text": str(root / "text"),
    "pathlib": root / "pathlib",
    "epath": epath.Path(root / "epath"),
  }
  for workdir in local.values():
    trainer.train(_config("train.num_steps=10"), workdir, show_progress=False)
  cwd = root / "cwd"
  cwd.mkdir()
  with pytest.MonkeyPatch.context() as patch, _fake_gcs(root / "bucket"):
    patch.chdir(cwd)
    with pytest.MonkeyPatch.context() as killed:
      # Nothing is uploaded but at checkpoints, and nothing when the run ends.
      killed.setattr(metrics_lib, "UPLOAD_EVERY_SECONDS", float("inf"))
      killed.setattr(paths.Appender, "close", lambda self: None)
      trainer.train(
        _config("train.num_steps=7", "train.profile_steps=2,1"), RUN, show_progress=False
      )
    overrides = [*SMALL, "train.num_steps=10"]
    assert cli.main(["train", str(EXPERIMENT), "--workdir", RUN, "--no-progress", *overrides]) == 0
    yield local, root / "bucket" / "bucket" / "run"
  assert not os.listdir(cwd), "a gs:// path was written as a local one"


def test_workdir_as_text_pathlib_or_epath_trains_the_same(runs):
  local, _ = runs
  records = [_records(w) for w in local.values()]
  assert records[0] and records[0] == records[1] == records[2]
  names = [sorted(p.name for p in pathlib.Path(w).iterdir()) for w in local.values()]
  assert names[0] == names[1] == names[2]
  assert "lock.json" not in names[0] and "config.json" in names[0]


def test_gs_workdir_trains_and_resumes_as_a_local_one(runs):
  """Exact resume from gs://: the killed run's lines up to its checkpoint were uploaded, and the
  resumed run's metrics.jsonl equals an uninterrupted local run's."""
  local, stored = runs
  records = _records(RUN)
  # The killed run logged its last, partial interval and evaluated at step 7, before its save.
  assert [r["step"] for r in records] == [5, 7, 7, 10, 10]
  assert [r for r in records if r["step"] != 7] == _records(local["text"])
  metadata = json.loads((stored / "metadata.json").read_text())
  assert [r["start_step"] for r in metadata["runs"]] == [0, 7]
  saved = json.loads((stored / "config.json").read_text())
  assert saved == json.loads((pathlib.Path(local["text"]) / "config.json").read_text())
  assert not (stored / "lock.json").exists()
  checkpointer = Checkpointer(f"{RUN}/checkpoints", read_only=True)
  assert checkpointer.all_steps() == [5, 7, 10]
  checkpointer.close()
  # Orbax marks a step complete on GCS with a commit file, not a rename.
  assert (stored / "checkpoints" / "10" / "commit_success.txt").is_file()


def test_gs_workdir_holds_tensorboard_and_the_profile(runs):
  _, stored = runs
  assert len(list((stored / "tensorboard").glob("events.out.tfevents.*"))) == 2
  (trace,) = (stored / "profile").glob("plugins/profile/*/perfetto_trace.json.gz")
  with gzip.open(trace) as f:
    events = json.load(f)["traceEvents"]
  assert {int(e["args"]["step_num"]) for e in events if e.get("name") == "train"} == {2}


def test_eval_and_init_checkpoint_read_a_gs_workdir(runs):
  """`jaxdl eval` of the gs:// run repeats its last evaluation; init.checkpoint names it."""
  step, metrics, _ = trainer.evaluate_workdir(RUN)
  directory, source_step = trainer._source_checkpoint(RUN)
  last_eval = [r for r in _records(RUN) if "eval/loss" in r][-1]
  assert step == 10 and metrics == {k: v for k, v in last_eval.items() if k != "step"}
  assert (str(directory), source_step) == (f"{RUN}/checkpoints", None)


def test_workdir_path_takes_text_pathlib_and_epath_alike(tmp_path):
  for given in (str(tmp_path), tmp_path, epath.Path(tmp_path)):
    path = paths.workdir_path(given)
    assert isinstance(path, epath.Path) and path == epath.Path(tmp_path)
    assert paths.is_local(path)
  assert str(paths.workdir_path("runs/a")) == "runs/a"  # Relative stays relative, as before.


def test_workdir_path_refuses_what_it_cannot_write_with_the_fix(monkeypatch):
  with pytest.raises(UserError, match=r"^'gs:/b/r' looks like a gs:// URL.*: gs://b/r$"):
    paths.workdir_path(pathlib.Path("gs://b/r"))
  with pytest.raises(UserError, match=r"^'s3://b/r': jaxdl keeps workdirs .* gs:// only"):
    paths.workdir_path("s3://b/r")

  def no_gcsfs(scheme):
    raise ImportError("Install gcsfs to access Google Storage")

  monkeypatch.setattr(fsspec, "get_filesystem_class", no_gcsfs)
  with pytest.raises(UserError, match=r"gcsfs.*pip install 'jaxdl\[gcs\]'$") as refused:
    paths.workdir_path("gs://b/r")
  assert "\n" not in str(refused.value)


def _lock_of(bucket, workdir, *, host, age_s):
  """A lock object as a run on `host` would leave it, last written `age_s` seconds ago."""
  path = bucket / workdir.removeprefix("gs://") / workdir_lock.LOCK_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  record = {"host": host, "boot_id": "x", "pid_namespace": 1, "pid": 4242, "token": "theirs"}
  path.write_text(json.dumps({**record, "command": ["jaxdl", "train", "other.py"]}))
  os.utime(path, (time.time() - age_s, time.time() - age_s))
  return path


def test_gs_lock_refuses_a_second_run_and_takes_over_a_stale_one(bucket, caplog):
  fake = type(fsspec.filesystem("gs"))
  lock = workdir_lock.acquire("gs://b/w", ["jaxdl", "train", "exp.py"])
  assert fake.creates == 1  # The store's create-only write, not a look and then a write.
  with pytest.raises(CheckpointError, match=r"^Workdir gs://b/w is in use by another jaxdl run"):
    workdir_lock.acquire("gs://b/w")
  lock.release()
  assert not (bucket / "b" / "w" / workdir_lock.LOCK_FILE).exists()
  _lock_of(bucket, "gs://b/w", host="node-7", age_s=workdir_lock.STALE_AFTER_SECONDS / 2)
  with pytest.raises(CheckpointError, match="pid 4242 on host node-7"):
    workdir_lock.acquire("gs://b/w")
  _lock_of(bucket, "gs://b/w", host="node-7", age_s=workdir_lock.STALE_AFTER_SECONDS + 10)
  with caplog.at_level("WARNING", logger="jaxdl"):
    workdir_lock.acquire("gs://b/w").release()
  assert "heartbeat stopped" in caplog.text and "node-7" in caplog.text


def test_gs_lock_heartbeat_rewrites_the_object(bucket, monkeypatch):
  monkeypatch.setattr(workdir_lock, "REFRESH_SECONDS", 0.02)
  lock = workdir_lock.acquire("gs://b/w")
  stored = bucket / "b" / "w" / workdir_lock.LOCK_FILE
  text = stored.read_text()
  os.utime(stored, (0, 0))
  deadline = time.monotonic() + 10
  while stored.stat().st_mtime < time.time() - 60:
    assert time.monotonic() < deadline, "the heartbeat never rewrote the lock object"
    time.sleep(0.02)
  lock.release()
  assert not stored.exists() and text


def test_gs_metrics_upload_at_sync_and_keep_earlier_runs_lines(bucket, monkeypatch):
  monkeypatch.setattr(metrics_lib, "UPLOAD_EVERY_SECONDS", float("inf"))
  stored = bucket / "b" / "w" / metrics_lib.METRICS_FILE
  for steps in ([1, 2], [3]):  # A run, then a resumed one.
    writer = metrics_lib.MetricWriter("gs://b/w", enabled=True)
    writer.write(steps[0], {"train/loss": 0.5})
    before = [r["step"] for r in metrics_lib.read_metrics("gs://b/w")]
    assert before == ([] if steps == [1, 2] else [1, 2])  # Written, not uploaded yet.
    writer.sync()
    assert metrics_lib.read_metrics("gs://b/w")[-1] == {"step": steps[0], "train/loss": 0.5}
    for step in steps[1:]:
      writer.write(step, {"train/loss": 0.25})
    writer.close()
  assert [r["step"] for r in metrics_lib.read_metrics("gs://b/w")] == [1, 2, 3]
  assert stored.is_file()


def test_gs_metrics_truncation_keeps_every_dropped_line(bucket):
  lines = "".join(json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in (1, 2, 3))
  stored = bucket / "b" / "w" / metrics_lib.METRICS_FILE
  stored.parent.mkdir(parents=True)
  stored.write_text(lines)
  assert metrics_lib.truncate_after("gs://b/w", 2) == 1
  assert metrics_lib.truncate_after("gs://b/w", 1) == 1
  assert [r["step"] for r in metrics_lib.read_metrics("gs://b/w")] == [1]
  dropped = (stored.parent / "metrics.jsonl.dropped").read_text().splitlines()
  assert [json.loads(line)["step"] for line in dropped] == [3, 2]
