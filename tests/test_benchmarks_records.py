"""benchmarks/record_sources.py at a smoke size: every source and cache setting gets its row."""

import pytest

from tests.conftest import load_benchmark


@pytest.mark.slow  # Writes full MNIST three ways (60,000 PNGs among them): ~30 s.
def test_every_source_and_cache_setting_is_timed(shared_mnist, capsys):
  assert (
    load_benchmark("record_sources").main(["--mnist", str(shared_mnist), "--batches", "8"]) == 0
  )
  lines = capsys.readouterr().out.splitlines()
  rows = [
    line.split()
    for line in lines[lines.index(next(l for l in lines if l.startswith("source"))) + 1 :]
  ]
  assert rows[0][:3] == ["IDX", "in", "memory"] and float(rows[0][-1]) == 1.0
  timed = [(" ".join(r[:-4]), r[-4]) for r in rows[1:]]
  assert timed == [
    (source, cache)
    for source in ("hf (uint8 lists)", "parquet (PNG)", "arrayrecord (raw)")
    for cache in ("memory", "none")
  ]
  assert all(float(r[-2]) > 0 for r in rows)
