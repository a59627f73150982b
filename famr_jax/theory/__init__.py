"""Curvature, influence functions, the diagonal Fisher and the FAMR theory verification."""
