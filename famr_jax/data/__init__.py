"""Data sets (digits, IDX, TFDS) and forget requests (classes, samples, random subsets)."""
