"""Bring your own model: a frozen head and a trainable tail, for any model (issue 12, part 5).

The data-free methods (activation-space class impressions, tail-only
unlearning) need a model cut in two: ``apply(params, x) == tail_fn(params,
head_fn(params, x))``, and which params belong to the tail. :class:`ModelParts`
is that protocol, three functions of the *whole* params pytree:

* ``head_fn(params, x) -> h``: the activation entering the tail;
* ``tail_fn(params, h) -> logits``: the rest of the model, run on ``h``;
* ``trainable_mask``: a pytree of bools like ``params``, True on the tail's
  params (the only ones a tail-only method updates);

plus an optional ``layer`` label (where the cut is). Build it with

* :func:`famr_parts` for a model of ``famr_jax.models`` (named stages);
* :func:`linen_parts` for any Flax Linen module whose ``__call__`` applies
  named submodules in sequence;
* :func:`nnx_parts` for a Flax NNX module (``graphdef, state = nnx.split(model)``),
  same idea;
* ``ModelParts(head_fn, tail_fn, trainable_mask)`` by hand for anything else
  (a plain function with dict params, say);
* :func:`whole_model_parts` for a plain ``apply_fn`` with no cut (identity head).

The builders are memoized: the same model and layer give the same function
objects, so compiled programs keyed by function identity are found again.
Pass one parts object to several calls, or rebuild it: both compile once.

How the Linen and NNX builders cut a model they never saw: one abstract trace
(``jax.eval_shape``, nothing computed) records the order in which the model's
direct submodules are called and the shape of each output. ``head_fn`` runs
the model until submodule ``layer`` is called and returns that call's input.
``tail_fn`` runs the model on a zero input in which every submodule called
before ``layer`` is replaced by zeros of its recorded output shape (so the
head's params are never read, and its cost is a few zero-filled ops that
``jit`` removes) and ``layer``'s input by ``h``. Requirements: the cut is a
real cut, i.e. nothing computed before ``layer`` is used after it (no skip
connection around ``layer``); ``layer`` is called once; batch-leading outputs;
the params of a submodule live under its name; params used after the cut must
belong to ``layer`` or to a submodule called after it (anything else, such as a
parameter of the root module itself, is frozen).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from famr_jax.errors import FamrError

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]

__all__ = ["ModelParts", "as_parts", "compose", "famr_parts", "identity_head", "is_layered_model",
           "linen_parts", "nnx_parts", "whole_model_parts"]


class ModelParts(NamedTuple):
  """A model cut into a frozen head and a trainable tail: ``apply(x) == tail_fn(params, head_fn(params, x))``.

  Attributes:
    head_fn: ``head_fn(params, x) -> h``, the activation entering the tail.
    tail_fn: ``tail_fn(params, h) -> logits``.
    trainable_mask: pytree of bools like ``params``: True on the tail's params.
    layer: where the cut is (a label for reports; ``None``: unnamed or no cut).

  Example:
    >>> import jax.numpy as jnp
    >>> head = lambda p, x: jnp.maximum(x @ p["w1"], 0.0)
    >>> tail = lambda p, h: h @ p["w2"]
    >>> parts = ModelParts(head, tail, {"w1": False, "w2": True}, "w2")
    >>> p = {"w1": jnp.eye(2), "w2": jnp.ones((2, 3))}
    >>> parts.apply_fn(p, jnp.array([[1.0, -1.0]])).tolist()
    [[1.0, 1.0, 1.0]]
  """
  head_fn: ApplyFn
  tail_fn: ApplyFn
  trainable_mask: Params
  layer: str | None = None

  @property
  def apply_fn(self) -> ApplyFn:
    """The whole model, ``tail_fn(params, head_fn(params, x))`` (one object per pair of functions)."""
    return compose(self.head_fn, self.tail_fn)


def identity_head(params: Params, x: jax.Array) -> jax.Array:
  """The head of a model with no cut: its input itself.

  Example:
    >>> identity_head(None, 3)
    3
  """
  return x


def _composed(head_fn: ApplyFn, tail_fn: ApplyFn, params: Params, x: jax.Array) -> jax.Array:
  return tail_fn(params, head_fn(params, x))


@functools.lru_cache(maxsize=256)   # one function per pair: compiled programs are reused
def compose(head_fn: ApplyFn, tail_fn: ApplyFn) -> ApplyFn:
  """``apply_fn(params, x) = tail_fn(params, head_fn(params, x))``; the same pair gives the same object.

  Example:
    >>> head, tail = (lambda p, x: x + 1.0), (lambda p, h: h * p)
    >>> compose(head, tail) is compose(head, tail), compose(head, tail)(2.0, 3.0)
    (True, 8.0)
  """
  if head_fn is identity_head:
    return tail_fn
  return functools.partial(_composed, head_fn, tail_fn)


def is_layered_model(model: Any) -> bool:
  """Whether ``model`` is a model of ``famr_jax.models`` (named stages, ``apply(..., start=, stop=)``).

  Example:
    >>> is_layered_model(lambda p, x: x)
    False
  """
  return hasattr(model, "layer_names") and hasattr(model, "apply")


def whole_model_parts(apply_fn: ApplyFn, params: Params) -> ModelParts:
  """No cut: the identity head and the whole ``apply_fn`` as the tail (every param trainable).

  Example:
    >>> whole_model_parts(lambda p, x: x * p["a"], {"a": 2.0}).trainable_mask
    {'a': True}
  """
  return ModelParts(identity_head, apply_fn, jax.tree.map(lambda _: True, params), None)


def famr_parts(model: Any, params: Params, layer: str | None = None) -> ModelParts:
  """The parts of a model of ``famr_jax.models`` cut at stage ``layer`` (default: its last stage).

  The tail is the model's own stages from ``layer`` on (``model.apply(...,
  start=layer)``), ReLUs included; the head its stages before it.

  Raises:
    FamrError: unknown layer, params of another model, or an empty tail.

  Example:
    >>> import jax
    >>> from famr_jax import models
    >>> model = models.create_model("mlp", 10, (8, 8, 1))
    >>> params = models.init_params(model, jax.random.key(0), (8, 8, 1))
    >>> parts = famr_parts(model, params, "fc2")
    >>> parts.layer, parts.trainable_mask["fc1"]["kernel"], parts.trainable_mask["head"]["bias"]
    ('fc2', False, True)
  """
  from famr_jax import models
  layer = layer or models.layer_names(model)[-1]
  mask = models.tail_param_mask(model, params, layer)   # validates the layer and a non-empty tail
  return ModelParts(models.make_layer_input_fn(model, layer), models.make_tail_apply_fn(model, layer),
                    mask, layer)


def as_parts(model: Any, params: Params, layer: str | None = None) -> ModelParts:
  """``model`` as :class:`ModelParts`: parts as given, a famr-jax model cut at ``layer``, or a whole apply_fn.

  Args:
    model: a :class:`ModelParts`, a model of ``famr_jax.models``, or a plain
      ``apply_fn(params, x) -> logits``.
    params: the model's params.
    layer: where to cut a famr-jax model (``None``: its last stage); must be
      ``None`` for a plain apply_fn, and ``None`` or the parts' own layer for parts.

  Raises:
    FamrError: a layer that cannot be applied to this kind of model.

  Example:
    >>> as_parts(lambda p, x: x, {"w": 1.0}).layer is None
    True
  """
  if isinstance(model, ModelParts):
    if layer is not None and layer != model.layer:
      raise FamrError(f"layer {layer!r} differs from the cut of the given model parts ({model.layer!r}): "
                      "build the parts at that layer, or pass layer=None")
    return model
  if is_layered_model(model):
    return famr_parts(model, params, layer)
  _refuse_raw_module(model)
  if not callable(model):
    raise FamrError(f"model must be a famr-jax model, a ModelParts or an apply_fn, got {type(model).__name__}")
  if layer is not None:
    raise FamrError(f"cannot cut a plain apply_fn at layer {layer!r}: pass ModelParts (linen_parts, "
                    "nnx_parts, or your own head_fn and tail_fn)")
  return whole_model_parts(model, params)


def _refuse_raw_module(model: Any) -> None:
  # A Flax module is callable, but not as apply_fn(params, x): say how to cut it instead.
  import flax.linen as nn
  from flax import nnx
  if isinstance(model, nn.Module):
    raise FamrError(f"model is a Linen module ({type(model).__name__}): pass "
                    "linen_parts(module, params, layer, example_input), or a plain apply_fn")
  if isinstance(model, nnx.Module):
    raise FamrError(f"model is an NNX module ({type(model).__name__}): pass "
                    "nnx_parts(*nnx.split(module), layer, example_input), or a plain apply_fn")


# ----------------------------------------------------------------------------- call-order tracing


class _Captured(Exception):
  """Raised inside a model to stop it at the cut, carrying the cut's input."""

  def __init__(self, value):
    super().__init__("captured")
    self.value = value


