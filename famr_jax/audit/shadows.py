"""The shadow-model farm: N originals, N retrains and N unlearned models, each group one vmapped program.

For one forget request of a data set D with forget set F:

* **originals**: the training recipe on D from N fresh inits (seeds ``i``);
* **retrains**: the recipe on D without F from N other inits (the reference
  distribution of "never trained on F");
* **independent retrains**: a second group of N, the sanity check that an
  audit reports chance for a perfect unlearner;
* **unlearned**: a registered method applied to each original.

Every group runs through :func:`famr_jax.engine.farm.run_farm`: the runs are
built by the same code as one training or one unlearning (``train_classifier``,
the method's registry entry) and run as one program over a leading model axis
where the method allows (its spec's ``vmappable``), else one by one. The unlearned
group runs the config :func:`famr_jax.methods.resolve.resolve` gives for the
request, through :func:`famr_jax.methods.resolve.run_task`, as :func:`famr_jax.unlearn` does.

**The user's model, trained as the user trains it.** A model with BatchNorm
(:func:`famr_jax.models.has_batch_norm`) trains its shadows in train mode (batch
statistics, :func:`famr_jax.models.make_train_apply_fn`) and then gets each
shadow's own running statistics (:func:`famr_jax.models.recompute_batch_stats`),
as ``famr-jax train`` and the gold retrain do; a group then carries them
stacked beside its params (:class:`ShadowGroup`), every shadow is evaluated with
its own (:func:`evaluation_view`), and a method unlearns each original bound to
its statistics. A caller's own recipe replaces the library's:
``train_fn(x, y, key) -> params`` (the contract of ``compare``'s ``retrain``;
a ``DescentResult`` or, for BatchNorm, Flax variables ``{"params",
"batch_stats"}`` also do) trains every original, retrain and independent
retrain, one call per model, checked before any work (:func:`check_train_fn`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from famr_jax import models
from famr_jax.audit.queries import check_queries
from famr_jax.data.forget import ForgetSet
from famr_jax.engine.farm import FARM_MODES, FarmResult, run_farm, stack_trees, unstack_tree
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.errors import FamrError
from famr_jax.methods.registry import UnlearnTask, get_method
from famr_jax.methods.resolve import Request, resolve, run_task

MIN_SHADOWS = 2
MIN_FORGET_EXAMPLES = 2
AUDITS = ("ulira",)


@dataclasses.dataclass(frozen=True)
class AuditConfig:
  """How an unlearning audit runs.

  Attributes:
    attack: ``"ulira"`` (per-example U-LiRA and the challenge's epsilon score).
    shadows: models per group (originals, retrains, unlearned), at least 2; 16 to 256 is typical.
    mode: ``"vmap"`` (one program per group; refused for a method that cannot be vmapped),
      ``"loop"`` (one run at a time) or ``"auto"`` (vmap where the method allows and the measurement
      favours it: :func:`famr_jax.engine.farm.auto_mode`).
    fixed_variance: U-LiRA with one global variance instead of one per example.
    delta: the challenge's delta in its epsilon.
    paired: common random numbers: retrain ``i`` shares original ``i``'s initialisation and minibatch order
      (it trains on the whole training set in the original's order with the forget rows weighted 0; the
      independent retrains follow the same recipe with their own keys), and the verdicts test the paired AUC
      (:mod:`famr_jax.audit.paired`). With a ``train_fn``, retrain ``i`` gets original ``i``'s key.
    queries: augmented queries (:mod:`famr_jax.audit.queries`): ``"flip"`` (a mirror, only where it keeps
      the label) and / or ``"shift"`` (one-pixel translations); the statistic is the mean over the views.
  """
  attack: str = "ulira"
  shadows: int = 16
  mode: str = "auto"
  fixed_variance: bool = False
  delta: float = 1e-5
  paired: bool = False
  queries: tuple[str, ...] = ()

  def validate(self) -> "AuditConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    if self.attack not in AUDITS:
      raise FamrError(f"audit must be one of {', '.join(AUDITS)}, got {self.attack!r}")
    if isinstance(self.shadows, bool) or int(self.shadows) != self.shadows or self.shadows < MIN_SHADOWS:
      raise FamrError(f"an audit needs at least {MIN_SHADOWS} shadow models per group, got {self.shadows}")
    if self.mode not in FARM_MODES:
      raise FamrError(f"farm mode must be one of {', '.join(FARM_MODES)}, got {self.mode!r}")
    if not 0.0 <= float(self.delta) < 1.0:
      raise FamrError(f"delta must lie in [0, 1), got {self.delta}")
    if not isinstance(self.paired, (bool, np.bool_)):
      raise FamrError(f"paired must be True or False, got {self.paired!r}")
    check_queries(self.queries)
    return self


def check_auditable(forget: ForgetSet, methods: tuple[str, ...] = (), mode: str = "auto") -> None:
  """One-line refusals, before any work: too small a forget set, a method an audit cannot run or vmap."""
  n = len(forget.indices)
  if n < MIN_FORGET_EXAMPLES:
    what = f"classes {list(forget.classes)} have" if forget.kind == "classes" else "the request has"
    raise FamrError(f"an audit needs at least {MIN_FORGET_EXAMPLES} forget examples (its attacks are per "
                    f"example); {what} {n} in the training set")
  for name in methods:
    spec = get_method(name)
    why = audit_refusal(spec)
    if why:
      raise FamrError(f"method {name!r} cannot be audited: {why}")
    if mode == "vmap" and spec.vmappable is False:
      raise FamrError(f"method {name!r} cannot be vmapped over shadow models (it is not one engine descent); "
                      "use farm mode 'loop' or 'auto'")


def audit_refusal(spec) -> str | None:
  """Why an audit cannot run ``spec`` on shadow models (None when it can): its inputs exist for the checkpoint only.

  Example:
    >>> audit_refusal(get_method("famr-fisher")), audit_refusal(get_method("ga"))
    ("it reads the checkpoint's stored Fisher, which no shadow model has", None)
  """
  if not spec.uses_data:
    return "it is a data-free class method"
  if spec.ensemble:
    return "its models are shard ensembles (exact by construction: no shard it keeps saw the forget set)"
  if "fisher" in spec.needs:
    return "it reads the checkpoint's stored Fisher, which no shadow model has"
  return None


def check_shadow_model(model: Any, mode: str = "auto", methods: Sequence[str] = ()) -> None:
  """Refuses, before any work, a model the farm cannot make fresh inits of (it needs a Flax Linen module),
  and farm mode ``"vmap"`` for methods on a BatchNorm model (each shadow carries its own statistics)."""
  import flax.linen as nn
  if not isinstance(model, nn.Module):
    raise FamrError(f"an audit trains fresh shadow models, so it needs model as a Flax Linen module (a "
                    f"famr_jax.models model), not a {type(model).__name__}")
  if mode == "vmap" and methods and models.has_batch_norm(model):
    raise FamrError("a BatchNorm model's shadows each carry their own statistics, so a method runs on them one "
                    "by one: use farm mode 'loop' or 'auto'")


class ShadowFarm(NamedTuple):
  """The reference groups of one request: params stacked over a leading model axis, and their costs."""
  originals: Any
  retrains: Any
  independent_retrains: Any
  costs: dict          # group -> {"run_s", "compile_s", "mode", "per_model_s"}
  stats: dict | None = None   # group -> stacked BatchNorm running statistics (None without BatchNorm)


class ShadowGroup(NamedTuple):
  """One group of shadow models: params and (BatchNorm) running statistics stacked over a model axis."""
  params: Any
  stats: Any           # None without BatchNorm
  result: FarmResult   # its cost


def cost_entry(result: FarmResult, n: int) -> dict:
  """The JSON cost of a farm group (``per_model_s``: run time per model, compilation excluded)."""
  return {"run_s": result.run_s, "compile_s": result.compile_s, "mode": result.mode, "per_model_s": result.run_s / n}


@functools.lru_cache(maxsize=16)
def _vmapped_init(model: Any, image_shape: tuple[int, int, int]) -> Callable:
  return jax.jit(jax.vmap(lambda k: models.init_params(model, k, image_shape)))


def initial_params(model: Any, keys: jax.Array, image_shape: tuple[int, int, int]) -> list:
  """Fresh inits of ``model`` for each key (one vmapped, jitted init: Flax's eager init costs ~0.3 s a model)."""
  stacked = _vmapped_init(model, tuple(image_shape))(keys)
  return [unstack_tree(stacked, i) for i in range(keys.shape[0])]


def model_keys(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """``(init_keys, order_keys)`` of a group of ``n`` models: model ``i`` starts from ``init_params(model,
  init_keys[i])`` and draws its minibatch order from ``order_keys[i]``; a ``train_fn`` gets ``init_keys[i]``.

  Example:
    >>> [k.shape for k in model_keys(jax.random.key(0), 3)]
    [(3,), (3,)]
  """
  keys = jax.random.split(key, 2 * n)
  return keys[:n], keys[n:]


def check_train_fn(train_fn: Any) -> None:
  """Refuses, before any work, a ``train_fn`` that cannot be called as ``train_fn(x, y, key)``.

  Example:
    >>> try:
    ...   check_train_fn(lambda x, y: None)
    ... except FamrError as e:
    ...   print(e)
    train_fn must take (x, y, key) and return the trained params: it does not accept 3 positional arguments
  """
  if train_fn is None:
    return
  if not callable(train_fn):
    raise FamrError(f"train_fn must be a function (x, y, key) -> params, got {type(train_fn).__name__}")
  try:
    inspect.signature(train_fn).bind(None, None, None)
  except TypeError:
    raise FamrError("train_fn must take (x, y, key) and return the trained params: it does not accept 3 "
                    "positional arguments") from None
  except ValueError:   # no signature to read (a builtin): called as documented
    pass


def _trained_by_user(out: Any, template: Any, batch_norm: bool, i: int) -> tuple[Any, Any]:
  """``(params, stats or None)`` of what ``train_fn`` returned for model ``i``, checked against the model."""
  stats = None
  if hasattr(out, "params") and not isinstance(out, dict):
    out = out.params   # a DescentResult
  if batch_norm and isinstance(out, dict) and set(out) == {"params", models.BATCH_STATS}:
    out, stats = out["params"], out[models.BATCH_STATS]
  want = jax.tree.map(lambda a: tuple(a.shape), template)
  try:
    got = jax.tree.map(lambda a: tuple(np.shape(a)), out)
  except Exception:   # noqa: BLE001 -- anything not a pytree of arrays
    got = None
  if got is None or jax.tree.structure(got) != jax.tree.structure(want) or got != want:
    raise FamrError(f"train_fn returned, for shadow model {i}, params that are not the model's (another "
                    "structure or shapes than its init): it must return the trained params of model")
  if not all(bool(np.all(np.isfinite(np.asarray(a)))) for a in jax.tree.leaves(out)):
    raise FamrError(f"train_fn returned non-finite params for shadow model {i} (a diverged training)")
  return out, stats


def train_models(model: Any, apply_fn: Callable, x: np.ndarray, y: np.ndarray, train_config: TrainConfig,
                 key: jax.Array, n: int, image_shape: Sequence[int], *, rows: Sequence[np.ndarray] | None = None,
                 mode: str = "auto", train_fn: Callable | None = None, example_weights: np.ndarray | None = None,
                 show_progress: bool = False, desc: str = "shadows") -> ShadowGroup:
  """Trains a group of ``n`` models from scratch as the user's model is trained.

  Args:
    model: the Flax module (fresh inits; BatchNorm is trained in train mode).
    apply_fn: ``apply_fn(params, x) -> logits`` (eval mode).
    x: training inputs.
    y: their labels.
    train_config: the library's recipe (unused with ``train_fn``).
    key: the group's key (:func:`model_keys`).
    n: models.
    image_shape: ``(H, W, C)``.
    rows: per model, the rows of ``x`` it trains on (default: all).
    mode: the farm's mode (:func:`famr_jax.engine.farm.run_farm`); ``train_fn`` runs one by one.
    train_fn: the caller's ``train_fn(x, y, key) -> params`` (see the module doc), or None.
    example_weights: ``[len(x)]`` weights of the library's loss (0: the row keeps its place in the order and
      adds nothing; a paired retrain); a ``train_fn`` gets the rows of positive weight instead.
    show_progress: a progress bar.
    desc: its label.

  Returns:
    A :class:`ShadowGroup`.

  Example:
    >>> from famr_jax import load_dataset
    >>> d = load_dataset("digits")
    >>> m = models.create_model("logistic", 10, d.image_shape)
    >>> g = train_models(m, models.make_apply_fn(m), d.x_train[:64], d.y_train[:64], TrainConfig(epochs=1),
    ...                  jax.random.key(0), 2, d.image_shape)
    >>> g.params["fc"]["kernel"].shape, g.stats is None
    ((2, 64, 10), True)
  """
  check_train_fn(train_fn)
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  batch_norm = models.has_batch_norm(model)
  if example_weights is not None and train_fn is not None:   # the user's recipe sees the kept rows only
    x, y, example_weights = x[example_weights > 0], y[example_weights > 0], None
  if example_weights is not None and rows is not None:
    raise FamrError("train_models takes rows or example_weights, not both")
  if example_weights is not None and batch_norm:
    raise FamrError("rows of weight 0 would still enter a BatchNorm model's batch statistics: a paired farm of "
                    "a BatchNorm model needs train_fn (or paired=False)")
  data_of = (lambda i: (x, y)) if rows is None else (lambda i: (x[rows[i]], y[rows[i]]))
  init_keys, order_keys = model_keys(key, n)
  stats = None
  if train_fn is not None:
    template = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0), tuple(image_shape)))
    out, t0 = [], time.perf_counter()
    for i in range(n):
      out.append(_trained_by_user(train_fn(*data_of(i), init_keys[i]), template, batch_norm, i))
    params = [p for p, _ in out]
    result = FarmResult(stack_trees(params), 0.0, time.perf_counter() - t0, "train_fn")
    if batch_norm and all(s is not None for _, s in out):
      stats = stack_trees([s for _, s in out])
  else:
    inits = initial_params(model, init_keys, image_shape)
    train_apply = models.make_train_apply_fn(model) if batch_norm else apply_fn
    runs = [lambda plan_only=False, i=i: train_classifier(train_apply, inits[i], *data_of(i), train_config,
                                                          order_keys[i], show_progress=False, plan_only=plan_only,
                                                          example_weights=example_weights) for i in range(n)]
    result = run_farm(runs, mode=mode, what="training", show_progress=show_progress, desc=desc)
    params = None
  if batch_norm and stats is None:   # each shadow's own running statistics, as `train` recomputes them
    params = params or [unstack_tree(result.params, i) for i in range(n)]
    stats = stack_trees([models.recompute_batch_stats(model, params[i], data_of(i)[0]) for i in range(n)])
  return ShadowGroup(result.params, stats, result)


