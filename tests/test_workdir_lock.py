"""The workdir lock (jaxdl.workdir_lock): a second run is refused with one line naming the holder,
a stale lock (dead process, reused pid, stopped heartbeat) is taken over with a warning, exactly
once when runs race for it, and a run releases it however it ends; end to end with `jaxdl train`
processes, a killed run included, and the two processes of one multi-host run sharing it."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from jaxdl import config as config_lib
from jaxdl import trainer, workdir_lock
from jaxdl.errors import CheckpointError
from tests.conftest import REPO
from tests.test_parallel import _env, _start_processes

EXPERIMENT = REPO / "experiments" / "mnist_cnn.py"


def _dead_pid() -> int:
  process = subprocess.Popen([sys.executable, "-c", ""])
  process.wait()
  return process.pid


def _write_lock(workdir, *, age_s=0.0, **fields):
  """A lock file as another run would leave it: this machine's, unless `fields` say otherwise."""
  workdir.mkdir(parents=True, exist_ok=True)
  record = {
    **workdir_lock._machine(),
    "pid": os.getpid(),
    "pid_start": workdir_lock._start_time(os.getpid()),
    "started": "2026-01-01T00:00:00+00:00",
    "command": ["jaxdl", "train", "other.py"],
    "token": "theirs",
    **fields,
  }
  path = workdir / workdir_lock.LOCK_FILE
  path.write_text(json.dumps(record))
  os.utime(path, (time.time() - age_s, time.time() - age_s))
  return path


def _holder(workdir):
  return json.loads((workdir / workdir_lock.LOCK_FILE).read_text())


def test_second_run_is_refused_with_one_line_naming_the_holder(tmp_path):
  workdir = tmp_path / "runs" / "a"
  lock = workdir_lock.acquire(workdir, ["/venv/bin/jaxdl", "train", "exp.py"])
  holder = _holder(workdir)
  assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
  with pytest.raises(CheckpointError) as refused:
    workdir_lock.acquire(workdir)
  message = str(refused.value)
  assert "\n" not in message
  assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
  assert "jaxdl train exp.py" in message and "another --workdir" in message
  lock.release()
  # Released: the file is gone, and so are the directories only the lock created.
  assert not (tmp_path / "runs").exists()
  workdir_lock.acquire(workdir).release()


def test_lock_is_released_when_the_run_raises(tmp_path):
  with pytest.raises(RuntimeError, match="boom"):
    with workdir_lock.hold(tmp_path):
      assert (tmp_path / workdir_lock.LOCK_FILE).is_file()
      raise RuntimeError("boom")
  assert not (tmp_path / workdir_lock.LOCK_FILE).exists() and tmp_path.is_dir()


def test_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
  dead = _dead_pid()
  _write_lock(tmp_path, pid=dead, pid_start=None)
  with caplog.at_level("WARNING", logger="jaxdl"):
    lock = workdir_lock.acquire(tmp_path)
  assert _holder(tmp_path)["pid"] == os.getpid()
  assert f"pid {dead} on host" in caplog.text and "no longer running" in caplog.text
  lock.release()


@pytest.mark.skipif(workdir_lock._start_time(os.getpid()) is None, reason="needs /proc")
def test_lock_of_a_reused_pid_is_stale(tmp_path):
  """The pid is alive, but it started at another time: another process got the number."""
  _write_lock(tmp_path, pid_start=workdir_lock._start_time(os.getpid()) - 1)
  workdir_lock.acquire(tmp_path).release()


def test_lock_of_another_host_is_stale_only_once_its_heartbeat_stops(tmp_path, caplog):
  _write_lock(tmp_path, host="node-7", pid=4242, age_s=workdir_lock.STALE_AFTER_SECONDS / 2)
  with pytest.raises(CheckpointError, match="in use by another jaxdl run.*pid 4242 on host node-7"):
    workdir_lock.acquire(tmp_path)
  _write_lock(tmp_path, host="node-7", pid=4242, age_s=workdir_lock.STALE_AFTER_SECONDS + 10)
  with caplog.at_level("WARNING", logger="jaxdl"):
    workdir_lock.acquire(tmp_path).release()
  assert "heartbeat stopped" in caplog.text and "node-7" in caplog.text


