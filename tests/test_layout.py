"""The codebase's shape, as docs/layout.md writes it down: the layers and what each may import
(walked with ast over every import of every module), imports in module headers, every module
named, and functions that stay short."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = ROOT / "docs" / "layout.md"
#: source folders and the package each installs as (pyproject's package-dir)
FOLDERS = {"qtsim": "qtsim", "calibration": "qtsim.calibration", "cli": "qtsim.cli"}
MAX_FUNCTION_LINES = 60


def _section(title: str) -> str:
    text = LAYOUT.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def layers() -> dict[str, int]:
    """Package -> layer number (1 = top) from the table under '## Layers'."""
    out = {}
    for line in _section("Layers").splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if m:
            for pkg in re.findall(r"`([\w.]+)`", m.group(2)):
                out[pkg] = int(m.group(1))
    return out


def lazy_packages() -> set[str]:
    """Third-party packages a function may import: the names before the first full stop of the
    '- lazy:' and '- start-up:' items under '## Where imports go'."""
    items = re.findall(r"^- (?:lazy|start-up): ([^.]*)\.", _section("Where imports go"), re.M)
    return {name for item in items for name in re.findall(r"`(\w+)`", item)}


def _modules() -> dict[str, Path]:
    out = {}
    for folder, pkg in FOLDERS.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            parts = list(f.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = f
    return out


MODULES = _modules()


def _package_of(mod: str) -> str:
    return mod if MODULES[mod].name == "__init__.py" else mod.rpartition(".")[0]


def imports(mod: str):
    """(target module, line, function-local?) for every import of ``mod``; ``from P import X``
    targets P.X when that is a module of ours, else P."""
    tree = ast.parse(MODULES[mod].read_text())
    pkg = _package_of(mod)

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name, child.lineno, local
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                for a in child.names:
                    full = f"{base}.{a.name}"
                    yield (full if full in MODULES else base), child.lineno, local
            yield from visit(child, inner)

    yield from visit(tree, False)


def layer_of(mod: str, table: dict[str, int]) -> str:
    """The longest package of the table containing ``mod``."""
    return max((p for p in table if mod == p or mod.startswith(p + ".")), key=len)


def test_every_module_has_a_layer():
    table = layers()
    assert len(table) >= 10 and table["qtsim.cli"] == 1
    unplaced = [m for m in MODULES
                if layer_of(m, table) not in (m, _package_of(m))]
    assert unplaced == [], ("add their packages to the table in docs/layout.md (## Layers): "
                            f"{unplaced}")


def test_no_import_runs_back_up_a_layer():
    table = layers()
    up = []
    for mod in MODULES:
        here = table[layer_of(mod, table)]
        for target, line, _ in imports(mod):
            if target.split(".")[0] != "qtsim":
                continue
            there = table[layer_of(target, table)]
            if there < here:
                up.append(f"{MODULES[mod].relative_to(ROOT)}:{line} {mod} (layer {here}) imports "
                          f"{target} (layer {there})")
    assert up == [], "imports running back up (docs/layout.md):\n" + "\n".join(up)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), and self-imports."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports(m) if t in MODULES and t != m} for m in MODULES}


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_cycles():
    """The check above can fail: a circle of three and a pair are found, a chain is not."""
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(g) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}}) == []


def test_function_local_imports_only_for_heavy_or_optional_packages():
    allowed = lazy_packages()
    assert {"torch", "transformers", "bitsandbytes", "matplotlib", "ray"} <= allowed
    assert "qtsim" not in allowed and "numpy" not in allowed
    local = [f"{MODULES[m].relative_to(ROOT)}:{line} {target}"
             for m in MODULES for target, line, is_local in imports(m)
             if is_local and target.split(".")[0] not in allowed]
    assert local == [], ("move these imports to the module header (docs/layout.md, "
                         "## Where imports go):\n" + "\n".join(local))


def _module_tree() -> str:
    return re.search(r"```\n(.*?)```", _section("Modules"), re.S).group(1)


def test_layout_names_every_module():
    block = _module_tree()
    missing = []
    for folder in ("qtsim", "calibration"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            if f.name in ("__init__.py", "__main__.py"):
                continue
            if not re.search(rf"(?<![\w.]){re.escape(f.name)}\b", block):
                missing.append(str(f.relative_to(ROOT)))
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            sub = init.parent.relative_to(ROOT / folder)
            if str(sub) != "." and f"  {sub.name}/" not in block:
                missing.append(f"{folder}/{sub}/")
    assert not missing, f"docs/layout.md (## Modules) does not name: {missing}"


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_no_function_is_longer_than_about_60_lines(folder):
    long = []
    for f in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "split these: " + "; ".join(long)
