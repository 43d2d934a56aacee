import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
#: a calibrated CPU profile (its own nf4dq, int8_t0, fp16 and bf16 kernel paths)
CPU_PROFILE = str(ROOT / "data" / "profiles" / "cpu-xeon-2c.toml")
SHIPPED_L4 = (ROOT / "hardware_profiles" / "l4.toml").read_text()
#: a trap question without its GPU (add --gpu or --profile)
TRAP = ["trap", "--model", "mistral-7b", "--precision", "nf4", "--draws", "20"]


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


def qtsim_cli(*args, env=None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``qtsim ARGS`` run in-process (:func:`invoke_qtsim`)."""
    r = invoke_qtsim(*args, env=env)
    return r.returncode, r.stdout, r.stderr


def assert_refused(result: CliResult, needle: str) -> None:
    """A refusal as a user sees it: exit status 2 and one line on stderr holding ``needle``."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert needle in result.stderr, result.stderr
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def refused(args, needle: str, env=None) -> None:
    """``qtsim ARGS`` is refused with one line holding ``needle`` (:func:`assert_refused`)."""
    assert_refused(invoke_qtsim(*args, env=env), needle)


def edited_l4(tmp_path, name: str, *subs, text: str = SHIPPED_L4) -> str:
    """A copy of the shipped L4 profile with ``(old, new)`` substitutions (each must apply)."""
    for old, new in subs:
        assert old in text, old
        text = text.replace(old, new, 1)
    f = tmp_path / name
    f.write_text(text)
    return str(f)


def write_config(path: Path, model: str = "mistral-7b", **extra) -> str:
    """A shipped model's config.json written to ``path`` (its qtsim keys dropped), with
    ``extra`` keys set."""
    from qtsim.model.architecture import load_config

    cfg, _, _ = load_config(model)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_qtsim")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**cfg, **extra}))
    return str(path)
