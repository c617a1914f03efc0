"""The source files a stage runs, found statically, and a hash of their code.

The workflow reruns a stage when the code it runs changes, and only then: a rule's
``params`` carry :func:`stage_hash` of its stage (``rules/common.smk``). The files are
the import closure of ``grape.stages.<stage>`` within the ``grape`` package, read
with :mod:`ast` and never imported: every ``import grape.x``, ``from grape.x import y``
(``y`` a module or a name), ``from grape import x``, relative import and literal
``importlib.import_module("grape.x")``, wherever it stands (inside functions too), and
the ``__init__.py`` of every package on the way. The command-line dispatcher
(``grape/cli.py``) is not in a stage's closure, since stage modules do not import it.

The hash reads the parsed code with docstrings removed, so editing a comment, a
docstring or the layout reruns nothing, while editing code reruns the stages that
import it. This module uses the standard library only: Snakemake loads it by file path
without importing ``grape``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "grape"
ROOT = Path(__file__).resolve().parent  # the directory of the grape package


def module_file(name: str, *, root: Path = ROOT) -> Path | None:
    """Source file of module ``name`` of the package at ``root`` (a package's ``__init__.py``); None when there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if len(parts) > 1 and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _with_parents(name: str) -> list[str]:
    """``grape.a.b`` -> ``grape``, ``grape.a``, ``grape.a.b``: importing a module runs every package on the way."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _from_base(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The absolute module a ``from ... import`` reads from (relative imports resolved against ``module``)."""
    if node.level == 0:
        return node.module
    package = module if is_package else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        raise ValueError(f"{module}: relative import beyond the top-level package (level {node.level})")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


@functools.lru_cache(maxsize=1024)
def _parsed(path: Path, module: str, stamp: tuple[int, int]) -> tuple[frozenset[str], str]:
    """The ``grape`` modules that file ``path`` (module ``module``) imports, and the dump of its code
    without docstrings; read once per version of the file (``stamp``: modification time and size)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    imports = imported_modules(tree, module=module, is_package=path.name == "__init__.py")
    return frozenset(imports), ast.dump(_without_docstrings(tree))


def _read(path: Path, *, root: Path) -> tuple[frozenset[str], str]:
    path = path.resolve()
    parts = path.relative_to(root.resolve()).with_suffix("").parts
    module = ".".join((PACKAGE, *(parts[:-1] if parts[-1] == "__init__" else parts)))
    stat = path.stat()
    return _parsed(path, module, (stat.st_mtime_ns, stat.st_size))


def imported_modules(tree: ast.AST, *, module: str, is_package: bool = False) -> set[str]:
    """Names of the ``grape`` modules (or candidates: ``from grape.x import y`` gives ``grape.x.y``) that ``tree`` imports."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(node, module, is_package)
            if base is None:
                continue
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) == "import_module"):
            names.add(node.args[0].value)
    return {parent for name in names if name.split(".")[0] == PACKAGE for parent in _with_parents(name)}


def closure(module: str, *, root: Path = ROOT) -> list[Path]:
    """Source files of ``module`` and of every ``grape`` module it imports, directly or not, sorted.

    Raises ``ValueError`` naming the module when it has no source file under ``root``.
    """
    if module_file(module, root=root) is None:
        raise ValueError(f"{module}: no such module in {root}")
    seen: dict[str, Path] = {}
    todo = _with_parents(module)
    while todo:
        name = todo.pop()
        path = module_file(name, root=root)
        if name in seen or path is None:  # `from grape.x import y` with y a function: no module grape.x.y
            continue
        seen[name] = path
        todo.extend(_read(path, root=root)[0] - seen.keys())
    return sorted(set(seen.values()))


def _without_docstrings(tree: ast.Module) -> ast.Module:
    """``tree`` with the docstring of the module and of each class and function removed (in place)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
    return tree


def code_hash(files: Iterable[Path], *, root: Path = ROOT) -> str:
    """Content hash of the code of ``files`` (paths under ``root``): comments, docstrings and layout left out."""
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in files):
        digest.update(path.resolve().relative_to(root.resolve()).as_posix().encode() + b"\0")
        digest.update(_read(path, root=root)[1].encode() + b"\0")
    return digest.hexdigest()[:20]


def stage_files(stage: str, *, root: Path = ROOT) -> list[Path]:
    """Source files that ``python -m grape <stage>`` runs beside the dispatcher: the closure of ``grape.stages.<stage>``."""
    return closure(f"{PACKAGE}.stages.{stage}", root=root)


def stage_hash(stage: str, *, root: Path = ROOT) -> str:
    """Hash of the code of a stage (:func:`stage_files`): changes when, and only when, that code changes."""
    return code_hash(stage_files(stage, root=root), root=root)
