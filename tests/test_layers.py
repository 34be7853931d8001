"""The packages depend on each other one way: launch → trainer → {mdeq, data_pipelines}.

Read from the source (AST), not from what happens to be imported: module-level and function-level
imports, and module names a process is started with (``-m launch.cli.main`` in an argument list or a
shell line, ``"launch.cli.main"`` handed to ``importlib``) all count, since a subprocess that runs
the CLI is as much a dependency as an import. ``mdeq`` may use torch and the standard library only.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("launch", "trainer", "mdeq", "data_pipelines")
# What each package may use of the others (itself always).
ALLOWED = {
    "launch": {"trainer", "mdeq", "data_pipelines"},
    "trainer": {"mdeq", "data_pipelines"},
    "mdeq": set(),
    "data_pipelines": set(),
}
MDEQ_THIRD_PARTY = {"torch"}
SHELL_MODULE = re.compile(r"(?:^|\s)-m\s+([A-Za-z_][\w.]*)")
DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")


@dataclass(frozen=True)
class Use:
    """One dependency of a module: the module it names, where, and how."""

    module: str
    path: Path
    line: int
    how: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.how} {self.module}"


def is_own_module(name: str) -> bool:
    """``name`` is a module or package of this tree (so ``"trainer.x"`` as a logger name is not)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return False
    base = ROOT.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def resolve_relative(path: Path, node: ast.ImportFrom) -> str:
    package = list(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package[:-1]
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def strings_in(node: ast.AST) -> list[str]:
    """The string constants of a list/tuple/call's direct arguments, in order."""
    if isinstance(node, (ast.List, ast.Tuple)):
        items = node.elts
    elif isinstance(node, ast.Call):
        items = node.args
    else:
        return []
    return [item.value if isinstance(item, ast.Constant) and isinstance(item.value, str) else "" for item in items]


def uses_of(path: Path) -> list[Use]:
    """Every module ``path`` imports, starts with ``-m``, or names as a dotted string of this tree."""
    tree = ast.parse(path.read_text(), filename=str(path))
    prose = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}  # docstrings
    found: list[Use] = []
    for node in ast.walk(tree):
        if id(node) in prose:
            continue
        if isinstance(node, ast.Import):
            found += [Use(alias.name, path, node.lineno, "imports") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = resolve_relative(path, node) if node.level else node.module or ""
            found.append(Use(module, path, node.lineno, "imports"))
        elif isinstance(node, (ast.List, ast.Tuple, ast.Call)):
            args = strings_in(node)
            found += [Use(module, path, node.lineno, "starts `python -m`")
                      for flag, module in zip(args, args[1:]) if flag == "-m" and module]
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found += [Use(module, path, node.lineno, "starts `python -m`")
                      for module in SHELL_MODULE.findall(node.value)]
            if DOTTED.match(node.value) and is_own_module(node.value):
                found.append(Use(node.value, path, node.lineno, "names module"))
        elif isinstance(node, ast.JoinedStr) and node.values:
            head = node.values[0]  # f"launch.cli.{name}": the fixed prefix names a package
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                prefix = head.value.rstrip(".")
                if head.value.endswith(".") and DOTTED.match(prefix + ".x") and is_own_module(prefix):
                    found.append(Use(prefix, path, node.lineno, "names module"))
    return found


def violation(package: str, use: Use) -> str | None:
    top = use.module.split(".")[0]
    if top == package or top == "__future__":
        return None
    if top in PACKAGES:
        return None if top in ALLOWED[package] else f"{use} ({package} must not depend on {top})"
    if package == "mdeq" and top not in sys.stdlib_module_names and top not in MDEQ_THIRD_PARTY:
        return f"{use} (mdeq uses torch and the standard library only)"
    return None


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_package_depends_only_on_the_layers_below(package):
    files = package_files(package)
    assert files, f"no modules found under {ROOT / package}"
    problems = [problem for path in files for use in uses_of(path) if (problem := violation(package, use))]
    assert not problems, "layering broken:\n" + "\n".join(problems)


def test_the_reader_sees_every_kind_of_dependency(tmp_path, monkeypatch):
    """A module that reaches launch in each way the reader knows is reported once per way."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "launch" / "cli").mkdir(parents=True)
    for name in ("launch/__init__.py", "launch/cli/__init__.py", "launch/cli/main.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "trainer").mkdir()
    probe = tmp_path / "trainer" / "probe.py"
    probe.write_text(
        "import subprocess, sys\n"
        "def run():\n"
        "    from launch.cli import main\n"
        "    subprocess.run([sys.executable, '-m', 'launch.cli.main', 'train'])\n"
        "    subprocess.run('exec python -m launch.cli.main train', shell=True)\n"
        "    '''a docstring that mentions `python -m launch.cli.main` is not a dependency'''\n"
        "    name = 'train'\n"
        "    return f'launch.cli.{name}', 'trainer.logger.name'\n")
    problems = [problem for use in uses_of(probe) if (problem := violation("trainer", use))]
    assert sorted(p.split(": ", 1)[1].split(" (")[0] for p in problems) == [
        "imports launch.cli", "names module launch.cli", "names module launch.cli.main",
        "starts `python -m` launch.cli.main", "starts `python -m` launch.cli.main"], problems
