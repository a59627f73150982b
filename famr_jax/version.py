"""The package version (a module of its own, so every layer may read it)."""

__version__ = "0.2.0"
