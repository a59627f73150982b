"""Data parallelism over devices and processes: meshes, shardings, distributed init.

famr-jax scales out with plain ``jax.jit`` over a one-axis :class:`jax.sharding.Mesh`
(axis ``"data"``, every device of every process): every minibatch is sharded
over the axis, params and optimizer state are replicated (or, with
``fsdp=True``, sharded over the same axis), and XLA's SPMD partitioner inserts
the gradient all-reduce. The program is the same on 1 device and on N; only
the floating-point order of the reductions changes. ``pmap`` is not used: it is
legacy in current JAX, needs a leading device axis on every array and a
hand-written ``pmean``, and cannot shard params.

The minibatch engine (:mod:`famr_jax.engine.descent`) reads a :class:`ScaleConfig`;
this module holds the pieces it is built from, so other code can reuse them:

* :func:`make_data_mesh`, :func:`tree_shardings`, :func:`put_tree`;
* :class:`ShardedData` and :func:`shard_rows` / :func:`process_rows`, the
  per-process data layout of multi-host runs;
* :class:`DistributedConfig` and :func:`initialize_distributed`
  (``jax.distributed.initialize`` from options or environment variables);
* :func:`compute_dtype_apply_fn` (bfloat16 forward pass on float32 params);
* :func:`peak_memory` and :class:`CompileCounter` for run reports and benchmarks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import resource
from typing import Any, Callable, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from famr_jax.errors import FamrError
from famr_jax.validation import CheckedFields

DATA_AXIS = "data"
COMPUTE_DTYPES = ("float32", "bfloat16")
# Environment variables read by :func:`initialize_distributed` when an option is not given.
COORDINATOR_ENV = "FAMR_JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "FAMR_JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "FAMR_JAX_PROCESS_ID"

Params = Any


# ----------------------------------------------------------------------------- configs

@dataclasses.dataclass(frozen=True)
class ScaleConfig(CheckedFields):
  """How the minibatch engine uses devices, precision and memory.

  The defaults run exactly the single-device engine of famr-jax 0.1
  (bit-identical results).

  Attributes:
    data_parallel: shard every minibatch over all devices (all processes) on a
      "data" mesh axis; params and optimizer state are replicated.
    fsdp: also shard params and optimizer state over the data axis (each leaf
      of at least fsdp_min_size scalars along its largest divisible axis); for
      models whose optimizer state does not fit one device. Implies data_parallel.
    fsdp_min_size: smallest leaf (in scalars) that fsdp shards; smaller leaves stay replicated.
    num_devices: use only the first num_devices devices (single process only); None uses all.
    compute_dtype: float32, or bfloat16 for the forward/backward pass (params,
      optimizer state and the loss stay float32).
    grad_accum: split every minibatch into this many microbatches and sum
      their gradients: the same update as the whole minibatch, with less memory.
  """
  data_parallel: bool = False
  fsdp: bool = False
  fsdp_min_size: int = 2 ** 14
  num_devices: int | None = None
  compute_dtype: Literal["float32", "bfloat16"] = "float32"
  grad_accum: int = 1

  def validate(self) -> "ScaleConfig":
    """Raises :class:`FamrError` on an invalid setting."""
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise FamrError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.compute_dtype!r}")
    if self.grad_accum < 1:
      raise FamrError(f"grad_accum must be a positive integer, got {self.grad_accum}")
    if self.fsdp_min_size < 1:
      raise FamrError(f"fsdp_min_size must be positive, got {self.fsdp_min_size}")
    if self.num_devices is not None:
      if self.num_devices < 1:
        raise FamrError(f"num_devices must be positive, got {self.num_devices}")
      if self.num_devices > jax.device_count():
        raise FamrError(f"num_devices={self.num_devices} but only {jax.device_count()} devices exist")
      if jax.process_count() > 1 and self.num_devices != jax.device_count():
        raise FamrError("num_devices must be None (all devices) in a multi-process run")
    return self

  @property
  def sharded(self) -> bool:
    """Whether the engine runs on a device mesh."""
    return self.data_parallel or self.fsdp

  @property
  def is_default(self) -> bool:
    """True when the engine runs exactly as without any ScaleConfig."""
    return self == ScaleConfig()


@dataclasses.dataclass(frozen=True)
class DistributedConfig(CheckedFields):
  """Where a multi-process run finds its peers (``jax.distributed.initialize``).

  Attributes:
    coordinator_address: host:port of process 0 (env FAMR_JAX_COORDINATOR_ADDRESS).
    num_processes: number of processes (env FAMR_JAX_NUM_PROCESSES).
    process_id: this process's index, 0..num_processes-1 (env FAMR_JAX_PROCESS_ID).
    timeout_s: seconds to wait for every process to connect.
  """
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  timeout_s: int = 300

  @classmethod
  def from_env(cls, environ: dict | None = None) -> "DistributedConfig":
    """The settings of the ``FAMR_JAX_*`` environment variables (unset ones are None).

    Example:
      >>> DistributedConfig.from_env({"FAMR_JAX_NUM_PROCESSES": "2"}).num_processes
      2
    """
    env = os.environ if environ is None else environ

    def integer(name):
      text = env.get(name)
      if text in (None, ""):
        return None
      try:
        return int(text)
      except ValueError:
        raise FamrError(f"{name} must be an integer, got {text!r}") from None
    return cls(env.get(COORDINATOR_ENV) or None, integer(NUM_PROCESSES_ENV), integer(PROCESS_ID_ENV))

  def merged_with_env(self, environ: dict | None = None) -> "DistributedConfig":
    """Options given here win; unset ones come from the environment."""
    env = self.from_env(environ)
    return dataclasses.replace(
        self, **{f: getattr(env, f) for f in ("coordinator_address", "num_processes", "process_id")
                 if getattr(self, f) is None})

  def validate(self) -> "DistributedConfig":
    """Refuses a partial or inconsistent setting with a one-line :class:`FamrError`.

    Example:
      >>> DistributedConfig("127.0.0.1:1234", 2, 1).validate().process_id
      1
    """
    given = [self.coordinator_address is not None, self.num_processes is not None,
             self.process_id is not None]
    if any(given) and not all(given):
      raise FamrError("a multi-process run needs all of coordinator address, number of processes and "
                      "process id (options or FAMR_JAX_* environment variables)")
    if all(given):
      host, _, port = str(self.coordinator_address).rpartition(":")
      if not host or not port.isdigit():
        raise FamrError(f"coordinator address must be host:port, got {self.coordinator_address!r}")
      if self.num_processes < 1:
        raise FamrError(f"the number of processes must be positive, got {self.num_processes}")
      if not 0 <= self.process_id < self.num_processes:
        raise FamrError(f"process id {self.process_id} is not in 0..{self.num_processes - 1}")
    return self

  @property
  def enabled(self) -> bool:
    return self.coordinator_address is not None


def initialize_distributed(config: DistributedConfig | None = None) -> bool:
  """Starts JAX's multi-process runtime if a coordinator is configured.

  Must run before any other JAX computation of the process. Options not set
  in ``config`` are read from ``FAMR_JAX_COORDINATOR_ADDRESS``,
  ``FAMR_JAX_NUM_PROCESSES`` and ``FAMR_JAX_PROCESS_ID``. On CPU the
  collectives go through Gloo (JAX's default CPU implementation).

  Returns:
    True if this call (or an earlier one) started the runtime, False for a
    single-process run.

  Example:
    >>> initialize_distributed(DistributedConfig())   # nothing configured: single process
    False
  """
  config = (config or DistributedConfig()).merged_with_env().validate()
  if jax.distributed.is_initialized():
    return True
  if not config.enabled:
    return False
  jax.distributed.initialize(coordinator_address=config.coordinator_address,
                             num_processes=config.num_processes, process_id=config.process_id,
                             initialization_timeout=config.timeout_s)
  return True


# ----------------------------------------------------------------------------- mesh and shardings

def make_data_mesh(num_devices: int | None = None) -> Mesh:
  """A one-axis ``"data"`` mesh over the first ``num_devices`` devices (default: all, all processes).

  Devices are ordered by (process, id), so each process owns a contiguous
  block of the axis (its rows of the data). The axis type is ``Auto``: jit's
  sharding propagation decides every intermediate's layout.

  Example:
    >>> dict(make_data_mesh(1).shape)
    {'data': 1}
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise FamrError(f"cannot use {num_devices} devices: {len(devices)} exist")
    devices = devices[:num_devices]
  return Mesh(np.array(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  """The fully replicated sharding on ``mesh``."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
  """Shards array axis ``axis`` (the examples) over the data axis, the rest replicated.

  Example:
    >>> batch_sharding(make_data_mesh(1), axis=1).spec
    P(None, 'data')
  """
  return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))


def fsdp_spec(shape: Sequence[int], num_shards: int, min_size: int) -> P:
  """The FSDP partition of one leaf: its largest axis divisible by ``num_shards``.

  Leaves smaller than ``min_size`` scalars, or with no divisible axis, stay
  replicated (``P()``).

  Example:
    >>> fsdp_spec((768, 3072), 8, 1024)
    P(None, 'data')
    >>> fsdp_spec((10,), 8, 1)
    P()
  """
  if num_shards <= 1 or math.prod(shape) < min_size:
    return P()
  candidates = [(size, -axis) for axis, size in enumerate(shape) if size % num_shards == 0]
  if not candidates:
    return P()
  _, neg_axis = max(candidates)
  axis = -neg_axis
  return P(*([None] * axis), DATA_AXIS)


def tree_shardings(tree: Any, mesh: Mesh, *, fsdp: bool = False, min_size: int = 2 ** 14) -> Any:
  """A pytree of :class:`NamedSharding` like ``tree``: replicated, or FSDP-sharded.

  Works on arrays and ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape`` of an
  optimizer's ``init``), so the optimizer state follows its params' layout.

  Example:
    >>> import jax.numpy as jnp
    >>> s = tree_shardings({"w": jnp.zeros((8, 4))}, make_data_mesh(1))
    >>> s["w"].spec
    P()
  """
  num_shards = mesh.shape[DATA_AXIS]

  def one(leaf):
    if not fsdp:
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(np.shape(leaf), num_shards, min_size))
  return jax.tree.map(one, tree)


def put_tree(tree: Any, shardings: Any) -> Any:
  """Places every leaf of ``tree`` with its sharding (host or device values).

  In a multi-process run every process must hold the same host values (as
  for params and their anchor); each process then fills its own devices.
  """
  multi = jax.process_count() > 1

  def one(leaf, sharding):
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
      return leaf
    if not multi:
      return jax.device_put(leaf, sharding)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return jax.jit(lambda a: a, out_shardings=sharding)(leaf)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])
  return jax.tree.map(one, tree, shardings)


def gather_replicated(tree: Any, mesh: Mesh) -> Any:
  """Reshards every leaf to fully replicated (readable on every process)."""
  rep = replicated(mesh)
  return jax.jit(lambda t: t, out_shardings=jax.tree.map(lambda _: rep, tree))(tree)


# ----------------------------------------------------------------------------- data layout

class ShardedData(NamedTuple):
  """Global arrays whose rows (examples) are sharded over the data axis.

  ``arrays`` have ``padded_rows >= num_examples`` rows; rows from
  ``num_examples`` on are padding that the engine never samples. Build with
  :func:`shard_rows`.
  """
  arrays: tuple[jax.Array, ...]
  num_examples: int


def _rows_per_process(num_examples: int, mesh: Mesh) -> int:
  """Rows each process holds: ceil(n / processes), rounded up to its device count."""
  processes = len({d.process_index for d in mesh.devices.flat})
  local = mesh.devices.size // processes
  per_process = -(-num_examples // processes)
  return -(-per_process // local) * local


def process_rows(num_examples: int, mesh: Mesh | None = None,
                 process_index: int | None = None) -> slice:
  """The contiguous rows of a data set that one process loads in a multi-process run.

  The rule: process ``p`` of ``P`` holds rows ``[p*m, min(n, (p+1)*m))`` with
  ``m = ceil(ceil(n / P) / L) * L`` (``L`` devices per process), so every
  process's block, padded to ``m`` rows, splits evenly over its devices.
  With one process it is every row.

  Example:
    >>> process_rows(10, make_data_mesh(1))
    slice(0, 10, None)
  """
  mesh = mesh or make_data_mesh()
  m = _rows_per_process(num_examples, mesh)
  p = jax.process_index() if process_index is None else process_index
  start = min(num_examples, p * m)
  return slice(start, min(num_examples, start + m))


def shard_rows(arrays: Sequence[Any], mesh: Mesh, *, num_examples: int | None = None,
               local: bool = False) -> ShardedData:
  """Puts data arrays on ``mesh`` with their rows sharded over the data axis.

  Args:
    arrays: arrays with a shared leading (example) axis.
    mesh: a mesh from :func:`make_data_mesh`.
    num_examples: the global number of examples; needed with ``local=True``.
    local: the arrays are only this process's rows, ``process_rows(num_examples)``
      (each process loads its own shard); otherwise every process passes all rows.

  Returns:
    A :class:`ShardedData`, rows padded with zeros to an even split.

  Example:
    >>> import numpy as np
    >>> d = shard_rows([np.arange(5.0)], make_data_mesh(1))
    >>> d.num_examples, d.arrays[0].shape
    (5, (5,))
  """
  arrays = [np.asarray(a) for a in arrays]
  if local and num_examples is None:
    raise FamrError("shard_rows(local=True) needs the global number of examples")
  n = int(num_examples if num_examples is not None else arrays[0].shape[0])
  rows = process_rows(n, mesh)
  expected = (rows.stop - rows.start) if local else n
  for a in arrays:
    if a.shape[0] != expected:
      raise FamrError(f"data arrays must share their first axis: expected {expected} rows, got {a.shape[0]}")
  m = _rows_per_process(n, mesh)
  processes = len({d.process_index for d in mesh.devices.flat})
  padded = m * processes
  offset = rows.start if local else 0

  def place(a):
    sharding = batch_sharding(mesh)

    def block(index):
      sl = index[0]
      start, stop = sl.start or 0, padded if sl.stop is None else sl.stop
      out = np.zeros((stop - start,) + a.shape[1:], a.dtype)
      lo, hi = max(start, 0), min(stop, n)
      if hi > lo:
        out[lo - start:hi - start] = a[lo - offset:hi - offset]
      return out
    return jax.make_array_from_callback((padded,) + a.shape[1:], sharding, block)

  return ShardedData(tuple(place(a) for a in arrays), n)


# ----------------------------------------------------------------------------- precision

def _cast_floating(tree: Any, dtype) -> Any:
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
                      tree)


@functools.lru_cache(maxsize=256)
def compute_dtype_apply_fn(apply_fn: Callable[[Params, jax.Array], jax.Array],
                           compute_dtype: str = "float32") -> Callable[[Params, jax.Array], jax.Array]:
  """``apply_fn`` run in ``compute_dtype`` on float32 params, returning float32 logits.

  Params and inputs are cast inside the function, so gradients flow back to
  the float32 params (and optimizer state) unchanged in dtype; the loss on the
  float32 logits, and the anchor term, stay in float32. Memoized, so compiled
  steps built on the result are reused.

  Example:
    >>> import jax.numpy as jnp
    >>> f = compute_dtype_apply_fn(lambda p, x: x @ p, "bfloat16")
    >>> f(jnp.eye(2), jnp.ones((1, 2))).dtype
    dtype('float32')
  """
  if compute_dtype not in COMPUTE_DTYPES:
    raise FamrError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {compute_dtype!r}")
  if compute_dtype == "float32":
    return apply_fn
  dtype = jnp.dtype(compute_dtype)

  def low_precision_apply_fn(params, x):
    return apply_fn(_cast_floating(params, dtype), _cast_floating(x, dtype)).astype(jnp.float32)
  return low_precision_apply_fn


# ----------------------------------------------------------------------------- resources

def peak_memory() -> dict[str, Any]:
  """Peak memory per local device, or the process's peak RSS where devices do not report it.

  Returns:
    ``{"source": ..., "per_device_bytes": {device: bytes} or None,
    "process_peak_rss_bytes": int}``. ``source`` is
    ``"device.memory_stats()['peak_bytes_in_use']"`` on GPU/TPU and
    ``"process peak RSS (CPU devices report no memory stats)"`` on CPU,
    where the number is for the whole process, not per device.

  Example:
    >>> sorted(peak_memory())
    ['per_device_bytes', 'process_peak_rss_bytes', 'source']
  """
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux reports KiB
  per_device = {}
  for device in jax.local_devices():
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
      per_device[str(device)] = int(stats["peak_bytes_in_use"])
  if per_device:
    return {"source": "device.memory_stats()['peak_bytes_in_use']", "per_device_bytes": per_device,
            "process_peak_rss_bytes": rss}
  return {"source": "process peak RSS (CPU devices report no memory stats)", "per_device_bytes": None,
          "process_peak_rss_bytes": rss}


class CompileCounter:
  """Counts XLA backend compilations, and times all compilation work, while active (a context manager).

  ``count`` is the number of backend compilations; ``seconds`` is the time
  JAX reports for tracing, lowering and backend compilation together (what
  the engine keeps out of a run's ``run_s``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> with CompileCounter() as c:
    ...   _ = jax.jit(lambda x: x * 3.0)(jnp.ones(7))
    >>> c.count >= 1, c.seconds > 0
    (True, True)
  """
  EVENT = "/jax/core/compile/backend_compile_duration"
  TIMED = (EVENT, "/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration")

  def __init__(self):
    self.count = 0
    self.seconds = 0.0
    self._active = False

  def _listener(self, event: str, duration: float, **kwargs) -> None:
    if not self._active:
      return
    if event == self.EVENT:
      self.count += 1
    if event in self.TIMED:
      self.seconds += float(duration)

  def __enter__(self) -> "CompileCounter":
    self._active = True
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc) -> None:
    self._active = False
    try:
      jax.monitoring.unregister_event_duration_listener(self._listener)
    except (AttributeError, ValueError):   # older JAX: leave it registered but inactive
      pass


def scale_description(scale: ScaleConfig | None) -> dict[str, Any]:
  """The run report's ``config.scale`` entry: the settings plus the devices used."""
  scale = scale or ScaleConfig()
  devices = (scale.num_devices or jax.device_count()) if scale.sharded else 1
  return {**dataclasses.asdict(scale), "devices": devices, "processes": jax.process_count(),
          "platform": jax.devices()[0].platform}
