"""The front door: :func:`unlearn` runs any registered method with one signature.

Every method takes the same arguments in the same order -- the model as
``apply_fn(params, x) -> logits`` and its params, the forget request, a PRNG
key -- plus the training data for methods that read it, and returns an
:class:`UnlearnResult`. Which method to use (measured, ``docs/results.md``):

* a whole class, with the training data: ``"famr-plus"``;
* samples (a random or given subset), with the data: ``"ga"`` (its sample defaults: a step budget);
* a whole class with no data at all: ``"impressions"``;
* ``method=None`` runs the one above for the request; :func:`unlearn_config` shows the config it runs;
* how close is that to a retrain: :func:`famr_jax.compare`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence
import warnings

import jax
import numpy as np

from famr_jax.data.datasets import Dataset
from famr_jax.data.forget import ForgetSet
from famr_jax.engine.descent import typed_key
from famr_jax.errors import FamrError
from famr_jax.methods.protocol import check_one_model
from famr_jax.methods.registry import UnlearnTask, get_method, method_names
from famr_jax.methods.resolve import Request, recommended_status, resolve, run_task
from famr_jax.theory.fisher import has_stored_fisher
from famr_jax.validation import PROBE_ROWS, check_images, check_labels, check_model

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


class UnlearnResult(NamedTuple):
  """What :func:`unlearn` returns: the new params, the per-epoch history and the cost.

  Attributes:
    params: the unlearned params (same structure as the input params).
    history: one dict of metrics per epoch (epoch 0: before any step, for most methods).
    method: the method's name.
    config: the config it ran with (defaults plus overrides).
    run_s: seconds of work, compilation excluded.
    compile_s: seconds of compilation (0 when every program came from the cache).
  """
  params: Params
  history: list[dict[str, float]]
  method: str
  config: Any
  run_s: float
  compile_s: float

  def __repr__(self) -> str:
    # Compact in a notebook: no params dump, the last epoch's metrics only.
    leaves = jax.tree.leaves(self.params)
    size = sum(int(np.size(a)) for a in leaves)
    last = {k: round(v, 4) for k, v in (self.history[-1] if self.history else {}).items()
            if isinstance(v, (int, float))}
    return (f"UnlearnResult(method={self.method!r}, run_s={self.run_s:.2f}, compile_s={self.compile_s:.2f}, "
            f"params={size:,} in {len(leaves)} arrays, last={last})")


def as_dataset(data: Any, num_classes: int) -> Dataset:
  """``data`` as a :class:`famr_jax.Dataset`: a Dataset, or training arrays ``(x, y)`` (no test split).

  Example:
    >>> import numpy as np
    >>> d = as_dataset((np.zeros((4, 2, 2, 1), np.float32), np.array([0, 1, 0, 1])), 2)
    >>> d.x_train.shape, d.image_shape, len(d.x_test)
    ((4, 2, 2, 1), (2, 2, 1), 0)
  """
  if isinstance(data, Dataset):
    check_images(data.x_train[:PROBE_ROWS], "data.x_train")
    check_labels(data.y_train, data.num_classes, "data.y_train")
    return data
  if not (isinstance(data, (tuple, list)) and len(data) == 2):
    raise FamrError("data must be a famr_jax.Dataset or a pair (x_train, y_train) of arrays")
  x = check_images(data[0], "data x")
  y = check_labels(data[1], num_classes, "labels y")
  if len(x) != len(y):
    raise FamrError(f"data (x, y) must have shapes (N, ...) and (N,); got {x.shape} and {y.shape}")
  y = y.astype(np.int32)
  return Dataset("arrays", x, y, x[:0], y[:0], int(num_classes), tuple(x.shape[1:]), ())


def _check_request(forget: ForgetSet, data: Dataset | None) -> None:
  if data is not None and forget.indices.size and int(forget.indices.max()) >= len(data.y_train):
    raise FamrError(f"the forget request indexes {int(forget.indices.max()) + 1} training examples but data "
                    f"holds {len(data.y_train)}")


def unlearn(method: str | None, apply_fn: ApplyFn, params: Params, forget: ForgetSet, key: jax.Array, *,
            data: Any = None, config: Any = None, model: Any = None, model_name: str = "",
            input_shape: Sequence[int] | None = None, checkpoint: str | None = None, scale: Any = None,
            resume: Any = None, show_progress: bool = False, **overrides: Any) -> UnlearnResult:
  """Runs the registered unlearning ``method`` on a model.

  Args:
    method: a registered name (:func:`famr_jax.method_names`): ``"famr-plus"``, ``"famr"``,
      ``"impressions"``, ``"ga"``, ...; None: the recommended one for the request (``famr-plus`` for
      classes, ``ga`` for samples, ``impressions`` for classes without data).
    apply_fn: ``apply_fn(params, x) -> logits`` (Linen ``model.apply``, an NNX
      ``nnx.split`` pair wrapped in a function, or any plain function).
    params: the trained params (a pytree; never modified).
    forget: what to forget: :func:`famr_jax.forget_classes`, ``forget_samples`` or ``forget_random``.
    key: a PRNG key, ``jax.random.key(seed)`` or ``jax.random.PRNGKey(seed)``.
    data: the training data ``(x, y)`` (or a :class:`famr_jax.Dataset`); ``None`` for data-free
      methods (``impressions``, ``famr-zeroshot``).
    config: the method's config, used as given (default: its defaults for ``model_name`` and the request,
      a sample request's step budget cut to 5 passes over the forget set: :func:`unlearn_config`).
    model: what a method needs beyond ``apply_fn`` to split the model into a frozen head and a
      trainable tail (``famr-plus``'s ``train_from``, activation-space impressions): a famr-jax
      model, or model parts (:mod:`famr_jax.models`).
    model_name: a famr-jax model name, for its tuned defaults ("" for the generic ones).
    input_shape: ``(H, W, C)`` of one input, for data-free methods (default: from ``data`` or
      inferred from the params).
    checkpoint: a checkpoint directory, for methods that read stored extras (a diagonal Fisher).
    scale: a :class:`famr_jax.ScaleConfig` (data parallel, bf16, gradient accumulation), for
      methods that support it.
    resume: a :class:`famr_jax.ResumeConfig` (resumable checkpoints), likewise.
    show_progress: progress bars.
    **overrides: config fields to change from the defaults (``lr=1e-3``, ``epochs=2``, ...); one equal
      to its resolved value changes nothing.

  Returns:
    An :class:`UnlearnResult`.

  Warns:
    UserWarning: with no method named, where the audit does not show the recommended one equivalent to
      retraining (sample requests: :func:`famr_jax.methods.resolve.recommended_status`).

  Raises:
    FamrError: an unknown method or option, a missing or malformed input (one line), checked
      before any work (also a request the method cannot serve: samples to a class-only method, no
      data for a method that reads it, scale or resume settings it does not take);
      :class:`famr_jax.errors.Diverged` (a FamrError) when the loss or the params became NaN or inf.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, famr_jax as fj
    >>> x = np.eye(3, dtype=np.float32).repeat(10, 0); y = np.arange(3).repeat(10)
    >>> apply_fn = lambda p, x: x @ p["w"]
    >>> params = {"w": 4.0 * jnp.eye(3)}
    >>> r = fj.unlearn("famr-plus", apply_fn, params, fj.forget_classes(y, [1], 3), jax.random.PRNGKey(0),
    ...                data=(x, y), epochs=50, lr=0.5)
    >>> int(jnp.argmax(apply_fn(r.params, x[10:11]))) != 1, int(jnp.argmax(apply_fn(r.params, x[:1])))
    (True, 0)
  """
  spec, config, dataset = _resolve(method, forget, data, config, model, model_name, checkpoint, scale, resume,
                                   overrides)
  status = recommended_status(Request.of(forget, dataset is not None).kind) if method is None else None
  if status:   # the honest default: a recommended method the audit does not back says so
    warnings.warn(f"famr-jax: no method named, running {spec.name!r}: {status}", UserWarning, stacklevel=2)
  key = typed_key(key)
  if input_shape is None and dataset is not None:
    input_shape = dataset.image_shape
  probe = (dataset.x_train if dataset is not None
           else None if input_shape is None else np.full((2, *input_shape), 0.5, np.float32))
  check_model(apply_fn, params, forget.num_classes, probe)
  if model is None and not spec.uses_data:
    model = apply_fn   # data-free methods on a plain function: pixel-space impressions, the whole model tuned
  task = UnlearnTask(apply_fn, params, model, dataset, forget, key, show_progress, scale=scale, resume=resume,
                     checkpoint=checkpoint, input_shape=None if input_shape is None else tuple(input_shape))
  result = run_task(spec, task, config)
  return UnlearnResult(result.params, list(result.history), spec.name, config, float(result.run_s),
                       float(result.compile_s))


def unlearn_config(method: str | None, forget: ForgetSet, *, data: Any = None, config: Any = None,
                   model: Any = None, model_name: str = "", checkpoint: str | None = None, scale: Any = None,
                   resume: Any = None, **overrides: Any) -> Any:
  """The config :func:`unlearn` would run with the same arguments, resolved and checked, without running it.

  Every refusal :func:`unlearn` makes of the method, the request and the options is made here too.

  Example:
    >>> import numpy as np, famr_jax as fj
    >>> y = np.arange(10).repeat(100)
    >>> forget = fj.forget_samples(list(range(20)), 1000, 10)
    >>> fj.unlearn_config("famr", forget, data=(np.zeros((1000, 2, 2, 1), np.float32), y), lr=1e-4).steps
    5
  """
  return _resolve(method, forget, data, config, model, model_name, checkpoint, scale, resume, overrides)[1]


def _resolve(method, forget, data, config, model, model_name, checkpoint, scale, resume, overrides):
  """``(spec, config, dataset)`` of a call of :func:`unlearn`, every input checked before any work."""
  if not isinstance(forget, ForgetSet):
    raise FamrError("forget must be a ForgetSet: famr_jax.forget_classes, forget_samples or forget_random")
  if method is not None:
    get_method(method)   # an unknown name first
  dataset = as_dataset(data, forget.num_classes) if data is not None else None
  _check_request(forget, dataset)
  has_fisher = has_stored_fisher(checkpoint)
  spec, config = resolve(method, Request.of(forget, dataset is not None), model_name, overrides, config=config,
                         data=dataset is not None, model=model is not None, scale=scale, resume=resume,
                         has_fisher=has_fisher, checkpoint=checkpoint)
  check_one_model(spec)   # unlearn returns one model's params
  return spec, config, dataset


__all__ = ["UnlearnResult", "as_dataset", "method_names", "unlearn", "unlearn_config"]