def test_live_process_keeps_its_lock_however_old_its_heartbeat(tmp_path):
  """A run stopped with Ctrl-Z must not lose its workdir: on its machine, its pid decides."""
  _write_lock(tmp_path, age_s=10 * workdir_lock.STALE_AFTER_SECONDS)
  with pytest.raises(CheckpointError, match=f"pid {os.getpid()} on host"):
    workdir_lock.acquire(tmp_path)


def test_heartbeat_refreshes_the_lock_while_held(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, "REFRESH_SECONDS", 0.02)
  lock = workdir_lock.acquire(tmp_path)
  path = tmp_path / workdir_lock.LOCK_FILE
  os.utime(path, (0, 0))
  deadline = time.monotonic() + 10
  while path.stat().st_mtime < time.time() - 60:
    assert time.monotonic() < deadline, "the heartbeat never touched the lock file"
    time.sleep(0.02)
  lock.release()


def test_runs_racing_for_a_stale_lock_have_one_winner(tmp_path, monkeypatch):
  """Eight runs judge the same lock stale, then take it over at once or a little later (the late
  ones would remove the winner's fresh lock if they did not check what they remove)."""
  _write_lock(tmp_path, pid=_dead_pid(), pid_start=None)
  judge = workdir_lock._stale_reason

  def slow_judge(holder, age_s):
    reason = judge(holder, age_s)
    if reason:
      time.sleep(0.3 + 0.05 * (int(threading.current_thread().name) % 4))
    return reason

  monkeypatch.setattr(workdir_lock, "_stale_reason", slow_judge)
  start = threading.Barrier(8)
  locks, refusals = [], []

  def race():
    start.wait()
    try:
      locks.append(workdir_lock.acquire(tmp_path))
    except CheckpointError as e:
      refusals.append(str(e))

  threads = [threading.Thread(target=race, name=str(i)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(locks) == 1 and len(refusals) == 7, refusals
  assert all("in use by another jaxdl run" in r for r in refusals)
  assert locks[0]._ours()  # The file holds the winner's record.
  assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lock.LOCK_FILE]
  locks[0].release()


def test_a_takeover_abandoned_midway_is_cleared(tmp_path, caplog, monkeypatch):
  """A run that died while taking over leaves lock.json.takeover: a fresh one makes the next run
  wait (and, within its patience, give up naming the file); an old one is removed."""
  monkeypatch.setattr(workdir_lock, "_WAIT_SECONDS", 0.3)
  _write_lock(tmp_path, pid=_dead_pid(), pid_start=None)
  takeover = tmp_path / workdir_lock.TAKEOVER_FILE
  takeover.write_text("12345")
  with pytest.raises(CheckpointError, match="Could not take the lock"):
    workdir_lock.acquire(tmp_path)
  os.utime(takeover, (time.time() - 60, time.time() - 60))
  lock = workdir_lock.acquire(tmp_path)
  assert "died while taking over" in caplog.text and "Took over the stale lock" in caplog.text
  assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lock.LOCK_FILE]
  lock.release()


def test_train_refuses_a_workdir_in_use_before_writing_to_it(tmp_path):
  """The lock alone is in the workdir (the other run has not written its config yet): the second
  run names the holder rather than calling the workdir foreign, and writes nothing."""
  lock = workdir_lock.acquire(tmp_path / "run")
  config = config_lib.load_experiment(EXPERIMENT)
  config_lib.apply_overrides(config, ["train.num_steps=2"])
  with pytest.raises(CheckpointError, match=f"in use by another jaxdl run .pid {os.getpid()}"):
    trainer.train(config, tmp_path / "run", show_progress=False)
  assert [p.name for p in (tmp_path / "run").iterdir()] == [workdir_lock.LOCK_FILE]
  lock.release()


# Steps of a few milliseconds, logged and saved every 5: a run trains until it is stopped.
ENDLESS = [
  "train",
  str(EXPERIMENT),
  "train.num_steps=100000",
  "train.batch_size=8",
  "train.log_every_steps=5",
  "train.checkpoint_every_steps=5",
  "train.eval_every_steps=100000",
  "data.eval_batch_size=500",
  "--no-progress",
]


