"""Resumable runs: Orbax ``CheckpointManager`` wiring for the minibatch engine.

A run with ``ResumeConfig(checkpoint_every=K)`` saves, every K optimizer
steps and at every epoch's end, the params, the optimizer state, the epoch's
running loss, the position in the run (epoch, step) and the history so far,
plus a *fingerprint* of the run (every setting that changes the result, the
data shapes and the PRNG key). Rerunning the same call (or CLI command)
restores the newest complete checkpoint and continues; since the step
schedule and every random draw are functions of (key, epoch, step), the
resumed run ends with the params of an uninterrupted one, bit for bit on the
same devices. A run whose fingerprint differs is refused, naming the keys.

Checkpoints are written asynchronously (the next steps run while Orbax
writes); a save cut short by a kill is an unfinished temporary directory that
the next run ignores and deletes. Arrays are restored onto the current mesh,
so a checkpoint written on 8 devices resumes on 1 and vice versa.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields


class RunStopped(Exception):
  """Raised when a run stops early on purpose (``stop_after_steps``); rerun it to resume.

  Attributes:
    step: the optimizer steps done so far (all saved in the checkpoint).
    directory: the checkpoint directory.
  """

  def __init__(self, step: int, directory: str):
    super().__init__(f"stopped after {step} steps; checkpoint in {directory}: run the same command again "
                     "to resume")
    self.step = step
    self.directory = directory


@dataclasses.dataclass(frozen=True)
class ResumeConfig(CheckedFields):
  """Where and how often a run saves resumable checkpoints.

  Attributes:
    checkpoint_dir: directory of the resumable checkpoints (made absolute).
      Runs of the CLI default it to OUT.resume next to their output.
    checkpoint_every: save every this many optimizer steps and at each
      epoch's end; 0 saves nothing (no resume).
    checkpoint_keep: keep the newest this many checkpoints.
    stop_after_steps: stop after this many optimizer steps of this
      invocation, with a checkpoint (for time-limited job slots); the next
      invocation resumes. None runs to the end.
  """
  checkpoint_dir: str | None = None
  checkpoint_every: int = 0
  checkpoint_keep: int = 2
  stop_after_steps: int | None = None

  @property
  def enabled(self) -> bool:
    return self.checkpoint_every > 0

  def validate(self) -> "ResumeConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    if self.checkpoint_every < 0:
      raise FamrError(f"checkpoint_every must be non-negative, got {self.checkpoint_every}")
    if self.checkpoint_keep < 1:
      raise FamrError(f"checkpoint_keep must be at least 1, got {self.checkpoint_keep}")
    if self.stop_after_steps is not None and self.stop_after_steps < 1:
      raise FamrError(f"stop_after_steps must be positive, got {self.stop_after_steps}")
    if self.enabled and not self.checkpoint_dir:
      raise FamrError("checkpoint_every > 0 needs a checkpoint directory")
    if self.stop_after_steps is not None and not self.enabled:
      raise FamrError("stop_after_steps needs checkpoints (checkpoint_every > 0) to resume from")
    return self


def flatten_dict(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (JSON values, tuples as lists).

  Example:
    >>> flatten_dict({"train": {"lr": 0.1, "shape": (2, 3)}})
    {'train.lr': 0.1, 'train.shape': [2, 3]}
  """
  out: dict[str, Any] = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten_dict(value, name + "."))
    else:
      out[name] = json.loads(json.dumps(value, default=_json_default))
  return out


def _json_default(obj):
  if isinstance(obj, np.integer):
    return int(obj)
  if isinstance(obj, np.floating):
    return float(obj)
  if isinstance(obj, (tuple, set)):
    return list(obj)
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  return str(obj)


