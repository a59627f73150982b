"""Small float64 helpers of the theory checks: flat vectors, slopes, correlations, eigh.

Everything here runs on the host in NumPy float64: the checks compare
quantities that differ by orders of magnitude, and the matrices are small.
"""

from typing import Any, NamedTuple

from jax.flatten_util import ravel_pytree
import numpy as np

Params = Any

__all__ = ['Spectral', 'cosine', 'flatten64', 'loglog_slope', 'pearson', 'vector_norm']


def flatten64(tree: Params) -> np.ndarray:
  """A pytree as one float64 NumPy vector (``ravel_pytree`` order).

  Example:
    >>> flatten64({'a': np.ones(2, np.float32), 'b': np.zeros(1)}).tolist()
    [1.0, 1.0, 0.0]
  """
  return np.asarray(ravel_pytree(tree)[0], dtype=np.float64)


def vector_norm(a: np.ndarray) -> float:
  """Euclidean norm as a Python float.

  Example:
    >>> vector_norm(np.array([3., 4.]))
    5.0
  """
  return float(np.linalg.norm(a))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  """Cosine of the angle between two vectors (0 when one is zero).

  Example:
    >>> cosine(np.array([1., 0.]), np.array([2., 0.]))
    1.0
  """
  return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def loglog_slope(xs, ys) -> float:
  """Least-squares slope of ``log y`` against ``log x`` over the positive pairs (nan if < 2).

  Example:
    >>> round(loglog_slope([1., 10., 100.], [2., 20., 200.]), 6)
    1.0
  """
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  ok = (xs > 0) & (ys > 0)
  if ok.sum() < 2:
    return float('nan')
  return float(np.polyfit(np.log(xs[ok]), np.log(ys[ok]), 1)[0])


def pearson(a: np.ndarray, b: np.ndarray) -> float:
  """Pearson correlation of two samples.

  Example:
    >>> round(pearson(np.array([1., 2., 3.]), np.array([2., 4., 7.])), 4)
    0.9934
  """
  a, b = a - a.mean(), b - b.mean()
  return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


class Spectral(NamedTuple):
  """One eigendecomposition of a dense symmetric H reused for every lambda.

  Example:
    >>> Spectral.of(np.diag([1., 3.])).solve(np.array([2., 2.]), 1.0).tolist()
    [1.0, 0.5]
  """
  evals: np.ndarray
  evecs: np.ndarray

  @classmethod
  def of(cls, matrix) -> 'Spectral':
    """Decomposes the symmetric part of ``matrix`` (float64, host LAPACK)."""
    m = np.asarray(matrix, np.float64)
    evals, evecs = np.linalg.eigh(0.5 * (m + m.T))
    return cls(evals, evecs)

  def solve(self, b: np.ndarray, lam: float) -> np.ndarray:
    """``(H + lam I)^{-1} b``."""
    return self.evecs @ ((self.evecs.T @ b) / (self.evals + lam))
