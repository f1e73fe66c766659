"""The import arrows of docs/architecture.md, checked on the source (not remembered).

Every ``import`` and ``from ... import`` in pyengine/ and coordinator/ (module level, inside
functions and under TYPE_CHECKING alike) is read with ``ast``; an import of a project package
that the importing package may not use fails the test with the file, the line and the rule.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> the project packages it may import (besides itself). The arrows run one way:
# wire <- engine <- service <- node <- ops, and wire, jvm <- client <- ops.
ALLOWED: dict[str, set[str]] = {
    "pyengine.wire": set(),
    "pyengine.jvm": set(),
    "pyengine.engine": {"pyengine.wire"},
    "pyengine.service": {"pyengine.engine", "pyengine.wire"},
    "pyengine.node": {"pyengine.service", "pyengine.engine", "pyengine.wire", "pyengine.jvm"},
    "pyengine.client": {"pyengine.wire", "pyengine.jvm"},
    "pyengine.ops": {"pyengine.node", "pyengine.service", "pyengine.engine", "pyengine.wire",
                     "pyengine.jvm", "pyengine.client", "coordinator"},
    # the coordinator and the auth service verify and issue the same tokens the members check;
    # the migration driver is a client of the partitions: coordinator/partition_link.py sends
    # its steps through the SDK's MatchClient (lazily: no JVM until a migration runs)
    "coordinator": {"pyengine.service", "pyengine.wire", "pyengine.client", "pyengine.jvm"},
}
# the engine also may not import anything that reaches the JVM, the network or the clock
ENGINE_FORBIDDEN_STDLIB = {"jpype", "socket", "http", "urllib", "httpx", "asyncio", "time", "datetime",
                           "random", "secrets", "threading", "subprocess"}


def package_of(module: str) -> str | None:
    """The architecture package a dotted module name belongs to (``None``: not the project's)."""
    for pkg in sorted(ALLOWED, key=len, reverse=True):
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    if module == "pyengine":
        return "pyengine"
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    mod = module_name(path)
    is_pkg = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if package_of(target) == "pyengine":
                # "from pyengine import jvm": each name is a part of the project
                out.extend((node.lineno, f"{target}.{a.name}") for a in node.names)
            else:
                out.append((node.lineno, target))
    return out


def violations(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        owner = package_of(module_name(path))
        if owner is None:
            continue
        for line, target in imports_of(path):
            dest = package_of(target)
            where = f"{path.relative_to(ROOT)}:{line}"
            if owner == "pyengine.engine" and target.split(".")[0] in ENGINE_FORBIDDEN_STDLIB:
                found.append(f"{where}: the engine imports {target} (no JVM, network or clock)")
            if dest is None or dest == owner:
                continue
            if dest == "pyengine":
                found.append(f"{where}: {owner} imports the bare package 'pyengine'; name the part")
            elif dest not in ALLOWED[owner]:
                found.append(f"{where}: {owner} may not import {target} ({dest}); "
                             f"allowed: {', '.join(sorted(ALLOWED[owner])) or 'nothing of the project'}")
    return found


def project_files() -> list[Path]:
    return sorted([*ROOT.joinpath("pyengine").rglob("*.py"), *ROOT.joinpath("coordinator").rglob("*.py")])


def test_every_module_belongs_to_a_package_of_the_architecture():
    loose = [str(p.relative_to(ROOT)) for p in project_files()
             if package_of(module_name(p)) in (None, "pyengine") and p.name != "__init__.py"]
    assert not loose, f"modules outside the packages of docs/architecture.md: {loose}"


def test_imports_follow_the_arrows():
    found = violations(project_files())
    assert not found, "imports against docs/architecture.md:\n" + "\n".join(found)


@pytest.mark.parametrize("owner_file,line,expected", [
    ("pyengine/client/_probe.py", "from pyengine.node.settings import ClusterLayout", "pyengine.client may not import"),
    ("pyengine/engine/_probe.py", "from pyengine.service import matching", "pyengine.engine may not import"),
    ("pyengine/engine/_probe.py", "import time", "the engine imports time"),
    ("pyengine/service/_probe.py", "from ..node import bridge", "pyengine.service may not import"),
    ("pyengine/wire/_probe.py", "from pyengine.engine import Engine", "pyengine.wire may not import"),
    ("coordinator/_probe.py", "from pyengine.ops.system import System", "coordinator may not import"),
])
def test_the_check_catches_a_forbidden_import(tmp_path, monkeypatch, owner_file, line, expected):
    """The checker itself: a forbidden arrow written into a module of a package is reported."""
    fake_root = tmp_path
    target = fake_root / owner_file
    target.parent.mkdir(parents=True)
    target.write_text(line + "\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", fake_root)
    found = violations([target])
    assert any(expected in f for f in found), found
