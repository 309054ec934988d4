"""Errors of the command line and the local stack."""

from __future__ import annotations

from core.errors import PrerankError  # noqa: F401 - the root, re-exported for the CLI


class MissingToolError(PrerankError):
    """A program the local stack needs is not installed."""

    def __init__(self, tool: str, install: str) -> None:
        super().__init__(f"'{tool}' is not on PATH; install it with: {install}")
        self.tool = tool


class ServiceStartError(PrerankError):
    """A service of the local stack did not become ready; names the log to read."""
