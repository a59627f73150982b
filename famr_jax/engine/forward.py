"""Forward passes outside the optimizer loop: chunked logits, and one-off programs timed apart.

Methods run a model over whole sets (the original logits of a forget set, a
frozen head's output, a monitor set) before and after their descent. These
helpers do it in bounded memory and compile each program once per function
and shapes, so a second identical call, or another seed, compiles nothing:
pass the same function object again (a module-level function, or one built
with :func:`famr_jax.engine.descent.bind_static`), never a fresh lambda.
"""

from __future__ import annotations

from functools import partial
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp

from famr_jax.engine.streaming import apply_streamed, is_streamed

STREAM_BATCH = 256   # rows decoded and run per call when x is streamed

Params = Any
ApplyFn = Callable[[Params, jax.Array], jax.Array]


def batched_apply(apply_fn: ApplyFn, params: Params, x: jax.Array,
                  batch_size: int = 1024) -> jax.Array:
  """``apply_fn(params, x)`` evaluated in chunks with ``lax.map`` (bounded memory; differentiable).

  Compiled once per ``apply_fn``, shapes and batch size (an eager ``lax.map`` would
  recompile its freshly made body on every call). A streamed ``x`` (an image
  folder's lazy array) is read from the host ``min(batch_size, 256)`` rows at a
  time instead (:func:`famr_jax.engine.streaming.apply_streamed`; not differentiable).

  Example:
    >>> import jax.numpy as jnp
    >>> batched_apply(lambda p, x: x * p, 2.0, jnp.arange(5.0)[:, None], 2)[:, 0].tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0]
  """
  if is_streamed(x):
    return apply_streamed(apply_fn, params, x, min(batch_size, STREAM_BATCH))
  return _batched_apply(apply_fn, params, x, batch_size)


@partial(jax.jit, static_argnames=("apply_fn", "batch_size"))
def _batched_apply(apply_fn: ApplyFn, params: Params, x: jax.Array, batch_size: int) -> jax.Array:
  n = x.shape[0]
  if n <= batch_size:
    return apply_fn(params, x)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
  out = jax.lax.map(lambda xb: apply_fn(params, xb), xp.reshape((num_batches, batch_size) + x.shape[1:]))
  return out.reshape((num_batches * batch_size,) + out.shape[2:])[:n]


def timed_call(fn: Callable, *args: Any) -> tuple[Any, float, float]:
  """``jax.jit(fn)(*args)``: ``(output, compile seconds, run seconds)``, the two reported apart.

  Methods report compilation apart from running (as the engine does); JAX
  finds the compiled program again for the same ``fn`` object and shapes, so
  the compile seconds of a repeated call are only the cache look-up.

  Example:
    >>> import jax.numpy as jnp
    >>> out, compile_s, run_s = timed_call(jnp.cumsum, jnp.arange(4.0))
    >>> out.tolist(), compile_s >= 0.0, run_s >= 0.0
    ([0.0, 1.0, 3.0, 6.0], True, True)
  """
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  return out, compile_s, time.perf_counter() - t0