class _Call(NamedTuple):
  name: str
  out: Any   # a pytree of ShapeDtypeStruct (batch-leading)


def _spec(example_input: Any) -> tuple[tuple[int, ...], str]:
  """``(shape of one example, dtype)``: the batch size is not part of the cache key."""
  shape = tuple(int(s) for s in np.shape(example_input))
  if not shape:
    raise FamrError("example_input must be a batch (its first axis is the batch axis), got a scalar")
  return shape[1:], str(jnp.result_type(example_input))


def _example(spec) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((1,) + spec[0], spec[1])


def _rebatch(out: Any, batch: int) -> Any:
  return jax.tree.map(lambda s: jnp.zeros((batch,) + tuple(s.shape[1:]), s.dtype), out)


def _check_order(calls: Sequence[_Call], layer: str, kind: str) -> int:
  names = [c.name for c in calls]
  if layer not in names:
    raise FamrError(f"layer {layer!r} is not a submodule the {kind} module calls; "
                    f"its submodules, in call order: {', '.join(names) or 'none'}")
  if names.count(layer) > 1:
    raise FamrError(f"layer {layer!r} is called {names.count(layer)} times: a cut needs a submodule called once")
  return names.index(layer)


def _mask_from_order(params: Params, calls: Sequence[_Call], index: int) -> Params:
  tail = {c.name for c in calls[index:]}

  def top_key(path):
    first = path[0] if path else None
    return getattr(first, "key", getattr(first, "name", None))

  # Same structure as params (a dict, or an nnx.State), so optimizers can take it as labels.
  mask = jax.tree_util.tree_map_with_path(lambda path, _: top_key(path) in tail, params)
  if not any(jax.tree.leaves(mask)):
    raise FamrError(f"cutting at {calls[index].name!r} leaves no trainable params: the tail's submodules "
                    f"({', '.join(sorted(tail))}) have no params under their names")
  return mask


