set -x
cd /work/main
M=famr,famr-retrain-target,famr-fisher,famr-curvature,famr-function,famr-plus,ft,ga,neggrad+,rl,salun,retrain
time python -m famr_jax.cli compare --checkpoint /tmp/lb/digits_lenet5 --methods $M --forget-classes 3 --seeds 3 --method-config experiments/leaderboard_methods.json --gold-cache runs/leaderboard/gold_cache --out runs/leaderboard/digits_lenet5_class3 --overwrite
time python -m famr_jax.cli compare --checkpoint /tmp/lb/digits_lenet5 --methods $M --forget-classes 1,2,3,4 --seeds 3 --method-config experiments/leaderboard_methods.json --gold-cache runs/leaderboard/gold_cache --out runs/leaderboard/digits_lenet5_class1234 --overwrite
M2=famr,famr-fisher,famr-curvature,famr-function,ft,ga,neggrad+,rl,salun,retrain
time python -m famr_jax.cli compare --checkpoint /tmp/lb/digits_lenet5 --methods $M2 --forget-random 0.1 --seeds 3 --method-config experiments/leaderboard_methods.json --gold-cache runs/leaderboard/gold_cache --out runs/leaderboard/digits_lenet5_random10 --overwrite
