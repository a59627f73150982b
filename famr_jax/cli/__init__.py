"""The ``famr-jax`` command line."""
