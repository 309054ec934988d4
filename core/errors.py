"""The exception root. Each package derives its own errors from :class:`PrerankError`.

>>> from models.exceptions import ModelError
>>> from streams.exceptions import StreamError
>>> issubclass(ModelError, PrerankError) and issubclass(StreamError, PrerankError)
True
"""

from __future__ import annotations


class PrerankError(Exception):
    """Base class of every error the project raises; the CLI prints one as one clear line."""
