"""Issue 22: the audit's files re-score to its leaderboard, its per-example list and power gate on data with a
known answer, its plot draws the json's intervals, and its flags refuse bad input in one line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from famr_jax.audit import attacks, challenge, evidence
from famr_jax.audit.audit import (INDEPENDENT_RETRAIN_ROW, ORIGINAL_ROW, REFERENCE_ROW, EvidenceConfig, pool_audits,
                                  score_seed)

_FAST = EvidenceConfig(replicates=200, null_permutations=30, example_permutations=999)


def _cli(*args, check=True):
  out = subprocess.run([sys.executable, "-m", "famr_jax.cli", *args], capture_output=True, text=True)
  if check and out.returncode:
    raise AssertionError(out.stderr[-3000:])
  return out


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
  """A tiny audited compare through the CLI: 4 shadows, 2 farm seeds, one method."""
  root = tmp_path_factory.mktemp("audit")
  _cli("train", "--dataset", "digits", "--model", "logistic", "--max-train", "300", "--max-test", "100",
       "--epochs", "3", "--out", str(root / "ckpt"))
  _cli("compare", "--checkpoint", str(root / "ckpt"), "--forget-random", "0.1", "--methods", "ga", "--seeds", "1",
       "--audit", "ulira", "--shadows", "4", "--audit-seeds", "2", "--out", str(root / "board"))
  return root / "board"


def test_the_audit_files_rescore_to_the_leaderboard(audited):
  board = json.loads((audited / "leaderboard.json").read_text())
  assert [a["seed"] for a in board["audit"]] == [0, 1]
  aucs = {}
  for entry in board["audit"]:
    k = entry["seed"]
    with np.load(audited / "audit" / f"seed_{k}.npz", allow_pickle=False) as f:
      arrays = {name: f[name] for name in f.files}
    index = arrays.pop("forget_index")
    assert list(arrays) == [REFERENCE_ROW, ORIGINAL_ROW, INDEPENDENT_RETRAIN_ROW, "ga"]
    assert len(index) == 30 and len(set(index.tolist())) == 30   # 10% of 300, its own draw per seed
    ref = arrays[REFERENCE_ROW]
    null = evidence.permutation_null(ref, arrays[INDEPENDENT_RETRAIN_ROW], np.random.default_rng([k, 0, 0]),
                                     permutations=100)
    assert entry["power"]["null_sd"] == pytest.approx(float(np.std(null)), abs=1e-12)
    for i, (name, phi) in enumerate(arrays.items()):
      if name == REFERENCE_ROW:
        continue
      assert phi.dtype == np.float64 and phi.shape == (4, 30)
      row = entry["rows"][name]
      auc = attacks.ulira(phi, ref).auc          # the library's U-LiRA on the file's arrays
      assert row["ulira_auc"] == pytest.approx(auc, abs=1e-12)
      assert row["forgetting_quality"] == pytest.approx(challenge.forgetting_quality(phi, ref), abs=1e-12)
      e = evidence.auc_evidence(phi, ref, np.random.default_rng([k, i, 1]), replicates=1000)
      assert row["ulira_auc_ci"] == pytest.approx(list(e.ci), abs=1e-12)
      assert row["delta_vs_chance"]["mean"] == pytest.approx(auc - 0.5, abs=1e-12)
      assert row["delta_vs_chance"]["ci"] == pytest.approx([e.ci[0] - 0.5, e.ci[1] - 0.5], abs=1e-12)
      assert set(row["identified"]["indices"]) <= set(index.tolist())
      assert row["verdict"] in evidence.VERDICTS
      aucs.setdefault(name, []).append(auc)
  pooled = board["audit_pooled"]
  for name, values in aucs.items():
    assert pooled["rows"][name]["ulira_auc"] == pytest.approx(np.mean(values), abs=1e-12)
  assert set(pooled["power"]) == {"original_minus_chance", "null_sd", "powered"}
  assert board["pick"] in (None, "ga")
  if not pooled["power"]["powered"]:
    assert board["pick"] is None and {r["verdict"] for r in pooled["rows"].values()} == {evidence.UNDERPOWERED}
  assert (audited / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "Seeds pooled" in (audited / "leaderboard.md").read_text()


def test_the_plot_draws_the_leaderboards_intervals(audited, tmp_path):
  from famr_jax.evaluation.audit_plot import plot_audit
  board = json.loads((audited / "leaderboard.json").read_text())
  drawn = plot_audit(board, tmp_path / "a.png")
  assert (tmp_path / "a.png").stat().st_size > 10_000
  for name, row in board["audit_pooled"]["rows"].items():
    assert drawn[name]["auc"] == pytest.approx(row["ulira_auc"], abs=1e-12)
    assert [drawn[name]["lo"], drawn[name]["hi"]] == pytest.approx(row["ulira_auc_ci"], abs=1e-12)
  sd = board["audit_pooled"]["power"]["null_sd"]
  assert [drawn["null_band"]["lo"], drawn["null_band"]["hi"]] == pytest.approx([0.5 - 3 * sd, 0.5 + 3 * sd])
  ga_cost = 100 * np.mean([a["rows"]["ga"]["time_fraction"] for a in board["audit"]])
  assert drawn["ga"]["cost_percent"] == pytest.approx(ga_cost)
  assert drawn[ORIGINAL_ROW]["cost_percent"] < ga_cost and drawn[INDEPENDENT_RETRAIN_ROW]["cost_percent"] == 100.0


def _farm(rng, n, s, shift_original, exposed=()):
  c = {REFERENCE_ROW: rng.normal(size=(n, s)), ORIGINAL_ROW: rng.normal(size=(n, s)) + shift_original,
       INDEPENDENT_RETRAIN_ROW: rng.normal(size=(n, s)), "leaky": rng.normal(size=(n, s))}
  c["leaky"][:, list(exposed)] += 6.0
  return c


def test_the_per_example_list_names_the_exposed_examples():
  rng = np.random.default_rng(3)
  index = np.arange(1000, 1040)
  scored = score_seed(_farm(rng, 32, 40, 1.0, exposed=(2, 7, 30)), index, 0, _FAST)
  assert scored["rows"]["leaky"]["identified"]["indices"] == [1002, 1007, 1030]
  assert scored["rows"]["leaky"]["identified"]["count"] == 3
  assert scored["rows"][INDEPENDENT_RETRAIN_ROW]["identified"]["count"] == 0


def test_the_power_gate_names_nothing_when_the_original_is_at_chance():
  rng = np.random.default_rng(4)
  seeds = []
  for k in range(3):
    s = score_seed(_farm(rng, 4, 30, 0.0), np.arange(30), k, _FAST)
    seeds.append({**s, "forget_index": np.arange(30)})
  pooled = pool_audits(seeds, _FAST)
  assert pooled["power"]["powered"] is False
  assert {r["verdict"] for r in pooled["rows"].values()} == {evidence.UNDERPOWERED}
  powered = score_seed(_farm(rng, 64, 120, 1.5), np.arange(120), 0, _FAST)
  assert powered["power"]["powered"] is True
  assert powered["rows"][ORIGINAL_ROW]["verdict"] == evidence.DISTINGUISHABLE
  assert powered["rows"][INDEPENDENT_RETRAIN_ROW]["verdict"] in (evidence.EQUIVALENT, evidence.INCONCLUSIVE)


@pytest.mark.parametrize("args, message", [
    (["--audit-seeds", "2"], "--audit-seeds sizes an audit: add --audit ulira"),
    (["--audit-margin", "0.05"], "--audit-margin sizes an audit: add --audit ulira"),
    (["--audit", "ulira", "--audit-seeds", "0"], "--audit-seeds must be positive"),
    (["--audit", "ulira", "--audit-margin", "0.7"], "--audit-margin must lie strictly between 0 and 0.5")])
def test_bad_audit_flags_are_one_line(audited, tmp_path, args, message):
  out = _cli("compare", "--checkpoint", str(audited.parent / "ckpt"), "--forget-random", "0.1", "--methods", "ga",
             "--out", str(tmp_path / "x"), *args, check=False)
  assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr
  assert not (tmp_path / "x").exists()
