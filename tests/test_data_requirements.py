"""The switch that makes CI fail, rather than skip, a test whose data set is missing."""

import pytest

from tests import conftest


@pytest.mark.parametrize("required, outcome", [(False, "skip"), (True, "fail")])
def test_a_missing_data_set_skips_here_and_fails_in_ci(monkeypatch, required, outcome):
  monkeypatch.setattr(conftest, "REQUIRE_DATA", required)
  conftest.need_data(True, "present")  # Present: nothing happens either way.
  expected = pytest.skip.Exception if outcome == "skip" else pytest.fail.Exception
  with pytest.raises(expected, match="corpus X is not at /nowhere"):
    conftest.need_data(False, "corpus X is not at /nowhere")


def test_the_ci_script_sets_the_switch():
  script = (conftest.REPO / ".ci" / "run").read_text()
  assert "export JAXDL_REQUIRE_DATA=1" in script
  # Set before the test commands run.
  assert script.index("export JAXDL_REQUIRE_DATA=1") < script.index("python -m pytest")
