"""Exception and warning types of the data layer."""

from __future__ import annotations


class DataError(ValueError):
    """A data set cannot be used as configured; the message names the problem and the fix."""


class DataWarning(UserWarning):
    """Data was usable but altered (duplicates dropped, bytes replaced, sequences truncated)."""