def _jaxdl(args, workdir, **kwargs):
  command = [sys.executable, "-m", "jaxdl.cli", *args, "--workdir", str(workdir)]
  return command, {"cwd": REPO, "env": _env(1), "text": True, **kwargs}


def _start(args, workdir):
  command, kwargs = _jaxdl(args, workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  return subprocess.Popen(command, **kwargs)


def _run(args, workdir, timeout=300):
  command, kwargs = _jaxdl(args, workdir, capture_output=True, timeout=timeout)
  return subprocess.run(command, **kwargs)


def _train_steps(workdir):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r["step"] for r in map(json.loads, lines) if "train/loss" in r]


def _wait_until_training(process, workdir, after_step=0):
  """Until `process` has logged a step after `after_step` (so it holds the lock)."""
  deadline = time.monotonic() + 300
  while not (workdir / "metrics.jsonl").exists() or max(_train_steps(workdir) or [0]) <= after_step:
    assert process.poll() is None, process.communicate()[1]
    assert time.monotonic() < deadline
    time.sleep(0.5)


def _saved_steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow  # Four `jaxdl train` processes.
def test_jaxdl_train_refuses_a_second_run_and_takes_over_after_a_kill(tmp_path):
  workdir = tmp_path / "run"
  first = _start(ENDLESS, workdir)
  try:
    _wait_until_training(first, workdir)
    second = _run(ENDLESS, workdir, timeout=120)  # Without a lock it would train on.
    assert second.returncode == 2, second.stderr
    (error,) = [line for line in second.stderr.splitlines() if "error" in line]
    assert f"in use by another jaxdl run (pid {first.pid} on host {socket.gethostname()}" in error
    assert first.poll() is None
    first.send_signal(signal.SIGTERM)  # Saves and stops: a run that ends well.
    assert first.wait(timeout=300) == 128 + signal.SIGTERM
  finally:
    first.kill()
  assert not (workdir / workdir_lock.LOCK_FILE).exists()
  steps = _train_steps(workdir)
  assert steps == sorted(set(steps)) and steps  # Each step once: the second run wrote nothing.

  # The lock is free: the same command resumes; killed outright, it leaves its lock behind.
  third = _start(ENDLESS, workdir)
  try:
    _wait_until_training(third, workdir, after_step=_saved_steps(workdir)[-1])
    third.kill()
    third.wait(timeout=60)
  finally:
    third.kill()
  assert _holder(workdir)["pid"] == third.pid
  last = _saved_steps(workdir)[-1]
  fourth = _run([*ENDLESS, f"train.num_steps={last + 5}"], workdir)
  assert fourth.returncode == 0, fourth.stderr
  assert f"Took over the stale lock of workdir {workdir} (pid {third.pid}" in fourth.stderr
  assert f"process {third.pid} is no longer running" in fourth.stderr
  assert f"Resuming {workdir} from step {last}" in fourth.stderr
  assert not (workdir / workdir_lock.LOCK_FILE).exists()
  steps = _train_steps(workdir)
  assert steps == sorted(set(steps)) and steps[-1] == last + 5


@pytest.mark.slow  # Two runs of two processes.
def test_processes_of_one_run_share_the_lock_and_are_refused_together(tmp_path):
  workdir = tmp_path / "run"
  other = workdir_lock.acquire(workdir, ["jaxdl", "train", "other.py"])
  short = [*ENDLESS[:2], "train.num_steps=4", "train.batch_size=8", "--no-progress"]
  processes = _start_processes(short, workdir)
  try:
    outputs = [p.communicate(timeout=300) for p in processes]
  finally:
    for p in processes:
      p.kill()
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 2, err
    assert f"in use by another jaxdl run (pid {os.getpid()}" in err
  other.release()
  processes = _start_processes(short, workdir)  # Process 1 takes no lock of its own.
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err
  assert not (workdir / workdir_lock.LOCK_FILE).exists()
