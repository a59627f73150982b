"""The diagonal empirical Fisher of the training loss, computed once and stored with a checkpoint.

``F_ii = 1/N sum_n (d l(x_n, y_n; theta) / d theta_i)^2`` with ``l`` the
softmax cross-entropy at the *true* label (the *empirical* Fisher; the
"true" Fisher would sample the label from the model). It is the curvature
weight of the Fisher anchor of ``famr-fisher``
(``1/2 (theta - theta0)^T (F + lambda I) (theta - theta0)``): computed once
after training and stored next to the params as the checkpoint extra
``fisher``, so unlearning afterwards needs no retained data.

Per-example gradients are ``vmap(grad)`` over fixed-size chunks inside a
``lax.scan`` (one compiled program, bounded memory).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax import losses
from famr_jax.errors import FamrError

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]

FISHER_EXTRA = "fisher"


def padded_chunks(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """``[num_batches, batch_size]`` indices (padded with 0) and 0/1 weights.

  Example:
    >>> idx, w = padded_chunks(3, 2)
    >>> idx.tolist(), w.tolist()
    ([[0, 1], [2, 0]], [[1.0, 1.0], [1.0, 0.0]])
  """
  num_batches = -(-n // batch_size)
  idx = np.zeros(num_batches * batch_size, np.int32)
  idx[:n] = np.arange(n)
  weights = np.zeros(num_batches * batch_size, np.float32)
  weights[:n] = 1.0
  return idx.reshape(num_batches, batch_size), weights.reshape(num_batches, batch_size)


def diagonal_fisher(apply_fn: ApplyFn, params: Params, x: np.ndarray, y: np.ndarray, *,
                    batch_size: int = 256) -> Params:
  """Diagonal empirical Fisher ``1/N sum_n g_n * g_n`` of the cross-entropy, ``g_n`` per example.

  Args:
    apply_fn: ``apply_fn(params, x) -> logits``.
    params: the trained params (the point where the Fisher is taken).
    x: training inputs ``[N, ...]``.
    y: integer labels ``[N]``.
    batch_size: examples per vectorized chunk (memory: ``batch_size`` copies
      of the gradient).

  Returns:
    A pytree like ``params`` (float32; float64 for float64 params) of non-negative entries.

  Example:
    >>> import jax.numpy as jnp, numpy as np
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> f = diagonal_fisher(apply_fn, {"w": jnp.zeros((1, 2))}, np.ones((4, 1), np.float32),
    ...                     np.zeros(4, np.int32))
    >>> f["w"].tolist()   # g = x (softmax - onehot) = [-0.5, 0.5]
    [[0.25, 0.25]]
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y, np.int32)
  n = x.shape[0]
  if n == 0:
    raise FamrError("the Fisher needs at least one training example")
  if y.shape != (n,):
    raise FamrError(f"labels must have shape ({n},), got {y.shape}")
  if batch_size <= 0:
    raise FamrError(f"batch size must be positive, got {batch_size}")
  batch_size = min(batch_size, n)
  idx, weights = padded_chunks(n, batch_size)
  return chunked_fisher(apply_fn, params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(idx),
                     jnp.asarray(weights), n)


def accumulator_dtype(leaf) -> jnp.dtype:
  """The dtype a sum of squared gradients of ``leaf`` is kept in: float32, or float64 for float64 params.

  Example:
    >>> accumulator_dtype(jnp.zeros(2, jnp.bfloat16)), accumulator_dtype(jnp.zeros(2, jnp.int32))
    (dtype('float32'), dtype('float32'))
  """
  dtype = jnp.result_type(leaf)
  return jnp.promote_types(dtype, jnp.float32) if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 6))
def chunked_fisher(apply_fn, params, x, y, idx, weights, n):
  """The jitted core of :func:`diagonal_fisher` over :func:`padded_chunks` ``(idx, weights)``."""
  def example_loss(p, xi, yi):
    return losses.cross_entropy(apply_fn(p, xi[None]), yi[None])[0]

  per_example_grad = jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))

  def body(acc, spec):
    b_idx, b_w = spec
    grads = per_example_grad(params, x[b_idx], y[b_idx])
    sq = jax.tree.map(lambda g: jnp.tensordot(b_w, jnp.square(g), axes=1), grads)
    return jax.tree.map(lambda a, s: a + s.astype(a.dtype), acc, sq), None

  # The sums keep each leaf's own precision (float64 params: float64 sums; the scan's carry type
  # must not change across steps).
  zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), accumulator_dtype(p)), params)
  total, _ = jax.lax.scan(body, zeros, (idx, weights))
  return jax.tree.map(lambda t: t / n, total)


def _checkpoint_metadata(metadata: dict) -> dict:
  """A checkpoint's metadata minus what :func:`save_checkpoint` writes itself."""
  return {k: v for k, v in metadata.items() if k not in ("format", "param_shapes", "extras")}


