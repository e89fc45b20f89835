"""Tests of the package as a whole: the layering of ``proto/``, the public surface, PEP 561.

- ``typed_smtpd.proto`` is the sans-IO core: no file in it may import an I/O module, nor anything
  of ``typed_smtpd`` outside ``proto`` (the layers above it all do I/O). This is checked on the
  source (AST), not on ``sys.modules``: importing ``typed_smtpd.proto`` runs the package's
  ``__init__``, and even the standard library's ``logging`` imports ``threading``.
- Every public module has a sorted ``__all__`` naming only things that exist and are documented.
  A module that does not exist yet is skipped, never silently passed; one that exists but fails to
  import is an error.
- The ``py.typed`` marker ships with the package.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.machinery
import importlib.resources
import importlib.util
import inspect
import pkgutil
import re
import sys
import textwrap
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

PACKAGE = "typed_smtpd"

#: Modules whose import means sockets, threads, processes or an event loop.
IO_MODULES = frozenset(
    {
        "asyncio",
        "concurrent",
        "multiprocessing",
        "selectors",
        "socket",
        "ssl",
        "subprocess",
        "threading",
    }
)

#: The public modules; each must have a sorted, complete, documented ``__all__`` once it exists.
PUBLIC_MODULES = (
    "typed_smtpd",
    "typed_smtpd.controller",
    "typed_smtpd.commands",
    "typed_smtpd.handlers",
    "typed_smtpd.hooks",
    "typed_smtpd.lmtp",
    "typed_smtpd.logs",
    "typed_smtpd.options",
    "typed_smtpd.proto",
    "typed_smtpd.proxy_protocol",
    "typed_smtpd.session",
    "typed_smtpd.smtp",
    "typed_smtpd.testing",
)


def _package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None
    assert spec.submodule_search_locations is not None
    return Path(next(iter(spec.submodule_search_locations)))


PROTO_DIR = _package_dir() / "proto"
PROTO_FILES = sorted(PROTO_DIR.rglob("*.py")) if PROTO_DIR.is_dir() else []


def _proto_submodules() -> list[str]:
    if not PROTO_DIR.is_dir():
        return []
    return sorted(
        f"{PACKAGE}.proto.{info.name}"
        for info in pkgutil.iter_modules([str(PROTO_DIR)])
        if not info.name.startswith("_")
    )


# --- (a) proto/ is sans-IO ----------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node that runs at import or call time: ``if TYPE_CHECKING:`` bodies are left out."""
    yield node
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: list[ast.AST] = [node.test, *node.orelse]
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _runtime_nodes(child)


