"""The minibatch engine: one step/epoch driver under training, retraining and every method."""
