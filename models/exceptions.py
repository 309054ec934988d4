"""Typed errors of the models package.

Every error is also a built-in type (``ValueError``, ``KeyError``...) so callers that do not
know this package can still catch it the usual way.

>>> issubclass(ConfigError, ValueError)
True
"""

from __future__ import annotations

from core.errors import PrerankError


class ModelError(PrerankError):
    """Base class of every error raised by ``models``."""


class ConfigError(ModelError, ValueError):
    """A hyperparameter or configuration value is out of range."""


class InputError(ModelError, ValueError):
    """A batch or a feature value cannot be used (wrong length, wrong type, empty...)."""


class ExportError(ModelError, ValueError):
    """A model file is malformed, of an unknown format version, or cannot be written."""
