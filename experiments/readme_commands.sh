#!/bin/sh
# Runs every command of the README literally, in order, in runs/readme/ (the Python section's code
# blocks as one script); prints "name rc=STATUS SECONDS" per command into runs/readme/summary.txt.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/runs/readme" && cd "$root/runs/readme" && rm -rf runs famr-demo
python3 - "$root/README.md" > readme_api.py <<'PY'
import sys
text = open(sys.argv[1]).read()
api = text[text.index("## Python API"):text.index("## Layout")]
blocks = api.split("```python")[1:]
print("\n".join(b.split("```")[0] for b in blocks[:2]))   # the worked example (the later block needs your NNX model)
PY
run() { name=$1; shift; start=$(date +%s); "$@" > "$name.log" 2>&1; rc=$?; echo "$name rc=$rc $(( $(date +%s) - start ))s" >> summary.txt; }
: > summary.txt
run demo famr-jax demo
run train famr-jax train --dataset fashion_mnist --model lenet5 --epochs 10 --out runs/lenet5
run unlearn_classes famr-jax unlearn --checkpoint runs/lenet5 --method famr --forget-classes 3 --retrain --out runs/lenet5-forget3
run unlearn_samples famr-jax unlearn --checkpoint runs/lenet5 --forget-samples 0,17,42 --out runs/samples
run evaluate famr-jax evaluate --checkpoint runs/lenet5-forget3/unlearned
run zs famr-jax unlearn --checkpoint runs/lenet5 --method impressions --forget-classes 1,2,3,4 --out runs/zs
run zs_famr famr-jax unlearn --checkpoint runs/lenet5 --method famr-zeroshot --forget-classes 1,2,3,4 --out runs/zs-famr
run theory famr-jax verify-theory --out runs/theory
run fisher famr-jax fisher --checkpoint runs/lenet5
run compare famr-jax compare --checkpoint runs/lenet5 --methods famr,famr-fisher,ga,rl,salun,retrain --forget-classes 3 --seeds 3 --out runs/leaderboard
run dp famr-jax unlearn --checkpoint runs/lenet5 --forget-classes 3 --data-parallel --checkpoint-dir runs/resume --checkpoint-every 100 --out runs/dp
run imp_digits python3 "$root/experiments/impressions_experiments.py" --preset digits --out runs/impressions/digits
run train_digits famr-jax train --dataset digits --model lenet5 --epochs 40 --batch-size 64 --fisher --out runs/digits_lenet5
run compare_digits famr-jax compare --checkpoint runs/digits_lenet5 --forget-classes 3 --seeds 3 --out runs/digits_board
rm -rf /tmp/unlearned   # the example saves there
run python_api python3 readme_api.py
cat summary.txt
