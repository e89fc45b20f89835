"""The optional compiled build (``TYPED_SMTPD_COMPILE=1``, see hatch_build.py).

The nox session ``compiled`` runs the whole suite against a build made that way with
``TYPED_SMTPD_EXPECT_COMPILED=1``: then every module the build compiles must really be the
compiled one, or the run would test the pure-Python source a second time. In every run, the list
of compiled modules must name modules that exist.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compiled_paths() -> list[str]:
    """``COMPILED`` of hatch_build.py, read without importing it (it needs hatchling)."""
    tree = ast.parse((ROOT / "hatch_build.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "COMPILED" for t in targets):
                value = ast.literal_eval(node.value)
                assert isinstance(value, list)
                return [str(path) for path in value]
    raise AssertionError("hatch_build.py has no COMPILED list")


def _module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def test_the_compiled_modules_exist_and_are_no_packages() -> None:
    paths = _compiled_paths()
    assert paths, "nothing would be compiled"
    for path in paths:
        assert (ROOT / path).is_file(), path
        assert not path.endswith("__init__.py"), path


@pytest.mark.skipif(
    os.environ.get("TYPED_SMTPD_EXPECT_COMPILED") != "1",
    reason="runs against a compiled install (nox -s compiled)",
)
@pytest.mark.parametrize("path", _compiled_paths())
def test_the_installed_module_is_the_compiled_one(path: str) -> None:
    module = importlib.import_module(_module_name(path))
    file = module.__file__ or ""
    assert file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), file
