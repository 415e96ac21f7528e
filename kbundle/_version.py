"""The kbundle version (single source: pyproject.toml reads nothing from here)."""

__version__ = "0.1.0"
