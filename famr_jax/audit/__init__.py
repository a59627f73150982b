"""Proving the forgetting: shadow-model farms and per-example membership attacks (issue 14).

:mod:`famr_jax.audit.attacks` holds the statistics (LiRA, U-LiRA, the NeurIPS
2023 unlearning challenge's epsilon score); :mod:`famr_jax.audit.shadows` trains
the farms; :mod:`famr_jax.audit.audit` scores a method's farm against the
retrained one.
"""
