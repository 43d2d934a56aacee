"""Where user profiles live, and how profile and host-part TOML is written: atomically, with
numpy numbers as plain ones, with its checksum."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import tomli_w


def user_profile_dir() -> Path:
    if os.environ.get("QTSIM_PROFILE_DIR"):
        return Path(os.environ["QTSIM_PROFILE_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "qtsim" / "profiles"


def atomic_write_text(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` atomically: a temp file beside it, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files; a profile is meant to be shared (a team reads one file), so
        # give it the mode any new file gets under the user's umask (0644 under the usual 022)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dumps_toml(doc: dict) -> str:
    """TOML text of ``doc`` (tomli-w), numpy numbers and arrays written as plain ones."""
    return tomli_w.dumps(_plain(doc))


def _plain(v):
    """``v`` with numpy scalars as Python numbers and arrays/tuples as lists, for tomli-w."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    return v.item() if isinstance(v, np.generic) else v
