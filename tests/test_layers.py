"""The package layers, checked on the source: core <- data_pipeline, models <- train <- launch; eval uses
core, models and data_pipeline; tools uses those and eval. Every import counts (a lazy import inside a
function too), and no two modules may import each other, directly or around a longer loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"core": "core", "data_pipeline": "data_pipeline", "models": "models", "train": "train",
                "launch": "launch", "eval": "eval", "tools": "tools"}  # fmt: skip
# what each package may import besides itself
ALLOWED = {
    "core": set(),
    "data_pipeline": {"core"},
    "models": {"core"},
    "train": {"core", "data_pipeline", "models"},
    "eval": {"core", "data_pipeline", "models"},
    "tools": {"core", "data_pipeline", "models", "eval"},
    "launch": {"core", "data_pipeline", "models", "train", "eval", "tools"},
}


def module_name(root: Path, package: str, path: Path) -> str:
    parts = ["sivae", package, *path.relative_to(root / PACKAGE_DIRS[package]).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules(root: Path) -> dict[str, Path]:
    return {
        module_name(root, package, path): path
        for package, folder in PACKAGE_DIRS.items()
        for path in sorted((root / folder).rglob("*.py"))
    }


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The sivae modules `path` imports, anywhere in the file; `from pkg import mod` names the module."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name.startswith("sivae.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sivae.") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = source_modules(root)
    known = set(modules)
    return {name: imports_of(path, known) for name, path in modules.items()}


def package_of(module: str) -> str:
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{src} -> {dst} ({package_of(src)} may import only {sorted(ALLOWED[package_of(src)]) or 'itself'})"
        for src, targets in graph.items()
        for dst in targets
        if dst.count(".") >= 1 and package_of(dst) in ALLOWED and package_of(dst) != package_of(src)
        and package_of(dst) not in ALLOWED[package_of(src)]
    )


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a list of modules (first == last), or None. A package's __init__ importing its own
    submodules is not a loop; a submodule importing its package's __init__ that imports it back is."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_upward_import_and_no_cycle_in_the_source():
    graph = import_graph(ROOT)
    assert len(graph) > 60, "the walk found too few modules: are the package folders where PACKAGE_DIRS says?"
    problems = upward_imports(graph)
    assert not problems, "imports against the layers:\n  " + "\n  ".join(problems)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in PACKAGE_DIRS.values():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_an_upward_import_is_reported_with_its_edge(tmp_path):
    root = _tree(tmp_path, {
        "core/config.py": "def f():\n    from sivae.train.trainer import Trainer\n",  # lazy, still counted
        "train/trainer.py": "from sivae.core.config import f\nclass Trainer: ...\n",
        "eval/runner.py": "from sivae.train import trainer\n",
    })  # fmt: skip
    problems = upward_imports(import_graph(root))
    assert len(problems) == 2
    assert problems[0].startswith("sivae.core.config -> sivae.train.trainer")
    assert problems[1].startswith("sivae.eval.runner -> sivae.train.trainer")


def test_a_cycle_is_reported_with_its_modules(tmp_path):
    root = _tree(tmp_path, {
        "models/a.py": "import sivae.models.b\n",
        "models/b.py": "from sivae.models.c import x\n",
        "models/c.py": "from sivae.models import a\nx = 1\n",
        "models/d.py": "from sivae.models.a import y\n",  # into the loop, not part of it
    })  # fmt: skip
    graph = import_graph(root)
    assert upward_imports(graph) == []
    assert find_cycle(graph) == ["sivae.models.a", "sivae.models.b", "sivae.models.c", "sivae.models.a"]


@pytest.mark.parametrize("name", ["train", "models", "eval", "tools", "launch", "data_pipeline", "core"])
def test_the_folders_are_not_importable_under_their_own_names(name):
    """From the repository root (on sys.path here) the folders exist, yet only sivae.<name> imports."""
    import importlib
    import sys

    assert str(ROOT) in sys.path or "" in sys.path or any(Path(p or ".").resolve() == ROOT for p in sys.path)
    sys.modules.pop(name, None)
    with pytest.raises(ModuleNotFoundError, match=f"sivae.{name}"):
        importlib.import_module(name)
    assert importlib.import_module(f"sivae.{name}").__name__ == f"sivae.{name}"
