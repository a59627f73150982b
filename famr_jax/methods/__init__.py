"""Unlearning methods: each is a loss and a typed config over the engine, listed in one table."""
