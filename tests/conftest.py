import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
from click.testing import CliRunner


@pytest.fixture(autouse=True)
def _isolated_profile_dir(tmp_path_factory, monkeypatch):
    """Never read the developer's own ~/.config/qtsim/profiles in tests."""
    monkeypatch.setenv("QTSIM_PROFILE_DIR", str(tmp_path_factory.mktemp("userprofiles")))


@dataclass
class CliResult:
    """What a ``qtsim`` run returned, shaped like :class:`subprocess.CompletedProcess`."""

    returncode: int
    stdout: str
    stderr: str


def invoke_qtsim(*args, env=None) -> CliResult:
    """Run ``qtsim ARGS`` in this process under click's :class:`CliRunner` isolation.

    It goes through :func:`qtsim.cli.main.main`, the console script's entry, so errors become
    the same one line and exit status (2 for bad input) as for a user; stdout and stderr are
    captured apart. Use this unless the process boundary is what a test checks.
    """
    from qtsim.cli.main import main

    with CliRunner().isolation(env=env) as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return CliResult(code, out.getvalue().decode(), err.getvalue().decode())


def run_qtsim_process(*args, env=None, check=False, timeout=600):
    """Run ``python -m qtsim ARGS`` in a fresh interpreter, returning CompletedProcess.

    Only for tests whose point is the process boundary (exit status as the shell sees it,
    the module entry point, what a fresh interpreter imports); the others use
    :func:`invoke_qtsim`.
    """
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "qtsim", *map(str, args)], capture_output=True,
                          text=True, env=e, check=check, timeout=timeout)
