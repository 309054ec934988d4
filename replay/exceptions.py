"""Typed errors of the replay package."""


class ReplayError(Exception):
    """Base class of every error raised by :mod:`replay`."""


class DatasetLayoutError(ReplayError, ValueError):
    """A data folder or CSV file does not have the layout a loader expects."""


class ConfigError(ReplayError, ValueError):
    """A replay configuration value is out of range."""
