"""Shared fixtures: a small model trained once on the embedded digits data set."""

import os

os.environ.setdefault("FAMR_JAX_NO_PROGRESS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

# The references are NumPy / float64 / finite differences. A GPU multiplies float32 matrices in
# TF32 by default (~1e-3 relative error: test_gram_matrix_and_style_loss_match_loops failed on an
# H100 for that alone), which is the backend's choice, not a bug: tests ask for full precision so
# that the same tolerances hold on every backend. (A no-op on CPU.)
jax.config.update("jax_default_matmul_precision", "highest")


class TrainedDigits:
  """An MLP trained on scikit-learn digits (the embedded default data set)."""

  def __init__(self):
    from famr_jax import models
    from famr_jax.data.datasets import load_dataset
    from famr_jax.engine.training import TrainConfig, train_classifier

    self.data = load_dataset("digits")
    self.model = models.create_model("mlp", self.data.num_classes, self.data.image_shape)
    self.apply_fn = models.make_apply_fn(self.model)
    self.train_config = TrainConfig(epochs=30, batch_size=64, lr=1e-3)
    init = models.init_params(self.model, jax.random.key(0), self.data.image_shape)
    self.params = train_classifier(self.apply_fn, init, self.data.x_train, self.data.y_train,
                                   self.train_config, jax.random.key(1), show_progress=False).params


@pytest.fixture(scope="session")
def trained_digits():
  return TrainedDigits()
