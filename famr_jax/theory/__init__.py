"""Curvature, influence functions, the diagonal Fisher and the FAMR theory verification.

Curvature: :mod:`.pytrees` (pytree arithmetic), :mod:`.hvp` (Hessian-vector
products, data-set sums, operators), :mod:`.solvers` (dense, Lanczos, CG),
re-exported together by :mod:`.curvature`; :mod:`.influence` and :mod:`.fisher`
build on them. Verification: :mod:`.verification` runs :mod:`.sections` (convex,
non-convex) of :mod:`.checks`, with :mod:`.config`, :mod:`.problems`,
:mod:`.minimize`, :mod:`.numerics` and :mod:`.report`.
"""
