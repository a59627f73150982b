#!/usr/bin/env bash
# The sample-deletion board (docs/results.md, "Deleting samples: the tuned candidates, audited"): every
# candidate tuned on a calibration request (disjoint from every audited one, famr-jax tune), frozen, then
# audited on the requests compare draws, 64 shadows per group, 3 farm seeds pooled.
# Usage: experiments/sample_board.sh OUTDIR [SHADOWS]
set -euo pipefail
OUT=${1:?usage: sample_board.sh OUTDIR [SHADOWS]}
SHADOWS=${2:-64}
METHODS=${METHODS:-ga,neggrad+,neggrad+du,ft,msg,famr-calibrated,langevin}
mkdir -p "$OUT"
run() { echo "== $*"; /usr/bin/time -f "%e s wall" nice -n 10 python3 -m famr_jax.cli "$@"; }
[ -d "$OUT/ckpt_digits_mlp" ] || run train --dataset digits --model mlp --out "$OUT/ckpt_digits_mlp"
[ -d "$OUT/tuned" ] || run tune --checkpoint "$OUT/ckpt_digits_mlp" --forget-random 0.1 --seeds 1 --audit-seeds 3 \
    --methods "$METHODS" --trials 8 --max-cost-fraction 0.1 --seed 7 --out "$OUT/tuned"
[ -d "$OUT/board" ] || run compare --checkpoint "$OUT/ckpt_digits_mlp" --forget-random 0.1 --seeds 1 \
    --methods "$METHODS,retrain" --method-config "$OUT/tuned/tuned.json" --audit ulira --shadows "$SHADOWS" \
    --audit-seeds 3 --out "$OUT/board"
