"""Sphinx configuration for the typed_smtpd documentation.

Built by ``nox -s docs``: HTML with warnings as errors, the doctests of every page, and a link
check limited to links inside the documentation (the build never touches the network: no
intersphinx, every http(s) URL is left out of the link check).

Holds configuration and one small directive only; the pages are the ``*.rst`` files beside it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = Path(__file__).resolve().parent.parent
# Let a plain `sphinx-build` from a checkout document the checkout, installed or not.
sys.path.insert(0, str(ROOT))
# The local extension that generates reference tables from the code (docs/_ext).
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

project = "typed_smtpd"
author = "typed_smtpd developers"
copyright = "typed_smtpd developers"
try:
    release = importlib.import_module("typed_smtpd").__version__
except ImportError:  # pragma: no cover - the package itself is broken; autodoc will say how
    release = "unknown"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "generated_reference",
]
# The state diagram is drawn only where Graphviz is installed; without ``dot`` the page shows its
# DOT source and the transition table instead (see docs/_ext/generated_reference.py).
if shutil.which("dot"):
    extensions.append("sphinx.ext.graphviz")

exclude_patterns = ["_build"]
root_doc = "index"
default_role = "code"

html_theme = "furo"
html_title = f"typed_smtpd {release}"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"

# Copy buttons on every code block. The button copies what a reader types, without the prompts
# (">>> ", "... ", "$ ") and without the output lines of a session, so that a doctest pasted into
# an interpreter or a console example into a shell runs as shown; a command continued with a
# backslash is copied whole. A block without prompts (plain code) is copied as it is.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True
copybutton_remove_prompts = True
copybutton_line_continuation_character = "\\"
copybutton_exclude = ".linenos, .gp, .go"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# Doctests: the examples start real servers on loopback; a global socket timeout keeps a broken
# server from hanging the build, and is put back afterwards.
doctest_global_setup = """
import socket as _doctest_socket
_doctest_previous_timeout = _doctest_socket.getdefaulttimeout()
_doctest_socket.setdefaulttimeout(30)
"""
# The example application of the tutorial lives in docs/examples; its doctests import it from there.
doctest_path = [str(Path(__file__).resolve().parent / "examples")]
doctest_global_cleanup = """
_doctest_socket.setdefaulttimeout(_doctest_previous_timeout)
"""

# Only the explicit ``doctest`` blocks of the pages are run here. The ``>>>`` examples inside
# docstrings need their module's namespace, so ``nox -s tests`` runs them with
# ``pytest --doctest-modules`` instead.
doctest_test_doctest_blocks = ""

# No network: only links inside the documentation are checked.
linkcheck_ignore = [r"https?://.*"]

_log = logging.getLogger(__name__)


#: The modules of the API reference (one page each, in docs/reference/). A name re-exported by one of them is documented only in
#: the one that defines it, so that every object has exactly one entry (and short cross-references
#: such as ``Session`` stay unambiguous).
REFERENCE_MODULES = (
    "typed_smtpd",
    "typed_smtpd.smtp",
    "typed_smtpd.options",
    "typed_smtpd.session",
    "typed_smtpd.stream",
    "typed_smtpd.hooks",
    "typed_smtpd.controller",
    "typed_smtpd.monitoring",
    "typed_smtpd.metrics",
    "typed_smtpd.handlers",
    "typed_smtpd.lmtp",
    "typed_smtpd.commands",
    "typed_smtpd.proxy_protocol",
    "typed_smtpd.proto",
    "typed_smtpd.proto.engine",
    "typed_smtpd.proto.auth",
    "typed_smtpd.proto.replies",
    "typed_smtpd.proto.stream",
    "typed_smtpd.proto.monitor",
    "typed_smtpd.proto.clients",
    "typed_smtpd.testing",
    "typed_smtpd.testing.intercept",
    "typed_smtpd.testing.strategies",
)


def _imported_from(module: ModuleType) -> dict[str, str]:
    """Names the module binds with ``from X import Y [as Z]``, mapped to the absolute ``X``."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return {}
    package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            for alias in node.names:
                found[alias.asname or alias.name] = source
    return found


def _own_members(module: ModuleType) -> list[str] | None:
    """The names of ``__all__`` whose home is not another reference module; ``None``: no ``__all__``."""
    names = getattr(module, "__all__", None)
    if names is None:
        return None
    others = set(REFERENCE_MODULES) - {module.__name__}
    imported = _imported_from(module)
    own = []
    for name in names:
        obj = getattr(module, name, None)
        if inspect.isclass(obj) or inspect.isroutine(obj):
            home = getattr(obj, "__module__", module.__name__)
        else:
            home = imported.get(name, module.__name__)
        if home not in others:
            own.append(name)
    return own


class OptionalAutomodule(SphinxDirective):
    """``.. optional-automodule:: name``: ``automodule`` for a module that may not exist yet.

    Options: ``:no-members:`` (the module docstring only) and ``:undoc-members:``.

    A module that does not exist is left out with a note in the build log. A module that exists but
    fails to import is documented anyway, so that autodoc's warning fails the ``-W`` build.
    """

    required_arguments = 1
    option_spec = {"no-members": directives.flag, "undoc-members": directives.flag}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        try:
            missing = importlib.util.find_spec(name) is None
        except ModuleNotFoundError:
            missing = True
        if missing:
            _log.info("optional-automodule: %s does not exist, left out", name)
            return []
        lines = [f".. automodule:: {name}"]
        if "no-members" not in self.options:
            try:
                members = _own_members(importlib.import_module(name))
            except Exception:  # autodoc itself will report the import failure
                members = None
            if members is None:
                lines += ["   :members:"]
            elif members:
                lines += [f"   :members: {', '.join(members)}"]
            lines += ["   :show-inheritance:"]
            if "undoc-members" in self.options:
                lines.append("   :undoc-members:")
        container = nodes.Element()
        container.document = self.state.document
        content = StringList(lines, source=self.get_source_info()[0])
        nested_parse_with_titles(self.state, content, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the local directive."""
    app.add_directive("optional-automodule", OptionalAutomodule)
    return {"parallel_read_safe": True}
