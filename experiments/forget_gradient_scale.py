"""How large the forget set's gradients are at the original weights, per checkpoint.

Why the sample-forgetting defaults are Adam step budgets (BUILD_NOTES.md, issue 5): an SGD or
momentum step moves the weights by lr x the gradient, so the same lr and number of steps tuned on a
model that fits its training set almost exactly (digits) move a model with a larger training loss
(Fashion-MNIST) several times further. Adam's first steps move each weight by about lr whatever the
gradient's scale. For the random 10% forget set of ``famr-jax compare --forget-random 0.1`` (seed 0)
this prints the mean cross-entropy, the norm of its gradient, and the mean per-sample gradient norm.

  python experiments/forget_gradient_scale.py runs/digits_lenet5 runs/fmnist_lenet5
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

from famr_jax import objectives
from famr_jax.compare import CompareRun, seed_forget_set
from famr_jax.errors import FamrError
from famr_jax.runs import load_model


def _norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(leaf ** 2) for leaf in jax.tree.leaves(tree)))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("checkpoints", nargs="+")
  p.add_argument("--fraction", type=float, default=0.1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--per-sample", type=int, default=256, help="samples for the per-sample gradient norms")
  args = p.parse_args(argv)
  try:
    for ckpt in args.checkpoints:
      m = load_model(ckpt)
      forget = seed_forget_set(CompareRun(checkpoint=ckpt, out="-", forget_random=args.fraction), m.data, args.seed)
      x, y = jnp.asarray(m.data.x_train[forget.indices]), jnp.asarray(m.data.y_train[forget.indices])
      loss, grad = jax.value_and_grad(lambda q: jnp.mean(objectives.cross_entropy(m.apply_fn(q, x), y)))(m.params)

      def sample_norm(xi, yi):
        return _norm(jax.grad(lambda q: objectives.cross_entropy(m.apply_fn(q, xi[None]), yi[None])[0])(m.params))
      per = jax.jit(jax.vmap(sample_norm))(x[:args.per_sample], y[:args.per_sample])
      print(f"{ckpt}: {len(forget.indices)} forget samples, mean CE {float(loss):.4f}, "
            f"|grad mean CE| {float(_norm(grad)):.4f}, mean per-sample |grad| {float(per.mean()):.4f}")
  except FamrError as e:
    print(f"forget_gradient_scale: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
