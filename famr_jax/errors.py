"""The one exception type for a user's mistake.

Every function that validates user input raises :class:`FamrError` with a
one-line message; the CLI turns it into ``famr-jax: error: <message>`` and
exit status 2, never a traceback.
"""


class FamrError(ValueError):
  """A user's input is invalid (bad argument, missing file, refused overwrite)."""


class Diverged(FamrError):
  """A run's loss or params became NaN or inf: it stopped, and nothing of it was saved.

  Attributes:
    what: the run (``"train mlp"``, ``"ga"``, ...).
    step: the optimizer steps done when the divergence was seen (the step it
      happened at, or the end of the epoch or segment it happened in).
  """

  def __init__(self, what: str, step: int | None, reason: str):
    self.what, self.step, self.reason = what, step, reason
    where = f" by step {step}" if step is not None else ""
    super().__init__(f"{what} diverged{where} ({reason}); nothing was saved: try a smaller learning rate "
                     "or fewer steps")