# ----------------------------------------------------------------------------- Linen


def _linen_top_call(context) -> str | None:
  """The name of a direct submodule of the root being called (None for the root and deeper modules)."""
  scope = getattr(context.module, "scope", None)
  path = tuple(scope.path) if scope is not None else ()
  return path[0] if len(path) == 1 else None


def _linen_trace(module) -> tuple[list[_Call], Callable]:
  import flax.linen as nn
  calls: list[_Call] = []
  depth = [0]   # only the outermost call of each direct submodule counts (not its own methods)

  def record(next_fun, args, kwargs, context):
    name = _linen_top_call(context)
    if name is None or depth[0] > 0:
      return next_fun(*args, **kwargs)
    depth[0] += 1
    try:
      out = next_fun(*args, **kwargs)
    finally:
      depth[0] -= 1
    calls.append(_Call(name, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out)))
    return out

  def run(variables, x):
    with nn.intercept_methods(record):
      return module.apply(variables, x)

  return calls, run


@functools.lru_cache(maxsize=128)
def _linen_fns(module, layer: str, spec, param_spec) -> tuple[ApplyFn, ApplyFn, tuple[_Call, ...]]:
  import flax.linen as nn
  calls, run = _linen_trace(module)
  params_abstract = jax.tree.unflatten(param_spec[1], [jax.ShapeDtypeStruct(s, d) for s, d in param_spec[0]])
  jax.eval_shape(run, {"params": params_abstract}, _example(spec))
  calls = tuple(calls)
  index = _check_order(calls, layer, "Linen")
  head_names = {c.name for c in calls[:index]}
  outs = {c.name: c.out for c in calls[:index]}

  def head_fn(params, x):
    def stop(next_fun, args, kwargs, context):
      if _linen_top_call(context) == layer:
        raise _Captured(args[0])
      return next_fun(*args, **kwargs)
    try:
      with nn.intercept_methods(stop):
        module.apply({"params": params}, x)
    except _Captured as c:
      return c.value
    raise FamrError(f"the module never called layer {layer!r}")

  def tail_fn(params, h):
    batch = jax.tree.leaves(h)[0].shape[0]
    seen: set[str] = set()

    def substitute(next_fun, args, kwargs, context):
      name = _linen_top_call(context)
      if name in head_names and name not in seen:
        seen.add(name)
        return _rebatch(outs[name], batch)
      if name == layer and name not in seen:
        seen.add(name)
        return next_fun(h, *args[1:], **kwargs)
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(substitute):
      return module.apply({"params": params}, jnp.zeros((batch,) + spec[0], spec[1]))

  return head_fn, tail_fn, calls


