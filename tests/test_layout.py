"""The codebase's shape: the README's layout names every module, and functions stay short."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout\n"):]
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def test_readme_layout_names_every_module():
    block = _layout_block()
    missing = []
    for folder in ("qtsim", "calibration"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            if f.name in ("__init__.py", "__main__.py"):
                continue
            if not re.search(rf"(?<![\w.]){re.escape(f.name)}\b", block):
                missing.append(str(f.relative_to(ROOT)))
    for pkg in (ROOT / "qtsim").iterdir():
        if (pkg / "__init__.py").exists() and f"  {pkg.name}/" not in block:
            missing.append(f"qtsim/{pkg.name}/")
    assert not missing, f"README layout does not name: {missing}"


def test_no_function_is_longer_than_about_60_lines():
    long = []
    for folder in ("qtsim", "calibration", "cli"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these: " + "; ".join(long)