def _module_name_of(path: Path) -> str:
    relative = path.relative_to(_package_dir().parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(source: str, module_name: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """``(line, absolute module name)`` of every runtime import in ``source``, dynamic ones too."""
    package = module_name if is_package else module_name.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(package, node.level, node.module)
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in {"import_module", "__import__"} and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    yield node.lineno, first.value


def _resolve(package: str, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written inside ``package``."""
    if not level:
        return module or ""
    base = package.split(".")
    if level > 1:
        base = base[: -(level - 1)]
    return ".".join([*base, module] if module else base)


def _imports_of(path: Path) -> list[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    return list(_imported_modules(source, _module_name_of(path), path.name == "__init__.py"))


@pytest.mark.parametrize("path", PROTO_FILES, ids=lambda p: p.name)
def test_proto_imports_no_io_module(path: Path) -> None:
    offending = [
        f"line {line}: {module}"
        for line, module in _imports_of(path)
        if module.split(".")[0] in IO_MODULES
    ]
    assert offending == [], f"{path.name} imports I/O modules"


@pytest.mark.parametrize("path", PROTO_FILES, ids=lambda p: p.name)
def test_proto_reaches_no_upper_layer(path: Path) -> None:
    offending = [
        f"line {line}: {module}"
        for line, module in _imports_of(path)
        if module.split(".")[0] == PACKAGE and not module.startswith(f"{PACKAGE}.proto")
    ]
    assert offending == [], f"{path.name} imports from a layer above proto"


def test_import_scanner_sees_every_kind_of_import() -> None:
    # The scanner itself, on source with each form it must catch and the one it must let through.
    source = textwrap.dedent(
        """
        import asyncio
        import os.path
        from socket import AF_INET
        from .. import smtp
        from . import replies
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import ssl
        def late():
            import threading
            importlib.import_module("selectors")
        """
    )
    found = {module for _, module in _imported_modules(source, f"{PACKAGE}.proto.probe", False)}
    assert {"asyncio", "socket", "threading", "selectors", f"{PACKAGE}.smtp"} <= found
    assert f"{PACKAGE}.proto.replies" in found
    assert "ssl" not in found


# --- (b) the public surface ---------------------------------------------------------------------


def _natural_key(name: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _isort_style_key(name: str) -> tuple[int, list[int | str]]:
    """ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest; natural within each.

    The category ignores leading underscores and a one-letter name is CamelCase, as in ruff.
    """
    trimmed = name.lstrip("_")
    if len(trimmed) > 1 and trimmed.isupper():
        category = 0
    elif trimmed[:1].isupper():
        category = 1
    else:
        category = 2
    return category, _natural_key(name)


def _assert_sorted(names: list[str], module: str) -> None:
    assert len(names) == len(set(names)), f"{module}.__all__ has duplicates"
    accepted = (sorted(names), sorted(names, key=_isort_style_key))
    assert names in accepted, f"{module}.__all__ is not sorted: expected {accepted[1]}"


def _import_public(name: str) -> ModuleType:
    """Import a public module, skipping only when the module itself does not exist yet."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        pytest.skip(f"{name} does not exist yet")
    return importlib.import_module(name)


def _all_of(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    assert names is not None, f"{module.__name__} has no __all__"
    assert isinstance(names, list | tuple), f"{module.__name__}.__all__ is not a list"
    assert all(isinstance(name, str) for name in names)
    return list(names)


@functools.cache
def _module_source(module_name: str) -> tuple[ast.Module, list[str]] | None:
    """The parsed source of a module and its lines; ``None`` when it is not Python source."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    text = Path(spec.origin).read_text(encoding="utf-8")
    return ast.parse(text), text.splitlines()


def _module_level_statements(body: list[ast.stmt]) -> Iterator[tuple[ast.stmt, list[ast.stmt]]]:
    """Each module-level statement with the block it sits in (descending into if/try)."""
    for statement in body:
        yield statement, body
        if isinstance(statement, ast.If):
            yield from _module_level_statements(statement.body)
            yield from _module_level_statements(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                yield from _module_level_statements(block)
            for handler in statement.handlers:
                yield from _module_level_statements(handler.body)


def _assigned_names(statement: ast.stmt) -> set[str]:
    targets: list[ast.expr] = []
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, ast.AnnAssign):
        targets = [statement.target]
    elif hasattr(ast, "TypeAlias") and isinstance(statement, ast.TypeAlias):  # Python 3.12+
        targets = [statement.name]
    return {target.id for target in targets if isinstance(target, ast.Name)}


def _has_doc_comment(lines: list[str], statement: ast.stmt) -> bool:
    """Sphinx's attribute documentation: ``#:`` lines just above, or a trailing ``#:``."""
    if "#:" in lines[statement.lineno - 1]:
        return True
    index = statement.lineno - 2
    return index >= 0 and lines[index].strip().startswith("#:")


def _data_is_documented(module_name: str, name: str, seen: frozenset[str] = frozenset()) -> bool:
    """Whether ``name``, bound in ``module_name`` by assignment or import, is documented there."""
    if module_name in seen:
        return False
    parsed = _module_source(module_name)
    if parsed is None:
        return True  # not Python source we can read (an extension module): nothing to check
    tree, lines = parsed
    spec = importlib.util.find_spec(module_name)
    assert spec is not None
    package = module_name if spec.submodule_search_locations else module_name.rpartition(".")[0]
    for statement, block in _module_level_statements(tree.body):
        if name in _assigned_names(statement):
            position = block.index(statement)
            following = block[position + 1] if position + 1 < len(block) else None
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                return True
            if _has_doc_comment(lines, statement):
                return True
        elif isinstance(statement, ast.ImportFrom):
            for alias in statement.names:
                if (alias.asname or alias.name) != name:
                    continue
                source = _resolve(package, statement.level, statement.module)
                if not source.startswith(PACKAGE):
                    return True  # a re-export from elsewhere carries its own documentation
                return _data_is_documented(source, alias.name, seen | {module_name})
    return False


def _class_or_function_docstring(obj: object) -> str | None:
    """The docstring written in the source: not one generated by dataclass, NamedTuple or Enum."""
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return inspect.getdoc(obj)
    try:
        source = textwrap.dedent(inspect.getsource(obj))  # type: ignore[arg-type]
    except (OSError, TypeError):
        return inspect.getdoc(obj)
    definition = ast.parse(source).body[0]
    assert isinstance(definition, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    return ast.get_docstring(definition)


def _compiled(obj: object) -> bool:
    """Whether ``obj`` was defined in a module compiled with mypyc (``TYPED_SMTPD_COMPILE=1``),
    which keeps no docstrings of classes and functions: the pure-Python runs check those."""
    module = obj if inspect.ismodule(obj) else sys.modules.get(getattr(obj, "__module__", ""))
    file = getattr(module, "__file__", None) or ""
    return file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def _undocumented(module: ModuleType) -> list[str]:
    missing = []
    for name in _all_of(module):
        obj = getattr(module, name)
        if _compiled(obj if inspect.isclass(obj) or inspect.isroutine(obj) else type(obj)):
            continue
        if inspect.ismodule(obj):
            documented = bool(obj.__doc__ and obj.__doc__.strip())
        elif typing.get_origin(obj) is not None:
            # A type alias such as Callable[[str], bool]: documented where it is assigned
            # (Python 3.10's inspect.isclass() says True for some of them).
            documented = _data_is_documented(module.__name__, name)
        elif inspect.isclass(obj) or inspect.isroutine(obj):
            documented = bool(_class_or_function_docstring(obj))
        elif type(obj).__module__.startswith(f"{PACKAGE}."):
            # A value of one of the package's own classes (a catalogue entry such as a Reply, an
            # enum member) is described by its class and its repr; its name needs no doc comment.
            documented = bool(_class_or_function_docstring(type(obj)))
        else:
            documented = _data_is_documented(module.__name__, name)
        if not documented:
            missing.append(name)
    return missing


def test_top_level_all_is_sorted_and_exists() -> None:
    package = importlib.import_module(PACKAGE)
    names = _all_of(package)
    _assert_sorted(names, PACKAGE)
    missing = [name for name in names if not hasattr(package, name)]
    assert missing == [], f"{PACKAGE}.__all__ names missing attributes"


@pytest.mark.parametrize("module_name", [*PUBLIC_MODULES, *_proto_submodules()])
def test_public_module_all(module_name: str) -> None:
    module = _import_public(module_name)
    if not _compiled(module):  # (mypyc keeps no module docstring either)
        assert (module.__doc__ or "").strip(), f"{module_name} has no module docstring"
    names = _all_of(module)
    _assert_sorted(names, module_name)
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == [], f"{module_name}.__all__ names missing attributes"
    assert _undocumented(module) == [], f"{module_name}: public names without a docstring"


def test_docstring_check_rejects_what_is_undocumented(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dataclass without a docstring gets one generated from its signature: that is no doc.
    (tmp_path / "docprobe.py").write_text(
        textwrap.dedent(
            """
            \"""A module to test the docstring check on.\"""
            from collections.abc import Callable
            from dataclasses import dataclass
            from typing import Final

            __all__ = [
                "DOCUMENTED", "TRAILING", "UNDOCUMENTED",
                "Alias", "Bare", "BareAlias", "Good", "bare", "good",
            ]

            #: A documented alias.
            Alias = Callable[[int], int]
            BareAlias = Callable[[int], int]

            #: A constant with a doc comment.
            DOCUMENTED: Final = 1
            TRAILING: Final = 2  #: Documented on its own line.
            UNDOCUMENTED: Final = 3

            @dataclass
            class Bare:
                x: int = 0

            @dataclass
            class Good:
                \"""Documented.\"""

            def bare() -> None:
                pass

            def good() -> None:
                \"""Documented.\"""
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "docprobe", raising=False)
    module = importlib.import_module("docprobe")
    try:
        assert _undocumented(module) == ["UNDOCUMENTED", "Bare", "BareAlias", "bare"]
    finally:
        sys.modules.pop("docprobe", None)


def test_sort_order_is_ruffs() -> None:
    # The order `ruff check --select RUF022 --fix` gives these names.
    names = ["A1", "A_", "OK2", "OK10", "PROTO", "_FOO", "PROXYv2_SIGNATURE", "ProxyData", "T"]
    names += ["Xy", "_Missing", "_Zeta", "_a", "aaa", "parse"]
    assert sorted(reversed(names), key=_isort_style_key) == names


# --- (c) PEP 561 ---------------------------------------------------------------------------------


def test_py_typed_marker_ships() -> None:
    marker = importlib.resources.files(PACKAGE).joinpath("py.typed")
    assert marker.is_file()
