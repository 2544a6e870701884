"""The package's import structure (docs/development.md, "Architecture"): no import cycle
between the subpackages, and the one-way rules the design rests on. Imports inside functions
count too, so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src" / "gcrdp"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """module → the gcrdp modules (or packages) it imports, anywhere in its body."""
    out: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("gcrdp"):
                    deps.update(f"{target}.{a.name}" for a in node.names)
                    deps.add(target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("gcrdp"))
        out[name] = deps
    return out


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (SRC / parts[1]).is_dir() else None


def _package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for mod, deps in _imports().items():
        src = _subpackage(mod)
        if src is None:
            continue
        for d in deps:
            dst = _subpackage(d)
            if dst is not None and dst != src:
                graph.setdefault(src, set()).add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_reader_sees_lazy_imports():
    # the check must be able to fail: a function-level import is an edge like any other
    tree = {"gcrdp.experiments.saved": _imports()["gcrdp.experiments.saved"]}
    assert any(d.startswith("gcrdp.experiments.report") for d in tree["gcrdp.experiments.saved"])
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_subpackages():
    graph = _package_graph()
    assert {"training", "methods", "data", "cli", "search", "experiments"} <= set(graph) | {d for v in graph.values() for d in v}
    assert _cycle(graph) is None, f"import cycle between subpackages: {' -> '.join(_cycle(graph) or [])}"


def test_one_way_rules():
    graph = _package_graph()
    assert "methods" not in graph.get("training", set()), "training must not import methods (fit records live in training)"
    assert "search" not in graph.get("experiments", set()), "experiments must not import search"
    assert "experiments" not in graph.get("search", set()), (
        "search must not import experiments (encoders come from gcrdp.encoders.factory; a saved run's export is experiments.saved)"
    )
    for low in ("data", "utils", "losses", "model", "evaluation"):
        assert "cli" not in graph.get(low, set()) and "experiments" not in graph.get(low, set()), low


def test_data_core_does_not_import_the_format_readers():
    # data/formats/* depend on the core; the core reaches the readers only through the registry
    for mod, deps in _imports().items():
        if mod.startswith("gcrdp.data.") and not mod.startswith("gcrdp.data.formats") and mod != "gcrdp.data.registry":
            bad = sorted(d for d in deps if d.startswith("gcrdp.data.formats"))
            assert not bad, f"{mod} imports {bad}"