def _param_spec(params: Params):
  leaves, treedef = jax.tree.flatten(params)
  return tuple((tuple(np.shape(a)), str(jnp.result_type(a))) for a in leaves), treedef


def linen_parts(module: Any, params: Params, layer: str, example_input: Any) -> ModelParts:
  """The parts of a Flax Linen module cut at its submodule ``layer``.

  The module's ``__call__(x)`` must apply named submodules in sequence
  (``nn.Dense(..., name="fc1")`` in a compact ``__call__``, or attributes set
  in ``setup``); the tail is ``layer`` and every submodule called after it.
  See the module doc for how the cut works and what it requires.

  Args:
    module: the Linen module (``module.apply({"params": params}, x) -> logits``).
    params: its params (the ``"params"`` collection, keyed by submodule name).
    layer: the name of the submodule the tail starts with.
    example_input: a batch of inputs, or a ``jax.ShapeDtypeStruct`` of one
      (only its shape and dtype are used, for one abstract trace).

  Raises:
    FamrError: ``layer`` is not a submodule the module calls, is called more
      than once, or leaves no trainable params.

  Example:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(3, name="out")(nn.relu(nn.Dense(4, name="hidden")(x)))
    >>> x = jnp.ones((2, 5))
    >>> params = Net().init(jax.random.key(0), x)["params"]
    >>> parts = linen_parts(Net(), params, "out", x)
    >>> parts.head_fn(params, x).shape, parts.trainable_mask["hidden"]["kernel"]
    ((2, 4), False)
    >>> bool(jnp.allclose(parts.apply_fn(params, x), Net().apply({"params": params}, x)))
    True
  """
  spec = _spec(example_input)
  try:
    head_fn, tail_fn, calls = _linen_fns(module, layer, spec, _param_spec(params))
  except TypeError as e:   # an unhashable module: build the functions uncached
    if "unhashable" not in str(e):
      raise
    head_fn, tail_fn, calls = _linen_fns.__wrapped__(module, layer, spec, _param_spec(params))
  return ModelParts(head_fn, tail_fn, _mask_from_order(params, calls, _check_order(calls, layer, "Linen")),
                    layer)


# ----------------------------------------------------------------------------- NNX


class _Recorder:
  """Stands in for a direct submodule of an NNX model: records, stops at, or substitutes its call."""

  def __init__(self, name, module, on_call):
    self.name, self.module, self.on_call = name, module, on_call

  def __call__(self, *args, **kwargs):
    return self.on_call(self.name, self.module, args, kwargs)


