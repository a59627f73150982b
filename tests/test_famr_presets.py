"""The named FAMR methods are presets of one objective: their numbers are the old code's, to float32 tolerance.

The values were printed by ``python tests/famr_cases.py`` on commit 37d86c0, before FAMR's objective was
written once (paper FAMR, the variants, style and zero-shot FAMR each had their own loss then), and are
hard-coded here: an independent record, not the refactored code's own output. Each row is
``[final loss, sum of params, sum of squared params, a fixed random projection, mean forget logit]``.
"""

import dataclasses
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from famr_jax.errors import FamrError
from famr_jax.methods.objective import FAMRTerms, RetainedBatch, famr_loss

sys.path.insert(0, str(Path(__file__).parent))
import famr_cases  # noqa: E402

OLD_SUMMARIES = {
    'famr': [0.5943508, 2.9356966, 44.1312992, 0.6092813, -0.1647415],
    'famr/samples': [4.5900397, 10.4544653, 51.4922247, -2.8236141, 4.6383566],
    'famr/style': [4.1159186, 1.9645225, 49.1561275, -0.5398541, -1.7226879],
    'famr-retrain-target': [0.6452084, 7.2438799, 50.7241936, -1.1526184, -0.9563195],
    'famr-fisher': [1.2804056, 7.1109613, 49.8780589, -0.7327511, 0.0665332],
    'famr-curvature': [3.7075293, 9.1247828, 50.9746229, -2.3535131, 3.232403],
    'famr-curvature/hessian': [3.7145855, 9.1688395, 50.9871999, -2.3595077, 3.2376093],
    'famr-function': [1.3372736, 7.1349804, 49.828682, -0.762796, 0.1004129],
    'famr-function/samples': [4.5901284, 10.4543009, 51.4927399, -2.8235232, 4.6385751],
    'famr-function/impressions': [1.2792033, 7.1099766, 49.8781015, -0.7313093, 0.064961],
    'famr-plus': [0.6664187, 7.2211428, 50.7031901, -1.1466989, -0.9411977],
    'famr-plus/head-frozen': [1.6413997, 11.0089598, 50.836824, -1.2492851, 0.6732006],
    'style/retained-mean': [4.1159186, 1.9645222, 49.1561276, -0.5398539, -1.7226878],
    'style/class-mean/samples': [5.5847974, 7.9352473, 49.8097817, -2.5219015, 4.3697368],
    'famr-zeroshot': [0.8333216, 11.0739375, 51.7241848, -2.8780229, 4.664554],
    'famr-zeroshot/no-retain': [0.5905173, 11.0089603, 50.6618776, -1.8408682, 3.1352677],
}