def store_fisher(checkpoint: str | os.PathLike, *, out: str | os.PathLike | None = None,
                 batch_size: int = 256, overwrite: bool = False) -> dict:
  """Computes the diagonal Fisher of a trained checkpoint on its training set and stores it.

  In place (``out`` None or the checkpoint itself) the extra ``fisher`` is added next to the
  checkpoint's files (``famr_jax.io.checkpoints.add_extra``): nothing else in the folder is
  rebuilt, moved or removed. Otherwise a copy with the Fisher is written to ``out`` through the
  output protocol (``out`` may not overlap the checkpoint).

  Args:
    checkpoint: a ``famr-jax train`` checkpoint.
    out: where to write the checkpoint with its Fisher (default: in place).
    batch_size: examples per vectorized chunk.
    overwrite: replace an existing famr-jax ``out``.

  Returns:
    ``{"checkpoint": path, "num_examples": N, "compute_s": seconds (compile included)}``.

  Example:
    >>> # famr-jax fisher --checkpoint runs/digits_lenet5   (the CLI front end)
  """
  from famr_jax.io import checkpoints, outputs

  source = outputs.resolve(checkpoint)
  in_place = out is None or outputs.resolve(out) == source
  checkpoints.read_metadata(source)   # one line for a missing or damaged checkpoint, before any claim

  def compute():
    apply_fn, params, metadata, data = _restore(source)
    if "unlearned" in metadata:
      raise FamrError(f"{source} is an unlearned model; compute the Fisher of the original checkpoint")
    t0 = time.perf_counter()
    fisher = jax.block_until_ready(diagonal_fisher(apply_fn, params, data.x_train, data.y_train,
                                                   batch_size=batch_size))
    info = {"kind": "diagonal empirical Fisher of the training cross-entropy",
            "num_examples": int(len(data.y_train)), "compute_s": time.perf_counter() - t0}
    return params, metadata, fisher, info

  if in_place:
    with outputs.claim_output(source, "fisher"):
      _, _, fisher, info = compute()
      checkpoints.add_extra(source, FISHER_EXTRA, fisher, {"fisher": info}, overwrite=True)
    target = source
  else:
    with outputs.staged_directory(out, overwrite, command="fisher", inputs=(source,)) as staging:
      params, metadata, fisher, info = compute()
      extras = {name: tree for name, tree in checkpoints.load_checkpoint(source).extras.items()
                if name != FISHER_EXTRA}
      checkpoints.write_checkpoint(staging, params, {**_checkpoint_metadata(metadata), "fisher": info},
                                   extras={**extras, FISHER_EXTRA: fisher})
    target = outputs.resolve(out)
  return {"checkpoint": str(target), "num_examples": info["num_examples"], "compute_s": info["compute_s"]}


def _restore(checkpoint: Path):
  """``(apply_fn, params, metadata, data)`` of a ``famr-jax train`` checkpoint.

  The same restore as :func:`famr_jax.cli.runs.load_model`, from the layers
  below theory only (theory may not import the CLI).
  """
  from famr_jax.data.datasets import load_dataset
  from famr_jax.engine.training import check_finite
  from famr_jax.io.saved_model import checkpoint_data, load_model

  saved = load_model(checkpoint)
  metadata = saved.metadata
  if "data" not in metadata:
    raise FamrError(f"{checkpoint} is not a famr-jax model checkpoint (its metadata has no 'data')")
  spec = checkpoint_data(metadata, checkpoint)
  data = load_dataset(spec.get("dataset", "digits"), data_dir=spec.get("data_dir"),
                      max_train=spec.get("max_train"), max_test=spec.get("max_test"),
                      seed=int(metadata.get("seed", 0)), image_size=spec.get("image_size"),
                      preprocessing=metadata.get("preprocessing"))
  check_finite(f"data set {spec.get('dataset')}", data.x_train)
  if data.num_classes != metadata["num_classes"] or list(data.image_shape) != list(metadata["image_shape"]):
    raise FamrError(f"data set {spec.get('dataset')} no longer matches the checkpoint "
                    f"({data.num_classes} classes {data.image_shape} vs {metadata['num_classes']} "
                    f"{tuple(metadata['image_shape'])})")
  return saved.apply_fn, saved.params, metadata, data


def load_fisher(checkpoint: str | os.PathLike, like: Params | None = None) -> Params:
  """The diagonal Fisher stored with ``checkpoint``, or a one-line :class:`FamrError` saying how to compute it.

  Args:
    checkpoint: the checkpoint directory.
    like: optional params pytree whose structure (and leaf shapes) the Fisher must have.
  """
  from famr_jax.io import checkpoints
  metadata = checkpoints.read_metadata(checkpoint)
  if FISHER_EXTRA not in metadata.get("extras", {}):
    raise FamrError(missing_fisher_message(checkpoint))
  fisher = checkpoints.load_checkpoint(checkpoint).extras[FISHER_EXTRA]
  if like is not None:
    fisher = match_params(fisher, like)
  return fisher


def has_stored_fisher(checkpoint: str | os.PathLike | None) -> bool:
  """Whether ``checkpoint`` stores a diagonal Fisher (False for None; its metadata only is read).

  Example:
    >>> has_stored_fisher(None)
    False
  """
  if checkpoint is None:
    return False
  from famr_jax.io import checkpoints
  return FISHER_EXTRA in checkpoints.read_metadata(checkpoint).get("extras", {})


def missing_fisher_message(checkpoint: str | os.PathLike | None) -> str:
  """The one-line error for a Fisher anchor asked of a checkpoint without a stored Fisher."""
  where = str(Path(checkpoint).expanduser().resolve()) if checkpoint is not None else "DIR"
  return (f"checkpoint {where} has no stored Fisher, which the Fisher anchor needs: compute it once with "
          f"'famr-jax fisher --checkpoint {where}' (or train with 'famr-jax train --fisher')")


def match_params(fisher: Params, like: Params) -> Params:
  """``fisher`` restructured like ``like`` (checked leaf by leaf; FamrError on a mismatch)."""
  from famr_jax.io.checkpoints import tree_shapes
  want, got = tree_shapes(like), tree_shapes(fisher)
  if {k: v[0] for k, v in want.items()} != {k: v[0] for k, v in got.items()}:
    raise FamrError("the stored Fisher does not match the model's params; recompute it with 'famr-jax fisher'")
  flat = {k: v for k, v in zip(got, jax.tree.leaves(fisher))}
  treedef = jax.tree.structure(like)
  return jax.tree.unflatten(treedef, [jnp.asarray(flat[k], jnp.float32) for k in want])
