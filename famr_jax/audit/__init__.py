"""Proving the forgetting: shadow-model farms and per-example membership attacks (issue 14).

:mod:`famr_jax.audit.attacks` holds the statistics (LiRA, U-LiRA, the NeurIPS
2023 unlearning challenge's epsilon score); :mod:`famr_jax.audit.shadows` trains
the farms (the user's model as the user trains it: BatchNorm in train mode, or
the caller's ``train_fn``); :mod:`famr_jax.audit.audit` scores a method's farm
against the retrained one; :mod:`famr_jax.audit.paired` (common random numbers),
:mod:`famr_jax.audit.queries` (augmented queries) and
:mod:`famr_jax.audit.membership` (a randomized-membership farm) are the designs
that need fewer models.
"""