# The registry's default config of every named FAMR method before the refactor: the mlp class config in
# full, the other (model/kind) entries as their differences from it.
OLD_DEFAULTS = {'famr': {'lenet5/classes': {'epochs': 3, 'lr': 0.001},
          'lenet5/samples': {'epochs': 3, 'lr': 0.0001, 'optimizer': 'adam', 'steps': 25},
          'mlp/classes': {'alpha': 1.0,
                          'batch_size': 32,
                          'beta': 0.0,
                          'epochs': 10,
                          'lam': 0.1,
                          'lr': 0.1,
                          'optimizer': 'sgd',
                          'steps': None,
                          'style_layer': None},
          'mlp/samples': {'lr': 0.0001, 'optimizer': 'adam', 'steps': 25}},
 'famr-curvature': {'lenet5/classes': {},
                    'lenet5/samples': {'steps': 10},
                    'mlp/classes': {'alpha': 1.0,
                                    'anchor': 'gauss-newton',
                                    'batch_size': 32,
                                    'curvature_weight': 100.0,
                                    'epochs': 5,
                                    'function_data': 'retain',
                                    'impression_steps': 1000,
                                    'impressions_per_class': 100,
                                    'lam': 0.1,
                                    'lr': 0.001,
                                    'optimizer': 'adam',
                                    'retain_ratio': 1,
                                    'retain_weight': 0.0,
                                    'steps': None,
                                    'target': 'uniform',
                                    'train_from': None},
                    'mlp/samples': {'steps': 10}},
 'famr-fisher': {'lenet5/classes': {},
                 'lenet5/samples': {'lr': 0.0001, 'optimizer': 'adam', 'steps': 25},
                 'mlp/classes': {'alpha': 1.0,
                                 'anchor': 'fisher',
                                 'batch_size': 32,
                                 'curvature_weight': 10.0,
                                 'epochs': 5,
                                 'function_data': 'retain',
                                 'impression_steps': 1000,
                                 'impressions_per_class': 100,
                                 'lam': 0.1,
                                 'lr': 0.01,
                                 'optimizer': 'sgd',
                                 'retain_ratio': 1,
                                 'retain_weight': 0.0,
                                 'steps': None,
                                 'target': 'uniform',
                                 'train_from': None},
                 'mlp/samples': {'lr': 0.0001, 'optimizer': 'adam', 'steps': 25}},
 'famr-function': {'lenet5/classes': {},
                   'lenet5/samples': {'lr': 0.0001, 'optimizer': 'adam', 'steps': 25},
                   'mlp/classes': {'alpha': 1.0,
                                   'anchor': 'l2',
                                   'batch_size': 32,
                                   'curvature_weight': 1.0,
                                   'epochs': 5,
                                   'function_data': 'retain',
                                   'impression_steps': 1000,
                                   'impressions_per_class': 100,
                                   'lam': 0.1,
                                   'lr': 0.01,
                                   'optimizer': 'sgd',
                                   'retain_ratio': 1,
                                   'retain_weight': 3.0,
                                   'steps': None,
                                   'target': 'uniform',
                                   'train_from': None},
                   'mlp/samples': {'lr': 0.0001, 'optimizer': 'adam', 'steps': 25}},
 'famr-plus': {'lenet5/classes': {'train_from': 'fc1'},
               'lenet5/samples': {'train_from': 'fc1'},
               'mlp/classes': {'alpha': 1.0,
                               'anchor': 'l2',
                               'batch_size': 32,
                               'curvature_weight': 1.0,
                               'epochs': 5,
                               'function_data': 'retain',
                               'impression_steps': 1000,
                               'impressions_per_class': 100,
                               'lam': 0.1,
                               'lr': 0.01,
                               'optimizer': 'sgd',
                               'retain_ratio': 1,
                               'retain_weight': 1.0,
                               'steps': None,
                               'target': 'retrain',
                               'train_from': None},
               'mlp/samples': {}},
 'famr-retrain-target': {'lenet5/classes': {},
                         'lenet5/samples': {},
                         'mlp/classes': {'alpha': 1.0,
                                         'anchor': 'l2',
                                         'batch_size': 32,
                                         'curvature_weight': 1.0,
                                         'epochs': 5,
                                         'function_data': 'retain',
                                         'impression_steps': 1000,
                                         'impressions_per_class': 100,
                                         'lam': 0.1,
                                         'lr': 0.01,
                                         'optimizer': 'sgd',
                                         'retain_ratio': 1,
                                         'retain_weight': 0.0,
                                         'steps': None,
                                         'target': 'retrain',
                                         'train_from': None},
                         'mlp/samples': {}},
 'famr-zeroshot': {'lenet5/classes': {},
                   'lenet5/samples': {},
                   'mlp/classes': {'batch_size': 32,
                                   'epochs': 10,
                                   'impression_beta': 0.0,
                                   'impression_lr': 0.1,
                                   'impression_objective': 'log_softmax',
                                   'impression_range': 'auto',
                                   'impression_space': 'activation',
                                   'impression_steps': 1000,
                                   'impressions_per_class': 100,
                                   'lam': 0.1,
                                   'lr': 0.001,
                                   'optimizer': 'adam',
                                   'retain_weight': 1.0,
                                   'scale_min': 0.01,
                                   'tail_layer': None},
                   'mlp/samples': {}}}


@pytest.fixture(scope="module")
def problem():
  return famr_cases.Problem()


@pytest.mark.parametrize("name", sorted(OLD_SUMMARIES))
def test_named_method_gives_the_old_numbers(problem, name):
  got = famr_cases.summarize(problem, famr_cases.CASES[name](problem))
  np.testing.assert_allclose(got, OLD_SUMMARIES[name], rtol=2e-4, atol=2e-4, err_msg=name)


def test_default_configs_are_the_old_presets():
  from famr_jax.methods.registry import get_method
  new = famr_cases.default_configs()
  for method, entries in OLD_DEFAULTS.items():
    base = entries["mlp/classes"]
    for where, changes in entries.items():
      if where not in new[method]:   # a request kind the method no longer serves: refused by the resolver
        assert where.split("/")[1] not in get_method(method).serves, (method, where)
        continue
      expected = {**base, **changes}
      got = {famr_cases.OLD_NAMES.get(k, k): v for k, v in new[method][where].items()}
      mismatch = {k: (v, got.get(k, "<absent>")) for k, v in expected.items() if k not in got or got[k] != v}
      assert not mismatch, (method, where, mismatch)


