"""famr-jax: machine unlearning for JAX image classifiers."""

__version__ = "0.1.0"
