"""The default a class request gets holds on fresh checkpoints of different training lengths.

``famr-jax unlearn --checkpoint C --forget-classes 3`` runs the recommended method with the model's
defaults; here the same request (``RECOMMENDED["classes"]``, LeNet5's defaults) on digits LeNet5s
trained 10 and 40 epochs. The reference is each model's own accuracy before unlearning.
"""

import jax
import numpy as np
import pytest

import famr_jax as fj
from famr_jax.methods.defaults import RECOMMENDED


@pytest.fixture(scope="module")
def digits():
  return fj.load_dataset("digits")


@pytest.mark.parametrize("epochs", [10, 40])
def test_recommended_class_default_forgets_and_keeps_the_rest(digits, epochs):
  model = fj.models.create_model("lenet5", digits.num_classes, digits.image_shape)
  apply_fn = fj.models.make_apply_fn(model)
  params = fj.models.init_params(model, jax.random.key(0), digits.image_shape)
  params = fj.train_classifier(apply_fn, params, digits.x_train, digits.y_train, fj.TrainConfig(epochs=epochs),
                               jax.random.key(1), show_progress=False).params
  forget = fj.forget_classes(digits.y_train, [3], digits.num_classes)
  assert RECOMMENDED["classes"] == "famr-plus"
  result = fj.unlearn(RECOMMENDED["classes"], apply_fn, params, forget, jax.random.key(2), model=model,
                      model_name="lenet5", data=(digits.x_train, digits.y_train))
  assert result.config.train_from == "fc1"   # LeNet5's tuned default: the conv head frozen
  keep = digits.y_test != 3

  def acc(p, mask):
    return float(np.mean(np.argmax(np.asarray(apply_fn(p, digits.x_test[mask])), -1) == digits.y_test[mask]))
  assert acc(params, ~keep) > 0.9                              # the trained model knows the class
  assert acc(result.params, ~keep) <= 0.05                     # forgotten
  assert acc(result.params, keep) >= acc(params, keep) - 0.02  # the other classes kept
