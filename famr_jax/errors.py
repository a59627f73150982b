"""The one exception type for a user's mistake.

Every function that validates user input raises :class:`FamrError` with a
one-line message; the CLI turns it into ``famr-jax: error: <message>`` and
exit status 2, never a traceback.
"""


class FamrError(ValueError):
  """A user's input is invalid (bad argument, missing file, refused overwrite)."""
