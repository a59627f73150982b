"""Checkpoints (Orbax) and imported weight files."""
