"""Hydra plugin package of dp_sam2 (no ``__init__.py`` may exist in ``hydra_plugins/`` itself)."""
