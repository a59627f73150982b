"""Tuning without peeking (issue 23): the tuner never touches the audited forget set, picks by its stated score,
states its budget, and `famr-jax tune` writes frozen settings compare can read."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from famr_jax import TrainConfig, forget_classes, forget_samples, load_dataset, models
from famr_jax.engine.training import train_classifier
from famr_jax.errors import FamrError
from famr_jax.evaluation import tuning
from famr_jax.methods.registry import get_method, register_method
from famr_jax.methods.resolve import Request, resolve_config


@pytest.fixture(scope="module")
def small():
  d = load_dataset("digits")
  d = d._replace(x_train=d.x_train[:300], y_train=d.y_train[:300])
  m = models.create_model("logistic", 10, d.image_shape)
  f = models.make_apply_fn(m)
  fit = lambda x, y, k: train_classifier(f, models.init_params(m, k, d.image_shape), x, y, TrainConfig(epochs=5),
                                         k, show_progress=False)
  return d, m, f, fit, fit(d.x_train, d.y_train, jax.random.key(0)).params


def test_calibration_request_is_disjoint_from_every_audited_request_and_the_same_size():
  y = np.arange(100) % 10
  audited = [forget_samples(list(range(k, 100, 7)), 100, 10) for k in range(3)]
  used = set(np.concatenate([a.indices for a in audited]).tolist())
  calib = tuning.calibration_request(audited, y, 10, jax.random.key(0))
  assert calib.kind == "samples" and len(calib.indices) == len(audited[0].indices)
  assert used.isdisjoint(calib.indices.tolist())
  other = tuning.calibration_request(audited, y, 10, jax.random.key(1))
  assert set(other.indices.tolist()) != set(calib.indices.tolist())   # its own key decides
  classes = tuning.calibration_request([forget_classes(y, [3, 4], 10)], y, 10, jax.random.key(0))
  assert classes.kind == "classes" and len(classes.classes) == 2 and not {3, 4} & set(classes.classes)
  with pytest.raises(FamrError, match="outside the audited"):
    tuning.calibration_request([forget_samples(list(range(60)), 100, 10)], y, 10, jax.random.key(0))


def test_ks_distance_matches_scipy():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  for n, m in ((30, 50), (7, 7), (100, 3)):
    a, b = rng.normal(size=n), rng.normal(0.3, 1.2, size=m)
    assert tuning.ks_distance(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


def test_the_tuner_never_sees_the_audited_forget_set_and_picks_its_best_eligible_trial(small):
  d, m, f, fit, params = small
  seen, retrained_without = [], []
  ga = get_method("ga")

  def spy(task, config):
    seen.append(np.asarray(task.forget.indices).copy())
    return ga.run(task, config)
  register_method(dataclasses.replace(ga, name="spy-ga", run=spy,
                                      defaults=lambda model: resolve_config("ga", Request("classes"), model),
                                      sample_defaults=lambda model: resolve_config("ga", Request("samples"), model)))

  def gold_fn(forget):
    retrained_without.append(np.asarray(forget.indices).copy())
    keep = forget.retain_mask(len(d.y_train))
    return fit(d.x_train[keep], d.y_train[keep], jax.random.key(5))

  audited = [forget_samples(list(range(0, 300, 10)), 300, 10), forget_samples(list(range(5, 300, 10)), 300, 10)]
  search = {"spy-ga": {"lr": [1e-4, 1e-3, 1e-2], "steps": [2, 10]}}
  r = tuning.tune_on_calibration(["spy-ga"], f, params, d, audited, key=jax.random.key(3), gold_fn=gold_fn,
                                 model=m, search=search, trials=4)
  audited_idx = set(np.concatenate([a.indices for a in audited]).tolist())
  assert len(seen) == 4 and len(retrained_without) == 1
  for idx in seen + retrained_without:
    assert audited_idx.isdisjoint(idx.tolist()) and len(idx) == 30
  np.testing.assert_array_equal(seen[0], r.calibration.indices)
  rows = r.trials["spy-ga"]
  assert rows[0]["overrides"] == {} and len({json.dumps(t["overrides"], sort_keys=True) for t in rows}) == 4
  for t in rows:   # the score is the stated one
    assert t["score"] == pytest.approx(t["avg_gap"] + 100 * t["ks"])
  best = min((t for t in rows if t["eligible"]), key=lambda t: t["score"])
  assert r.configs["spy-ga"] == dataclasses.replace(resolve_config("spy-ga", Request("samples", 30)),
                                                    **best["overrides"])
  assert r.frozen["spy-ga"] == dataclasses.asdict(r.configs["spy-ga"])
  b = r.budget
  assert b["trials"] == 4 and b["trials_run"] == {"spy-ga": 4} and b["seconds"] is None and b["seconds_spent"] > 0


def test_budget_limits_are_honoured(small):
  d, m, f, fit, params = small
  audited = forget_samples(list(range(20)), 300, 10)
  r = tuning.tune_on_calibration(["ga", "ft"], f, params, d, audited, key=jax.random.key(0), retrain=fit, model=m,
                                 trials=5, seconds=1e-9)
  assert r.budget["trials_run"] == {"ga": 1, "ft": 1} and r.budget["seconds"] == 1e-9   # defaults only
  none_cheap = tuning.tune_on_calibration(["ga"], f, params, d, audited, key=jax.random.key(0), retrain=fit,
                                          trials=2, max_cost_fraction=1e-12)
  assert not any(t["eligible"] for t in none_cheap.trials["ga"]) and "ga" not in none_cheap.frozen
  # A grid point equal to the defaults (ga's sample defaults: 5 Adam steps at lr 1e-4) is not run twice.
  same = tuning.tune_on_calibration(["ga"], f, params, d, audited, key=jax.random.key(0), retrain=fit, trials=3,
                                    search={"ga": {"lr": [1e-4], "steps": [5]}})
  assert same.budget["trials_run"] == {"ga": 1}


def test_bad_tuning_input_is_refused_in_one_line_before_work(small):
  d, m, f, fit, params = small
  audited = forget_samples([0, 1], 300, 10)
  calls = []
  counting = lambda x, y, k: calls.append(1) or fit(x, y, k)
  for kwargs, message in (({"trials": 0}, "trials must be"), ({"seconds": -1.0}, "seconds must be"),
                          ({"search": {"ga": {"nope": [1]}}}, "no option nope")):
    with pytest.raises(FamrError, match=message):
      tuning.tune_on_calibration(["ga"], f, params, d, audited, key=jax.random.key(0), retrain=counting, **kwargs)
  with pytest.raises(FamrError, match="unknown method"):
    tuning.tune_on_calibration(["nosuch"], f, params, d, audited, key=jax.random.key(0), retrain=counting)
  assert not calls


def test_tune_command_writes_frozen_settings_compare_reads_and_refuses_bad_input(tmp_path, capsys):
  from famr_jax.cli.main import main
  from famr_jax.evaluation.compare import read_method_config
  ck = tmp_path / "ck"
  assert main(["train", "--dataset", "digits", "--model", "logistic", "--epochs", "3", "--out", str(ck)]) == 0
  out = tmp_path / "tuned"
  assert main(["tune", "--checkpoint", str(ck), "--out", str(out), "--methods", "ga", "--forget-random", "0.05",
               "--trials", "2", "--seeds", "2", "--audit-seeds", "1"]) == 0
  frozen = read_method_config(str(out / "tuned.json"))
  assert set(frozen) == {"ga"} and frozen["ga"]["optimizer"] == "adam"
  record = json.loads((out / "tuning.json").read_text())
  assert record["budget"]["trials"] == 2 and record["audited_seeds"] == [0, 1]
  from famr_jax.cli.compare_run import seed_forget_set
  from famr_jax.cli.tune_run import TuneRun
  data = load_dataset("digits")
  run = TuneRun(checkpoint=str(ck), out=str(out), methods=("ga",), forget_random=0.05)
  audited = set(np.concatenate([seed_forget_set(run, data, k).indices for k in range(2)]).tolist())
  assert audited.isdisjoint(record["calibration"]["indices"])
  capsys.readouterr()
  for argv, message in ((["--methods", "ga", "--forget-random", "0.05", "--trials", "0"], "trials must be"),
                        (["--forget-random", "0.05"], "name the methods"),
                        (["--methods", "ga"], "name exactly one forget set")):
    code = main(["tune", "--checkpoint", str(ck), "--out", str(tmp_path / "bad")] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
  assert not (tmp_path / "bad").exists()
