"""runtime.reuse_host_memory: freed memory stays with the process for the next step."""

import json
import platform
import subprocess
import sys

import pytest

from jaxdl import host_memory
from jaxdl.errors import ConfigError
from tests.conftest import REPO

_PROBE = """
import json, sys
import numpy as np
from jaxdl import host_memory

def rss_mb():
  for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024

applied = host_memory.configure(sys.argv[1])
before = rss_mb()
block = np.ones(64 * 2**20 // 8)  # 64 MB through malloc, touched.
del block
print(json.dumps({"applied": applied, "kept_mb": rss_mb() - before}))
"""


def _probe(setting):
  out = subprocess.run(
    [sys.executable, "-c", _PROBE, setting], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
  platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's"
)
def test_freed_blocks_are_kept_only_when_on():
  on, off = _probe("on"), _probe("off")
  assert on["applied"] and not off["applied"]
  assert on["kept_mb"] > 60  # The freed 64 MB stayed mapped, ready for the next step.
  assert off["kept_mb"] < 8  # glibc's default: a block that large is unmapped on free.


def test_bad_setting_is_refused():
  with pytest.raises(ConfigError, match="runtime.reuse_host_memory='yes' must be auto, on or off"):
    host_memory.configure("yes")