@functools.lru_cache(maxsize=32)
def _apply_with_stats(model: Any) -> Callable:
  bare = model.clone(batch_stats=None)

  def apply(variables, x):
    params, stats = variables
    return bare.apply({"params": params, models.BATCH_STATS: stats}, x)
  return apply


def evaluation_view(model: Any, apply_fn: Callable, params: Any, stats: Any) -> tuple[Callable, Any]:
  """``(fn, tree)`` evaluating a stacked group, each model with its own BatchNorm statistics: ``fn(tree_i, x)``
  is model ``i``'s eval-mode logits (``(apply_fn, params)`` unchanged without statistics).

  Example:
    >>> evaluation_view(None, len, {"w": 1}, None)
    (<built-in function len>, {'w': 1})
  """
  if stats is None:
    return apply_fn, params
  return _apply_with_stats(model), (params, stats)


def train_shadow_farm(model: Any, apply_fn: Callable, data: Any, forget: ForgetSet, train_config: TrainConfig,
                      config: AuditConfig, key: jax.Array, *, train_fn: Callable | None = None,
                      show_progress: bool = False) -> ShadowFarm:
  """Trains the originals, the retrains and the independent retrains of one request (see the module doc
  for BatchNorm models and ``train_fn``, the caller's ``train_fn(x, y, key) -> params``).

  Example:
    >>> from famr_jax import models, load_dataset, forget_samples
    >>> d = load_dataset("digits"); d = d._replace(x_train=d.x_train[:64], y_train=d.y_train[:64])
    >>> m = models.create_model("logistic", 10, d.image_shape)
    >>> farm = train_shadow_farm(m, models.make_apply_fn(m), d, forget_samples([0, 1, 2], 64, 10),
    ...                          TrainConfig(epochs=1), AuditConfig(shadows=2), jax.random.key(0))
    >>> farm.originals["fc"]["kernel"].shape
    (2, 64, 10)
  """
  config.validate()
  check_auditable(forget)
  check_train_fn(train_fn)
  n = int(config.shadows)
  keep = forget.retain_mask(len(data.y_train))
  x, y = np.asarray(data.x_train, np.float32), np.asarray(data.y_train, np.int32)
  mode = config.mode   # training is one engine descent: "auto" picks vmap or loop by the model (auto_mode)
  if config.paired:   # common random numbers: retrain i is original i's run without the forget rows' terms
    w = keep.astype(np.float32)
    recipe = {"originals": (0, None), "retrains": (0, w), "independent_retrains": (2, w)}
    if models.has_batch_norm(model) and train_fn is None:
      raise FamrError("rows of weight 0 would still enter a BatchNorm model's batch statistics: a paired farm "
                      "of a BatchNorm model needs train_fn (or paired=False)")
  else:
    recipe = {"originals": (0, None), "retrains": (1, keep), "independent_retrains": (2, keep)}
  groups = {}
  for name, (k, rows) in recipe.items():   # (the group's key, its retained rows or weights)
    if config.paired or rows is None:
      xs, ys, weights = x, y, rows
    else:
      xs, ys, weights = x[rows], y[rows], None
    groups[name] = train_models(model, apply_fn, xs, ys, train_config, jax.random.fold_in(key, k), n,
                                data.image_shape, mode=mode, train_fn=train_fn, example_weights=weights,
                                show_progress=show_progress, desc=f"shadows: {name}")
  stats = None if groups["originals"].stats is None else {k: g.stats for k, g in groups.items()}
  return ShadowFarm(groups["originals"].params, groups["retrains"].params, groups["independent_retrains"].params,
                    {k: cost_entry(g.result, n) for k, g in groups.items()}, stats)


