"""The gain in power of common random numbers: the audit's null sd, paired vs independent farms.

Digits MLP (the library's training recipe), a random 10% forget set per farm seed, the same number of
models per group in both designs. For each design and farm seed it runs the audit
(:func:`famr_jax.audit.audit.audit_request`, rows: the untouched original, the independent retrains and
``ga`` with its sample default) and records what the verdicts test: the original's difference to chance and
the null's sd (independent design: U-LiRA AUC, null by permuting reference vs independent retrains;
paired design: the paired AUC, null by swapping the original's pairs). To separate the design from the
statistic it also scores the independent farm with the paired statistic (pairs formed i <-> i by index).

Usage: PYTHONPATH=$PWD python experiments/crn_power.py --shadows 16 --seeds 3 --out /tmp/crn.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from famr_jax import models
from famr_jax.audit import paired as pairs
from famr_jax.audit.audit import INDEPENDENT_RETRAIN_ROW, ORIGINAL_ROW, REFERENCE_ROW, audit_request
from famr_jax.audit.shadows import AuditConfig
from famr_jax.data.datasets import load_dataset
from famr_jax.data.forget import forget_random
from famr_jax.engine.training import TrainConfig
from famr_jax.methods.resolve import Request, resolve_config


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--shadows", type=int, default=16)
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--out", required=True)
  args = p.parse_args()
  data = load_dataset("digits")
  model = models.create_model("mlp", data.num_classes, data.image_shape)
  apply_fn = models.make_apply_fn(model)
  out = []
  for k in range(args.seeds):
    forget = forget_random(jax.random.fold_in(jax.random.key(k), 1), 0.1, len(data.y_train), data.num_classes)
    methods = {"ga": resolve_config("ga", Request.of(forget), "mlp")}
    for design in ("independent", "paired"):
      t0 = time.perf_counter()
      r = audit_request(apply_fn, model, data, forget, TrainConfig(), methods,
                        AuditConfig(shadows=args.shadows, paired=design == "paired"),
                        jax.random.fold_in(jax.random.key(k), 14), seed=k)
      c = r["confidences"]
      entry = {"seed": k, "design": design, "shadows": args.shadows, "forget": len(forget.indices),
               "wall_s": time.perf_counter() - t0,
               "original_minus_chance": r["power"]["original_minus_chance"], "null_sd": r["power"]["null_sd"],
               "powered": r["power"]["powered"],
               "verdicts": {row: v["verdict"] for row, v in r["rows"].items()},
               "delta": {row: v["delta_vs_chance"]["mean"] for row, v in r["rows"].items()},
               "ulira_auc": {row: v["ulira_auc"] for row, v in r["rows"].items()}}
      # The paired statistic on this farm (for the independent design: pairs by index, no shared randomness).
      entry["paired_stat_original_minus_chance"] = pairs.paired_auc(c[ORIGINAL_ROW], c[REFERENCE_ROW]) - 0.5
      entry["paired_stat_null_sd"] = float(np.std(pairs.paired_null(c[ORIGINAL_ROW], c[REFERENCE_ROW],
                                                                    np.random.default_rng([k, 9]), permutations=1000)))
      entry["paired_stat_independent_row"] = pairs.paired_auc(c[INDEPENDENT_RETRAIN_ROW], c[REFERENCE_ROW]) - 0.5
      out.append(entry)
      print(json.dumps(entry), flush=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print("| design | seed | statistic | original - 0.5 | null sd | z | independent-retrain row | ga |")
  print("|---|---|---|---|---|---|---|---|")
  for e in out:
    stat = "paired AUC" if e["design"] == "paired" else "U-LiRA AUC"
    z = e["original_minus_chance"] / e["null_sd"]
    print(f"| {e['design']} | {e['seed']} | {stat} | {e['original_minus_chance']:+.4f} | {e['null_sd']:.4f} | "
          f"{z:.1f} | {e['verdicts'][INDEPENDENT_RETRAIN_ROW]} | {e['verdicts']['ga']} |")
  print("\n| design | seed | paired AUC of the original - 0.5 | its sign-flip null sd | z |")
  print("|---|---|---|---|---|")
  for e in out:
    print(f"| {e['design']} | {e['seed']} | {e['paired_stat_original_minus_chance']:+.4f} | "
          f"{e['paired_stat_null_sd']:.4f} | {e['paired_stat_original_minus_chance'] / e['paired_stat_null_sd']:.1f} |")


if __name__ == "__main__":
  main()