def _nnx_children(model) -> list[str]:
  from flax import nnx
  return [name for name, value in vars(model).items() if isinstance(value, nnx.Module)]


def _nnx_run(graphdef, state, x, on_call):
  """Merges a fresh copy of the model, routes every direct submodule's call through ``on_call``, runs it."""
  from flax import nnx
  model = nnx.merge(graphdef, state)
  for name in _nnx_children(model):
    setattr(model, name, _Recorder(name, getattr(model, name), on_call))
  return model(x)


@functools.lru_cache(maxsize=128)
def _nnx_fns(graphdef, layer: str, spec, state_spec) -> tuple[ApplyFn, ApplyFn, tuple[_Call, ...]]:
  calls: list[_Call] = []

  def record(name, module, args, kwargs):
    out = module(*args, **kwargs)
    calls.append(_Call(name, jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), out)))
    return out

  abstract = jax.tree.unflatten(state_spec[1], [jax.ShapeDtypeStruct(s, d) for s, d in state_spec[0]])
  jax.eval_shape(lambda s, x: _nnx_run(graphdef, s, x, record), abstract, _example(spec))
  calls = tuple(calls)
  index = _check_order(calls, layer, "NNX")
  outs = {c.name: c.out for c in calls[:index]}

  def head_fn(state, x):
    def stop(name, module, args, kwargs):
      if name == layer:
        raise _Captured(args[0])
      return module(*args, **kwargs)
    try:
      _nnx_run(graphdef, state, x, stop)
    except _Captured as c:
      return c.value
    raise FamrError(f"the module never called layer {layer!r}")

  def tail_fn(state, h):
    batch = jax.tree.leaves(h)[0].shape[0]

    def substitute(name, module, args, kwargs):
      if name in outs:
        return _rebatch(outs[name], batch)
      if name == layer:
        return module(h, *args[1:], **kwargs)
      return module(*args, **kwargs)

    return _nnx_run(graphdef, state, jnp.zeros((batch,) + spec[0], spec[1]), substitute)

  return head_fn, tail_fn, calls


def nnx_parts(graphdef: Any, state: Any, layer: str, example_input: Any) -> ModelParts:
  """The parts of a Flax NNX module (``graphdef, state = nnx.split(model)``) cut at its attribute ``layer``.

  The params the methods update are ``state`` (an ``nnx.State``); get the
  model back with ``nnx.merge(graphdef, new_state)``. The model's
  ``__call__(x)`` must call submodules held as direct attributes in sequence;
  the tail is ``layer`` and every one called after it. Its state should be
  params only (no batch statistics or RNG counters: the methods would treat
  them as trainable params). See the module doc for how the cut works.

  Args:
    graphdef: the graph definition from ``nnx.split``.
    state: the state from ``nnx.split``.
    layer: the attribute name of the submodule the tail starts with.
    example_input: a batch of inputs, or a ``jax.ShapeDtypeStruct`` of one.

  Raises:
    FamrError: ``layer`` is not a submodule the model calls, is called more
      than once, or leaves no trainable params.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.hidden, self.out = nnx.Linear(5, 4, rngs=rngs), nnx.Linear(4, 3, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.out(nnx.relu(self.hidden(x)))
    >>> graphdef, state = nnx.split(Net(nnx.Rngs(0)))
    >>> parts = nnx_parts(graphdef, state, "out", jnp.ones((2, 5)))
    >>> parts.head_fn(state, jnp.ones((2, 5))).shape
    (2, 4)
    >>> bool(jnp.allclose(parts.apply_fn(state, jnp.ones((2, 5))), nnx.merge(graphdef, state)(jnp.ones((2, 5)))))
    True
  """
  spec = _spec(example_input)
  head_fn, tail_fn, calls = _nnx_fns(graphdef, layer, spec, _param_spec(state))
  return ModelParts(head_fn, tail_fn, _mask_from_order(state, calls, _check_order(calls, layer, "NNX")), layer)
