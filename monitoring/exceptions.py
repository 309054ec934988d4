"""Typed errors of the monitoring package."""

from core.errors import PrerankError


class MonitoringError(PrerankError):
    """Base class of every error raised by :mod:`monitoring`."""


class InvalidOffsetsError(MonitoringError, ValueError):
    """Kafka offsets that cannot describe a partition (negative, or a non-integer)."""


class UnknownLabelValueError(MonitoringError, ValueError):
    """A label value outside the closed set a metric allows (keeps series cardinality bounded)."""


class DashboardError(MonitoringError, ValueError):
    """A dashboard document that does not have the shape Grafana and our checks expect."""
