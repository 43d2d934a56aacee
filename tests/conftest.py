import os
import subprocess
import sys

import pytest


@pytest.fixture(autouse=True)
def _isolated_profile_dir(tmp_path_factory, monkeypatch):
    """Never read the developer's own ~/.config/qtsim/profiles in tests."""
    monkeypatch.setenv("QTSIM_PROFILE_DIR", str(tmp_path_factory.mktemp("userprofiles")))


def run_qtsim(*args, env=None, check=False):
    """Run the CLI in a fresh interpreter (as a user would), returning CompletedProcess."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "qtsim", *args], capture_output=True, text=True,
                          env=e, check=check, timeout=600)
