"""Errors a user can cause. The CLI prints their message on one line and exits with status 2."""

import difflib
from pathlib import Path


class QtsimError(Exception):
    """Base class: bad input, unknown names, corrupt files, failed fits."""


class UnknownNameError(QtsimError):
    """An unknown GPU, model or precision; the message suggests the nearest names."""


class ProfileError(QtsimError):
    """A hardware profile that is missing, malformed or incomplete."""


class ArchitectureError(QtsimError):
    """A model config that cannot be counted (malformed, or an unsupported family)."""


class FitError(QtsimError):
    """A fit that did not converge or whose parameters are not identifiable."""


class MeasurementError(QtsimError):
    """A measurement that could not be taken or failed its sanity checks."""


def read_user_file(path, error: type[QtsimError] = QtsimError, missing: str = "no such file") -> str:
    """The text of a file a user named, or ``error`` with one line (``"<path>: <missing>"``
    when it is not a file, ``"<path>: cannot read (...)"`` when it cannot be read as text)."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: {missing}")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{p}: cannot read ({e})") from None


def suggest(name: str, choices) -> str:
    """' (did you mean: a, b?)' for the nearest of ``choices``, or '' when none is close."""
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=3, cutoff=0.4)
    if not close:
        return f" (known: {', '.join(sorted(choices))})"
    return f" (did you mean: {', '.join(close)}?)"
