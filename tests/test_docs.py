"""The README and docs/ as a newcomer meets them: short, every relative link resolves (file and
heading), every repository path and ``qtsim.`` name a page quotes exists, and the two quickstart
commands are the ones CI runs."""

import importlib
import re
from pathlib import Path

import numpy as np
import pytest

from .conftest import invoke_qtsim

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
#: a repository file quoted in a code span (`data/raw/cpu-validation.h5`), not a placeholder
REPO_PATH = re.compile(r"`((?:qtsim|calibration|cli|data|tests|benchmarks|hardware_profiles|docs)"
                       r"/[\w./-]+\.(?:py|md|toml|h5|csv|json|png))`")
#: a module or attribute quoted in a code span (`qtsim.model.stack`, `qtsim.model.paper.b_star`)
DOTTED = re.compile(r"`(qtsim(?:\.\w+)+)`")
INSTALL_AND_TRAP = "pip install . && qtsim trap --gpu l4 --model mistral-7b --precision nf4"
TEST_SUITE = ("pip install torch==2.13.0 && pip install -e '.[calibrate,test,fleet]' "
              "&& python -m pytest")


def _prose(text: str) -> str:
    """The page without its fenced code blocks (command output is not a link)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]|\\", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*)$", _prose(page.read_text()), re.M)}


def _relative_links(page: Path):
    for target in LINK.findall(_prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        yield target


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.is_file():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_quoted_repository_paths_and_names_exist(page):
    prose = _prose(page.read_text())
    missing = [p for p in REPO_PATH.findall(prose) if not (ROOT / p).is_file()]
    missing += [n for n in DOTTED.findall(prose) if not _resolves(n)]
    assert not missing, f"{page.relative_to(ROOT)} quotes what does not exist: {missing}"


def _resolves(dotted: str) -> bool:
    """Whether ``qtsim.a.b.c`` is a module, or an attribute of the longest importable module."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_slug_follows_github():
    assert _slug("`qtsim compare`: every GPU x precision at one batch") == \
        "qtsim-compare-every-gpu-x-precision-at-one-batch"
    assert _slug("Thresholds: B\\* and N\\*") == "thresholds-b-and-n"
    assert _slug("The host part: `qtsim calibrate --host`") == "the-host-part-qtsim-calibrate---host"


def test_readme_is_short_and_keeps_the_two_quickstart_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    commands = [line.strip() for line in readme.splitlines()]
    assert INSTALL_AND_TRAP in commands and TEST_SUITE in commands


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "torch==2.13.0" in ci and "-e '.[calibrate,test,fleet]'" in ci
    assert re.search(r"^python -m pytest\b", ci, re.M)


def test_readme_example_is_what_the_command_prints_today():
    """The answer the README reads aloud is the current code's, `power` lines included: a change
    that moves a figure must regenerate it (run the command, paste its output)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```\n\$ qtsim trap (.*?)\n(.*?)```", readme, re.S)
    args, shown = block.group(1).split(), block.group(2).strip().splitlines()
    r = invoke_qtsim("trap", *args)
    assert r.returncode == 0, r.stderr
    assert any(line.lstrip().startswith("power") for line in shown)
    _assert_same_answer("\n".join(shown), r.stdout.strip())


NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(%?)")


def _assert_same_answer(shown: str, printed: str, rtol: float = 0.08, pct_atol: float = 2.0):
    """Same words, same layout, the same figures to within Monte-Carlo noise: a band's far edge
    (the tail of a few hundred draws) and a share of draws ("14% of draws never cross") move a
    little between machines' floating point, within ``rtol`` and ``pct_atol`` points; a changed
    sentence or a figure moved further still fails."""
    words = [" ".join(NUMBER.sub("#", t).split()) for t in (shown, printed)]
    assert words[0] == words[1], "README example is stale: regenerate it"
    moved = []
    for x, y in zip(NUMBER.finditer(shown), NUMBER.finditer(printed), strict=True):
        a, b = float(x.group().rstrip("%")), float(y.group().rstrip("%"))
        ok = abs(a - b) <= pct_atol if x.group(1) else np.isclose(a, b, rtol=rtol, atol=0)
        if not ok:
            moved.append(f"{x.group()} -> {y.group()}")
    assert not moved, "README example is stale: regenerate it; figures that moved: " + ", ".join(moved)