def fingerprint_difference(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
  """The keys whose values differ (or exist on one side only), sorted.

  Example:
    >>> fingerprint_difference({"lr": 0.1, "epochs": 3}, {"lr": 0.2, "epochs": 3})
    ['lr']
  """
  keys = set(saved) | set(current)
  return sorted(k for k in keys if saved.get(k, "<absent>") != current.get(k, "<absent>"))


def describe_difference(saved: Mapping[str, Any], current: Mapping[str, Any], keys: list[str],
                        limit: int = 6) -> str:
  """One line: ``key (checkpoint: a, now: b), ...`` for the first ``limit`` keys."""
  def short(v):
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."
  parts = [f"{k} (checkpoint: {short(saved.get(k, '<absent>'))}, now: {short(current.get(k, '<absent>'))})"
           for k in keys[:limit]]
  more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(parts) + more


class Resumer:
  """One run's checkpoints: restore the newest, save on schedule (Orbax ``CheckpointManager``).

  Args:
    config: a :class:`ResumeConfig` with checkpoints enabled.
    fingerprint: flat JSON-able dict of everything that must match to resume.
  """

  def __init__(self, config: ResumeConfig, fingerprint: Mapping[str, Any]):
    import orbax.checkpoint as ocp
    from famr_jax.io.outputs import claim_resume_directory

    config.validate()
    self.config = config
    self.directory = claim_resume_directory(config.checkpoint_dir)   # ours, or refused: never a user's folder
    self.fingerprint = flatten_dict(fingerprint)
    self._ocp = ocp
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint_keep, create=True,
                                             cleanup_tmp_directories=True),
        item_names=("state", "meta"))

  def restore(self, like_state: Any, check_position=None) -> tuple[Any, dict] | None:
    """The newest intact checkpoint, restored onto ``like_state``'s shardings, or None.

    A step whose files are damaged or whose position is out of range (``check_position(step, meta)``
    returns a reason) is skipped with a warning for the next newest one; when every kept step is
    damaged the resume is refused (one line), never silently restarted.

    Raises:
      FamrError: the checkpoint belongs to a run with another fingerprint, or none is intact.
    """
    import logging
    ocp = self._ocp
    steps = sorted(self.manager.all_steps(), reverse=True)
    reasons = []
    for step in steps:
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
      except Exception as e:  # noqa: BLE001 - damaged JSON: Orbax raises several types
        reasons.append(f"step {step}: unreadable meta ({type(e).__name__})")
        continue
      reason = _position_problem(step, meta, check_position)
      if reason:
        reasons.append(f"step {step}: {reason}")
        continue
      saved = meta.get("fingerprint", {})
      diff = fingerprint_difference(saved, self.fingerprint)
      if diff:
        raise FamrError(f"cannot resume from {self.directory}: the run's settings differ in "
                        f"{describe_difference(saved, self.fingerprint, diff)}; rerun with the original "
                        "settings or delete that directory")
      abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like_state)
      try:
        state = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract))).state
      except Exception as e:  # noqa: BLE001 - a truncated array file: Orbax/TensorStore raise many types
        reasons.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}")
        continue
      if reasons:
        logging.getLogger("famr_jax").warning("skipped damaged resume checkpoints in %s (%s)", self.directory,
                                              "; ".join(reasons))
        self._drop_steps_after(step)
      return state, meta
    if reasons:
      raise FamrError(f"cannot resume from {self.directory}: no intact checkpoint ({'; '.join(reasons)[:300]}); "
                      "delete that directory to start over")
    return None

  def _drop_steps_after(self, step: int) -> None:
    """Deletes this run's damaged step folders newer than ``step`` (the run writes them again)."""
    import shutil
    for newer in [s for s in self.manager.all_steps() if s > step]:
      try:
        self.manager.delete(newer)
      except Exception:  # noqa: BLE001 - a damaged step may not even delete cleanly through Orbax
        shutil.rmtree(self.directory / str(newer), ignore_errors=True)
    self.manager.reload()

  def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
    """Saves asynchronously (returns once the arrays are copied off the devices)."""
    ocp = self._ocp
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({**meta, "fingerprint": self.fingerprint})), force=True)

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self.manager.wait_until_finished()
    self.manager.close()


def _position_problem(step: int, meta: Any, check_position) -> str | None:
  """Why a restored ``meta`` cannot be trusted (types, then the caller's range check), or None."""
  if not isinstance(meta, dict):
    return "meta is not a table"
  if not all(type(meta.get(k)) is int and meta[k] >= 0 for k in ("epoch", "row", "step")):
    return "epoch, row and step must be non-negative integers"
  if meta["step"] != step or not isinstance(meta.get("history"), list):
    return f"meta names step {meta['step']}" if meta["step"] != step else "history is not a list"
  return check_position(step, meta) if check_position is not None else None


def position_check(epochs: int, num_batches: int):
  """``check_position(step, meta)`` for a run of ``epochs`` epochs of ``num_batches`` steps each."""
  def check(step: int, meta: dict) -> str | None:
    epoch, row = meta["epoch"], meta["row"]
    if epoch > epochs or row >= num_batches or (epoch == epochs and row):
      return f"position epoch {epoch} row {row} is outside {epochs} epochs of {num_batches} steps"
    ok = step == epoch * num_batches + row if row else (epoch - 1) * num_batches < step <= epoch * num_batches
    if not ok or len(meta["history"]) > epochs + 1:
      return f"step {step} does not match epoch {epoch} row {row}"
    return None
  return check


def data_digest(arrays: Sequence[np.ndarray], max_bytes: int = 1 << 26) -> str:
  """A BLAKE2 digest of the data (every row up to 64 MiB per array, evenly spaced rows beyond)."""
  import hashlib
  h = hashlib.blake2b(digest_size=16)
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.shape, a.dtype.str)).encode())
    stride = max(1, -(-a.nbytes // max_bytes)) if a.nbytes > max_bytes else 1
    h.update(np.ascontiguousarray(a[::stride]).tobytes())
  return h.hexdigest()


def tree_spec(tree: Any) -> dict[str, list]:
  """Shapes and dtypes of a pytree, as the fingerprint records them."""
  from famr_jax.io.checkpoints import tree_shapes
  return tree_shapes(jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)), tree))


def open_resumer(resume: ResumeConfig, prep: Any, *, epochs: int, batch_size: int, key_data,
                  scale: Any, initial_metrics: bool, resume_meta: Mapping[str, Any] | None):
  """The run's :class:`Resumer` and what it restored (None: a fresh run).

  ``prep`` is the engine's :class:`famr_jax.engine.descent.PreparedDescent`; the
  fingerprint holds every setting that changes the result, the data's shapes
  and digest and the PRNG key, so a changed run is refused, naming the keys.
  """
  fingerprint = {
      "engine": {"epochs": epochs, "batch_size": batch_size, "num_examples": prep.num_examples,
                 "example_shapes": [[list(a.shape[1:]), str(a.dtype)] for a in prep.data],
                 "params": tree_spec(prep.params), "optimizer_state": tree_spec(prep.opt_state),
                 "key": np.asarray(key_data).tolist(), "compute_dtype": scale.compute_dtype,
                 "checkpoint_every": resume.checkpoint_every, "initial_metrics": initial_metrics,
                 "data_digest": prep.data_digest},
      "run": dict(resume_meta or {})}
  resumer = Resumer(resume, fingerprint)
  try:
    restored = resumer.restore({"params": prep.params, "opt_state": prep.opt_state,
                                "loss_acc": prep.zero_acc()},
                               position_check(epochs, prep.plan.num_batches))
  except BaseException:
    resumer.close()
    raise
  return resumer, restored
