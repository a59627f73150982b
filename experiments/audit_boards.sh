#!/usr/bin/env bash
# The audited leaderboards of docs/results.md (issue 14): U-LiRA and the challenge's epsilon score of every
# sample-capable method on a farm of shadow models, digits (MLP, LeNet5) and a Fashion-MNIST subset (LeNet5),
# a random 10% and a handful of samples. Usage: experiments/audit_boards.sh OUTDIR [SHADOWS]
#   experiments/audit_boards.sh OUTDIR done   # issue 22's Done-when boards only: digits MLP, random 10%,
#                                             # 3 farm seeds pooled, 64 shadows (powered) and 4 (underpowered)
set -euo pipefail
OUT=${1:?usage: audit_boards.sh OUTDIR [SHADOWS|done]}
SHADOWS=${2:-16}
METHODS=famr,famr-function,famr-curvature,ft,ga,neggrad+,rl,salun,scrub,ssd
mkdir -p "$OUT"
run() { echo "== $*"; /usr/bin/time -f "%e s wall" nice -n 10 python3 -m famr_jax.cli "$@"; }
if [ "$SHADOWS" = done ]; then
  [ -d "$OUT/ckpt_digits_mlp" ] || run train --dataset digits --model mlp --out "$OUT/ckpt_digits_mlp"
  for n in 64 4; do
    [ -d "$OUT/done_shadows$n" ] || run compare --checkpoint "$OUT/ckpt_digits_mlp" --forget-random 0.1 \
        --methods ga,famr,retrain --seeds 1 --audit ulira --shadows "$n" --audit-seeds 3 --out "$OUT/done_shadows$n"
  done
  exit 0
fi
[ -d "$OUT/ckpt_digits_mlp" ] || run train --dataset digits --model mlp --out "$OUT/ckpt_digits_mlp"
[ -d "$OUT/ckpt_digits_lenet5" ] || run train --dataset digits --model lenet5 --out "$OUT/ckpt_digits_lenet5"
[ -d "$OUT/ckpt_fashion_lenet5" ] || run train --dataset fashion_mnist --model lenet5 --max-train 500 \
    --max-test 500 --epochs 10 --out "$OUT/ckpt_fashion_lenet5"
for ck in fashion_lenet5 digits_mlp digits_lenet5; do
  # a handful of samples: 5 of digits' 1,347 training images, 5 of the Fashion subset's 500
  small=$([ "$ck" = fashion_lenet5 ] && echo 0.01 || echo 0.0037)
  for frac in 0.1 "$small"; do
    board="$OUT/board_${ck}_${frac}"
    [ -d "$board" ] || run compare --checkpoint "$OUT/ckpt_$ck" --forget-random "$frac" --methods "$METHODS" \
        --seeds 1 --audit ulira --shadows "$SHADOWS" --out "$board"
  done
done