def unlearn_farm(method: str, method_config: Any, originals: Any, apply_fn: Callable, model: Any, data: Any,
                 forget: ForgetSet | Sequence[ForgetSet], key: jax.Array, *, mode: str = "auto", stats: Any = None,
                 show_progress: bool = False, model_name: str = "") -> FarmResult:
  """Applies ``method`` to every original of a farm (one program where the method allows).

  Args:
    method: a registered method name.
    method_config: its config, run as given; None: resolved for the request and ``model_name`` as
      :func:`famr_jax.unlearn` resolves it (:func:`famr_jax.methods.resolve.resolve`).
    originals: stacked params of the originals (``ShadowFarm.originals``).
    apply_fn: ``apply_fn(params, x) -> logits``.
    model: the Flax module (methods that split the model, ``retrain``'s init).
    data: the :class:`famr_jax.Dataset`.
    forget: the request, or one per original (a randomized-membership farm, :mod:`famr_jax.audit.membership`).
    key: the method's key; original ``i`` gets ``fold_in(key, i)``.
    mode: ``"vmap"``, ``"loop"`` or ``"auto"`` (loop for a method whose spec is not ``vmappable``, else
      :func:`famr_jax.engine.farm.auto_mode`).
    stats: the originals' stacked BatchNorm statistics (``ShadowFarm.stats["originals"]``): each original is
      unlearned bound to its own (one by one: the methods' losses then differ per model); the unlearned
      models keep them (no method changes running statistics).
    show_progress: a progress bar.
    model_name: a famr-jax model name, for its tuned defaults (with ``method_config`` None).

  Returns:
    A :class:`famr_jax.engine.farm.FarmResult` of the unlearned models.
  """
  n = int(jax.tree.leaves(originals)[0].shape[0])
  forgets = [forget] * n if isinstance(forget, ForgetSet) else list(forget)
  if len(forgets) != n:
    raise FamrError(f"one forget set per original is needed: got {len(forgets)} for {n} originals")
  check_auditable(forgets[0], (method,), mode)
  spec, method_config = resolve(method, Request.of(forgets[0]), model_name, config=method_config)
  if stats is not None and mode == "vmap":
    raise FamrError("a BatchNorm model's shadows each carry their own statistics, so a method runs on them one "
                    "by one: use farm mode 'loop' or 'auto'")
  bound = [model] * n if stats is None else [models.with_batch_stats(model, unstack_tree(stats, i)) for i in range(n)]
  tasks = [UnlearnTask(apply_fn if stats is None else models.make_apply_fn(bound[i]), unstack_tree(originals, i),
                       bound[i], data, forgets[i], jax.random.fold_in(key, i), False,
                       input_shape=tuple(data.image_shape))
           for i in range(n)]
  if (mode == "auto" and not spec.vmappable) or stats is not None:
    mode = "loop"   # else run_farm's auto_mode: vmap or loop by the model, per measurement
  runs = [lambda plan_only=False, t=t: run_task(spec, t._replace(plan_only=plan_only), method_config)
          for t in tasks]
  return run_farm(runs, mode=mode, what=f"method {method!r}", show_progress=show_progress, desc=f"shadows: {method}")
