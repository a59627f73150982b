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
where the method allows (:data:`VMAPPABLE`), else one by one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from famr_jax import models
from famr_jax.data.forget import ForgetSet
from famr_jax.engine.farm import FARM_MODES, FarmResult, run_farm, unstack_tree
from famr_jax.engine.training import TrainConfig, train_classifier
from famr_jax.errors import FamrError
from famr_jax.methods.registry import UnlearnTask, get_method

# Built-in methods whose run is one minibatch-engine descent whose params are the result: a farm of them
# is one vmapped program. SCRUB alternates several descents and SSD makes none; they run one by one.
VMAPPABLE = frozenset({"famr", "famr-retrain-target", "famr-curvature", "famr-function", "famr-plus", "ft", "ga",
                       "neggrad+", "neggrad+du", "rl", "salun", "retrain"})
# Methods an audit cannot run on shadow models: their inputs exist for the checkpoint only.
NOT_AUDITABLE = {"famr-fisher": "it reads the checkpoint's stored Fisher, which no shadow model has",
                 "sisa": "its models are shard ensembles (exact by construction: no shard it keeps saw the forget set)",
                 "impressions": "it is a data-free class method", "famr-zeroshot": "it is a data-free class method"}
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
  """
  attack: str = "ulira"
  shadows: int = 16
  mode: str = "auto"
  fixed_variance: bool = False
  delta: float = 1e-5

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
    if name in NOT_AUDITABLE:
      raise FamrError(f"method {name!r} cannot be audited: {NOT_AUDITABLE[name]}")
    if mode == "vmap" and name not in VMAPPABLE and name in _builtin_names():
      raise FamrError(f"method {name!r} cannot be vmapped over shadow models (it is not one engine descent); "
                      "use farm mode 'loop' or 'auto'")
    del spec


def check_shadow_model(model: Any) -> None:
  """Refuses, before any work, a model the farm cannot make fresh inits of (it needs a Flax Linen module)."""
  import flax.linen as nn
  if not isinstance(model, nn.Module):
    raise FamrError(f"an audit trains fresh shadow models, so it needs model as a Flax Linen module (a "
                    f"famr_jax.models model), not a {type(model).__name__}")


def _builtin_names() -> frozenset:
  return frozenset(VMAPPABLE) | {"scrub", "ssd", "msg", "ct", "famr-calibrated", "langevin", *NOT_AUDITABLE}


class ShadowFarm(NamedTuple):
  """The reference groups of one request: params stacked over a leading model axis, and their costs."""
  originals: Any
  retrains: Any
  independent_retrains: Any
  costs: dict          # group -> {"run_s", "compile_s", "mode", "per_model_s"}


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


def _train_group(apply_fn, model, x, y, config: TrainConfig, key, n: int, image_shape, mode: str,
                 show_progress: bool, desc: str) -> FarmResult:
  keys = jax.random.split(key, 2 * n)
  inits = initial_params(model, keys[:n], image_shape)
  runs = [lambda i=i: train_classifier(apply_fn, inits[i], x, y, config, keys[n + i], show_progress=False)
          for i in range(n)]
  return run_farm(runs, mode=mode, what="training", show_progress=show_progress, desc=desc)


def train_shadow_farm(model: Any, apply_fn: Callable, data: Any, forget: ForgetSet, train_config: TrainConfig,
                      config: AuditConfig, key: jax.Array, *, show_progress: bool = False) -> ShadowFarm:
  """Trains the originals, the retrains and the independent retrains of one request.

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
  n = int(config.shadows)
  keep = forget.retain_mask(len(data.y_train))
  x, y = np.asarray(data.x_train, np.float32), np.asarray(data.y_train, np.int32)
  xr, yr = x[keep], y[keep]
  mode = config.mode   # training is one engine descent: "auto" picks vmap or loop by the model (auto_mode)
  groups = {}
  for i, (name, xs, ys) in enumerate((("originals", x, y), ("retrains", xr, yr), ("independent_retrains", xr, yr))):
    groups[name] = _train_group(apply_fn, model, xs, ys, train_config, jax.random.fold_in(key, i), n,
                                data.image_shape, mode, show_progress, f"shadows: {name}")
  return ShadowFarm(groups["originals"].params, groups["retrains"].params, groups["independent_retrains"].params,
                    {k: cost_entry(v, n) for k, v in groups.items()})


def unlearn_farm(method: str, method_config: Any, originals: Any, apply_fn: Callable, model: Any, data: Any,
                 forget: ForgetSet, key: jax.Array, *, mode: str = "auto", show_progress: bool = False) -> FarmResult:
  """Applies ``method`` to every original of a farm (one program where the method allows).

  Args:
    method: a registered method name.
    method_config: its config.
    originals: stacked params of the originals (``ShadowFarm.originals``).
    apply_fn: ``apply_fn(params, x) -> logits``.
    model: the Flax module (methods that split the model, ``retrain``'s init).
    data: the :class:`famr_jax.Dataset`.
    forget: the request.
    key: the method's key; original ``i`` gets ``fold_in(key, i)``.
    mode: ``"vmap"``, ``"loop"`` or ``"auto"`` (loop for methods outside :data:`VMAPPABLE`, else
      :func:`famr_jax.engine.farm.auto_mode`).
    show_progress: a progress bar.

  Returns:
    A :class:`famr_jax.engine.farm.FarmResult` of the unlearned models.
  """
  check_auditable(forget, (method,), mode)
  spec = get_method(method)
  n = int(jax.tree.leaves(originals)[0].shape[0])
  tasks = [UnlearnTask(apply_fn, unstack_tree(originals, i), model, data, forget, jax.random.fold_in(key, i),
                       False, input_shape=tuple(data.image_shape)) for i in range(n)]
  if mode == "auto" and method not in VMAPPABLE:
    mode = "loop"   # else run_farm's auto_mode: vmap or loop by the model, per measurement
  runs = [lambda t=t: spec.run(t, method_config) for t in tasks]
  return run_farm(runs, mode=mode, what=f"method {method!r}", show_progress=show_progress, desc=f"shadows: {method}")
