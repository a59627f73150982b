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

from famr_jax import losses
from famr_jax.cli.compare_run import CompareRun, seed_forget_set
from famr_jax.theory.curvature import tree_norm
from famr_jax.errors import FamrError
from famr_jax.theory.influence import forget_gradient
from famr_jax.evaluation.metrics import batched_apply
from famr_jax.workflows import load_model


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
      n = len(forget.indices)

      def example_loss(q, batch):   # per-example cross-entropy: the loss the unlearning steps see
        return losses.cross_entropy(m.apply_fn(q, batch[0]), batch[1])
      loss = jnp.mean(losses.cross_entropy(batched_apply(m.apply_fn, m.params, x), y))
      grad = jax.tree.map(lambda g: g / n, forget_gradient(example_loss, m.params, (x, y)))
      per = jax.jit(jax.vmap(lambda xi, yi: tree_norm(jax.grad(
          lambda q: example_loss(q, (xi[None], yi[None]))[0])(m.params))))(x[:args.per_sample], y[:args.per_sample])
      print(f"{ckpt}: {n} forget samples, mean CE {float(loss):.4f}, "
            f"|grad mean CE| {float(tree_norm(grad)):.4f}, mean per-sample |grad| {float(per.mean()):.4f}")
  except FamrError as e:
    print(f"forget_gradient_scale: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
