"""Errors meant for the person running jaxdl.

A `UserError` is something the user can fix (a bad override, a missing file, a workdir from another
model). The CLI prints its message without a traceback and exits with status 2; everything else is
a bug in jaxdl and keeps its traceback.
"""


class UserError(Exception):
  """A problem with the user's input; the message says what is wrong and how to fix it."""


class ConfigError(UserError):
  """An experiment file or override that cannot be applied."""


class DataError(UserError):
  """A data file that is missing, corrupt or inconsistent."""


class CheckpointError(UserError):
  """A workdir or checkpoint that does not fit the run asked for."""


class NonFiniteLossError(UserError):
  """The training loss became NaN or Inf."""