def test_presets_are_the_registered_methods_terms():
  # Each named method's objective terms live in one table (objective.PRESETS); its default config carries them.
  from famr_jax.methods.objective import PRESETS
  from famr_jax.methods.resolve import Request, resolve_config
  for name, terms in PRESETS.items():
    if name == "famr-style":   # not registered: evaluation.style gives it to compare
      continue
    config = resolve_config(name, Request("classes"), "lenet5")
    assert {k: getattr(config, k) for k in terms} == terms, name
    assert {k: getattr(config.terms(), k) for k in terms} == terms, name


def test_famr_loss_matches_numpy():
  # Every term at once on a linear softmax model, re-derived in float64 NumPy: the retrained-target KL,
  # the Gram style loss (features = the inputs as a 1 x 1 map), the function-space KL and the L2 anchor.
  rng = np.random.default_rng(0)
  d, c, b = 3, 4, 5
  w0, w = rng.normal(size=(d, c)), rng.normal(size=(d, c))
  x, x_r = rng.normal(size=(b, d)), rng.normal(size=(2 * b, d))
  t = rng.dirichlet(np.ones(c), size=b) * np.array([1, 0, 1, 1])
  t /= t.sum(1, keepdims=True)
  gram = rng.normal(size=(d, d))
  weights, w_r = np.array([1, 1, 1, 1, 0.0]), np.repeat(np.array([1, 1, 1, 1, 0.0]), 2)
  terms = FAMRTerms(alpha=0.7, target="retrain", beta=0.3, retain_weight=2.0, lam=0.4)

  def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))

  kl_t = np.sum(np.where(t > 0, t * (np.log(np.where(t > 0, t, 1)) - log_softmax(x @ w)), 0), -1)
  style = np.sum((np.einsum("bk,bl->bkl", x, x) - gram) ** 2, axis=(1, 2))
  p0 = np.exp(log_softmax(x_r @ w0))
  kl_r = np.sum(p0 * (log_softmax(x_r @ w0) - log_softmax(x_r @ w)), -1)
  want = (np.sum(weights * (0.7 * kl_t + 0.3 * style)) / 4 + 2.0 * np.sum(w_r * kl_r) / 8
          + 0.5 * 0.4 * np.sum((w - w0) ** 2))
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  apply_fn = lambda p, v: v @ p
  got = famr_loss(apply_fn, terms, f32(w), f32(w0), f32(x), f32(weights), target=f32(t),
                  retained=RetainedBatch(f32(x_r), None, f32(x_r @ w0), f32(w_r)),
                  feature_fn=lambda p, v: v[:, None, None, :], target_gram=f32(gram))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  with pytest.raises(FamrError, match="per-example targets"):
    famr_loss(apply_fn, terms, f32(w), f32(w0), f32(x), f32(weights))


def test_one_meaning_per_option_name():
  # A flag several method configs share gets "[Config: ...]" appended for each config that describes it
  # otherwise (cli.flags.add_config_flags); the renamed options and FAMR's own carry one description.
  from famr_jax.cli.main import build_parser
  parser = build_parser()
  unlearn = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices["unlearn"]
  helps = {o: a.help or "" for a in unlearn._actions for o in a.option_strings}
  for flag in ("--alpha", "--lam", "--beta", "--target", "--anchor", "--retain-weight", "--curvature-weight",
               "--impressions-per-class", "--impression-steps", "--impression-lr", "--impression-beta",
               "--impression-range", "--impression-objective", "--selection-weight", "--dampening", "--kl-weight",
               "--coupled-weight-decay", "--weight-decay", "--scale-min"):
    assert flag in helps and "Config:" not in helps[flag], (flag, helps.get(flag))


def test_renamed_style_and_impression_fields_keep_their_old_keywords():
  from famr_jax.methods.impressions import ImpressionConfig
  from famr_jax.methods.style import StyleFAMRConfig
  with pytest.warns(DeprecationWarning, match="gram_target"):
    assert StyleFAMRConfig(beta=1.0, target="class-mean").gram_target == "class-mean"
  with pytest.warns(DeprecationWarning, match="norm_penalty"):
    assert ImpressionConfig(beta=0.5).norm_penalty == 0.5
  assert "target" not in {f.name for f in dataclasses.fields(StyleFAMRConfig)}


def test_variant_resume_fingerprint_keeps_its_old_keys():
  # The impression fields the variants took from ImpressionSettings stay out of the resume fingerprint at
  # their defaults, so a checkpoint written before resumes (its keys are the old config's fields).
  from famr_jax.methods import variants
  assert set(variants._resume_settings(variants.FAMRVariantConfig())) == set(OLD_DEFAULTS["famr-fisher"]["mlp/classes"])
  changed = variants._resume_settings(variants.FAMRVariantConfig(impression_objective="log_softmax"))
  assert changed["impression_objective"] == "log_softmax"
