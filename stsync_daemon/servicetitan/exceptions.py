"""Errors particular to the ServiceTitan client, subclasses of the project's hierarchy."""

from __future__ import annotations

from ..errors import ApiError


class ExportTokenInvalidError(ApiError):
    """ServiceTitan refused a stored continuation token: restart from the last committed date."""
