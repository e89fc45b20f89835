"""Reference material generated from the code at build time, so the pages cannot drift from it.

Directives (each takes no argument and no content):

``.. reply-catalogue::``
   Every :class:`~typed_smtpd.proto.replies.Reply` of :mod:`typed_smtpd.proto.replies` (and the
   sequencing reply of :mod:`typed_smtpd.proto.state`) as a table: name, code, enhanced code,
   text, and aiosmtpd's line where it is not the plain form; then the reply factories with an
   example of each.
``.. limits-table::``
   The fields of :class:`~typed_smtpd.proto.limits.Limits` with their defaults, and the ``Final``
   constants of :mod:`typed_smtpd.proto.limits` with the reasoning of their ``#:`` comments.
``.. cli-reference::``
   Usage, description and every option of the real :mod:`argparse` parser of the command line
   (:func:`typed_smtpd.main.build_parser`), group by group, and its epilog.
``.. hook-table::``
   Every hook name the server calls (:data:`typed_smtpd.hooks.HOOK_NAMES`) with the signature of
   its Protocol and what the server does without it.
``.. state-diagram::``
   :func:`typed_smtpd.proto.state.to_dot` drawn by :mod:`sphinx.ext.graphviz` when the ``dot``
   program exists, its DOT source as a literal block otherwise; then the transition table of
   :data:`typed_smtpd.proto.state.TRANSITIONS`, so the build never depends on Graphviz.

It also resolves the few cross-references to labels of the Python documentation that inherited
docstrings carry (there is no intersphinx: the build never touches the network).

Only presentation lives here: every fact comes from the imported modules.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import shutil
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias, cast

from docutils import nodes  # type: ignore[import-untyped]
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment
from sphinx.util.docutils import SphinxDirective

#: Labels of the Python documentation that inherited docstrings refer to, with their pages.
PYTHON_DOC_LABELS = {
    "bufferobjects": "https://docs.python.org/3/c-api/buffer.html",
}

Cell: TypeAlias = "str | nodes.Node"


def _cell(value: Cell) -> nodes.entry:
    entry = nodes.entry()
    if isinstance(value, str):
        entry += nodes.paragraph(text=value)
    elif isinstance(value, (nodes.Text, nodes.Inline)):
        entry += nodes.paragraph("", "", value)
    else:
        entry += value
    return entry


def _literal(text: str) -> nodes.literal:
    return nodes.literal(text=text)


def table(
    headers: Sequence[str], rows: Iterable[Sequence[Cell]], widths: Sequence[int]
) -> nodes.table:
    """A docutils table with a header row; cells are text or nodes."""
    result = nodes.table(classes=["generated-reference"])
    group = nodes.tgroup(cols=len(headers))
    result += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    row = nodes.row()
    for header in headers:
        row += _cell(header)
    head += row
    group += head
    body = nodes.tbody()
    for values in rows:
        row = nodes.row()
        for value in values:
            row += _cell(value)
        body += row
    group += body
    return result


class _Generated(SphinxDirective):
    """Base: no arguments, no content; records the modules it read as dependencies."""

    has_content = False
    modules: tuple[str, ...] = ()

    def note_sources(self) -> None:
        """Rebuild the page when one of the modules it reads changes."""
        import importlib

        for name in self.modules:
            path = inspect.getsourcefile(importlib.import_module(name))
            if path:
                self.env.note_dependency(path)


# --- replies ------------------------------------------------------------------------------------


class ReplyCatalogue(_Generated):
    """``.. reply-catalogue::``: the table of every catalogued reply."""

    modules = ("typed_smtpd.proto.replies", "typed_smtpd.proto.state")

    def run(self) -> list[nodes.Node]:
        from typed_smtpd.proto import replies, state

        self.note_sources()
        found: list[tuple[str, replies.Reply]] = []
        for name in replies.__all__:
            value = getattr(replies, name)
            if isinstance(value, replies.Reply):
                found.append((f"replies.{name}", value))
        found.append(("state.BAD_SEQUENCE", state.BAD_SEQUENCE))
        found.sort(key=lambda item: (item[1].code, item[1].enhanced or "", item[0]))
        rows = [
            (
                _literal(name),
                str(reply.code),
                _literal(reply.enhanced or "-"),
                _literal(reply.text),
                _literal(reply.aiosmtpd or "-"),
            )
            for name, reply in found
        ]
        headers = ["Name", "Code", "Enhanced", "Text", 'With replies="aiosmtpd"']
        catalogue = table(headers, rows, [22, 5, 8, 36, 29])

        examples: list[tuple[str, Callable[..., replies.Reply], tuple[object, ...]]] = [
            ("greeting", replies.greeting, ("mail.example.com", "typed_smtpd 1.0")),
            ("syntax", replies.syntax, ("MAIL FROM:<address>",)),
            ("unrecognized", replies.unrecognized, ("FOO",)),
            ("call_limit_exceeded", replies.call_limit_exceeded, ("NOOP",)),
            ("help_commands", replies.help_commands, (["EHLO", "MAIL", "QUIT"],)),
            ("help_syntax", replies.help_syntax, ("NOOP [ignored]",)),
            ("chunk_received", replies.chunk_received, (4096,)),
            ("recipient_delivered", replies.recipient_delivered, ("bart@example.com",)),
            ("vrfy_unparsable", replies.vrfy_unparsable, ("two words",)),
        ]
        documented = {name for name, _, _ in examples}
        missing = sorted(
            name for name in replies.__all__ if name[0].islower() and name not in documented
        )
        if missing:  # a new reply factory must get an example here, or -W fails the build
            raise self.error(f"reply factories without an example: {', '.join(missing)}")
        factory_rows = []
        for name, factory, args in examples:
            summary = (inspect.getdoc(factory) or "").splitlines()[0]
            factory_rows.append(
                (_literal(f"replies.{name}"), nodes.Text(summary), _literal(factory(*args).line()))
            )
        factories = table(["Factory", "What", "Example"], factory_rows, [22, 40, 38])
        return [catalogue, factories]


# --- limits -------------------------------------------------------------------------------------


def _commented_constants(source: str) -> dict[str, str]:
    """``NAME: Final = ...`` assignments at module level mapped to their ``#:`` comment text."""
    lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        else:
            continue
        comment: list[str] = []
        index = node.lineno - 2
        while index >= 0 and lines[index].lstrip().startswith("#:"):
            comment.insert(0, lines[index].lstrip()[2:].strip())
            index -= 1
        found[name] = " ".join(comment)
    return found


def _field_sources(cls: type) -> dict[str, str]:
    """Dataclass field name -> the source text of its default (such as a constant's name)."""
    tree = ast.parse(inspect.getsource(cls))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            found[node.target.id] = ast.unparse(node.value)
    return found


class LimitsTable(_Generated):
    """``.. limits-table::``: the Limits fields and the constants behind them."""

    modules = ("typed_smtpd.proto.limits", "typed_smtpd.smtp")

    def reason(self, text: str) -> list[nodes.Node]:
        """A ``#:`` comment parsed as inline reStructuredText (it may hold roles and literals)."""
        parsed, messages = self.state.inline_text(text, self.lineno)
        return [nodes.paragraph("", "", *parsed), *messages]

    def run(self) -> list[nodes.Node]:
        from typed_smtpd.proto import limits
        from typed_smtpd.smtp import SMTP

        self.note_sources()
        comments = _commented_constants(inspect.getsource(limits))
        sources = _field_sources(limits.Limits)
        keywords = inspect.signature(SMTP.__init__).parameters
        field_rows = []
        for field in dataclasses.fields(limits.Limits):
            default = field.default
            origin = sources.get(field.name, repr(default))
            shown = repr(default) if origin == repr(default) else f"{origin} = {default!r}"
            reason = comments.get(origin) or comments.get(str(field.type)) or ""
            if field.name in keywords:
                how = f"SMTP({field.name}=...)"
            elif hasattr(SMTP, field.name):
                how = f"SMTP.{field.name} (class attribute)"
            else:
                how = f"Limits({field.name}=...)"
            row: list[Cell] = [_literal(field.name), _literal(shown), _literal(how)]
            row.append(nodes.container("", *self.reason(reason)) if reason else "")
            field_rows.append(row)
        fields_table = table(["Field", "Default", "Set with", "Why"], field_rows, [18, 24, 24, 34])
        constant_rows = []
        for name in limits.__all__:
            if name not in comments or not comments[name]:
                continue
            value = getattr(limits, name)
            constant_rows.append(
                (
                    _literal(name),
                    _literal(repr(value)),
                    nodes.container("", *self.reason(comments[name])),
                )
            )
        constants_table = table(["Constant", "Value", "Reasoning"], constant_rows, [24, 20, 56])
        return [fields_table, constants_table]


# --- command line -------------------------------------------------------------------------------

HELP_WIDTH = 88


def _fixed_width(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    """The parser's own formatter at a fixed width, so the page does not depend on a terminal."""
    formatter_class = cast("type[argparse.HelpFormatter]", parser.formatter_class)
    return formatter_class(prog=parser.prog, width=HELP_WIDTH)


def _heading(title: str) -> str:
    """An argparse group title as a heading: first letter up, the rest as written (``TLS``)."""
    return title[:1].upper() + title[1:]


class CLIReference(_Generated):
    """``.. cli-reference::``: usage and options straight from the parser."""

    modules = ("typed_smtpd.main",)

    def run(self) -> list[nodes.Node]:
        from typed_smtpd.main import build_parser

        self.note_sources()
        parser = build_parser()
        formatter = _fixed_width(parser)
        formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
        usage = formatter.format_help().strip()
        result: list[nodes.Node] = [nodes.literal_block(usage, usage, language="none")]
        if parser.description:
            result.append(
                nodes.literal_block(parser.description, parser.description, language="none")
            )
        for group in parser._action_groups:
            actions = [
                action for action in group._group_actions if action.help != argparse.SUPPRESS
            ]
            if not actions:
                continue
            rows = []
            for action in actions:
                invocation = _fixed_width(parser)._format_action_invocation(action)
                help_text = _fixed_width(parser)._expand_help(action) if action.help else ""
                if (
                    not isinstance(action.default, bool)
                    and action.default not in (None, argparse.SUPPRESS, [], 0)
                    and "default" not in help_text
                    and action.option_strings
                ):
                    help_text += f" (default: {action.default})"
                rows.append((_literal(invocation), nodes.Text(help_text)))
            section = nodes.rubric(text=_heading(group.title or "options"))
            result.append(section)
            result.append(table(["Option", "Meaning"], rows, [30, 70]))
        if parser.epilog:
            result.append(nodes.literal_block(parser.epilog, parser.epilog, language="none"))
        return result


# --- state diagram ------------------------------------------------------------------------------


class StateDiagram(_Generated):
    """``.. hook-table::``
       Every hook name the server calls (:data:`typed_smtpd.hooks.HOOK_NAMES`) with the signature of
       its Protocol and what the server does without it.
    ``.. state-diagram::``: the drawn diagram (or its DOT source) and the transition table."""

    modules = ("typed_smtpd.proto.state",)

    def run(self) -> list[nodes.Node]:
        from typed_smtpd.proto import state

        self.note_sources()
        dot = state.to_dot()
        result: list[nodes.Node] = []
        if shutil.which("dot") and "sphinx.ext.graphviz" in self.config.extensions:
            from sphinx.ext.graphviz import graphviz

            node = graphviz()
            node["code"] = dot
            node["options"] = {"docname": self.env.docname}
            node["alt"] = "SMTP session state diagram"
            node["align"] = "center"
            result.append(node)
        else:
            note = nodes.paragraph(
                text="Graphviz was not installed when this page was built; the diagram's DOT "
                "source follows."
            )
            result += [note, nodes.literal_block(dot, dot, language="none")]
        rows = []
        for state_value in state.State:
            outgoing = sorted(
                (
                    (verb.value, target.value)
                    for (src, verb), target in state.TRANSITIONS.items()
                    if src is state_value
                ),
            )
            for verb, target in outgoing:
                rows.append((_literal(state_value.value), _literal(verb), _literal(target)))
        result.append(table(["In state", "Command accepted", "Next state"], rows, [30, 35, 35]))
        return result


# --- handler hooks ------------------------------------------------------------------------------

#: What the server does when a handler lacks the hook. Kept next to the generated table so that a
#: new hook without an entry fails the build (``-W``) instead of going undocumented.
WHEN_ABSENT = {
    "handle_HELO": "Records the name in session.host_name and answers 250 <server hostname>.",
    "handle_EHLO": "Records the name and sends the planned lines unchanged (hostname, the "
    "extensions, 250 HELP).",
    "handle_MAIL": "Records the sender and its parameters in the envelope; 250 2.1.0 OK.",
    "handle_RCPT": "Appends the recipient and its parameters to the envelope; 250 2.1.5 OK.",
    "handle_DATA": "Accepts and discards the message, checked as it arrives and never held "
    "whole: 250 2.0.0 OK (a legacy process_message method is called instead, with a "
    "DeprecationWarning).",
    "handle_DATA_stream": "The message is delivered whole to handle_DATA, if there is one; "
    "when the handler defines both, the more derived class's hook is called.",
    "handle_DATA_recipient": "LMTP: every recipient gets handle_DATA's reply; without "
    "handle_DATA either, each gets 250 2.1.5 <recipient> OK.",
    "handle_RSET": "Clears the transaction; 250 2.0.0 OK.",
    "handle_NOOP": "250 2.0.0 OK.",
    "handle_QUIT": "221 2.0.0 Bye, then closes the connection.",
    "handle_VRFY": "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery.",
    "handle_AUTH": "Runs the built-in AUTH: the mechanisms (PLAIN, LOGIN, CRAM-MD5 if enabled, "
    "the handler's auth_* methods) and the authenticator.",
    "handle_PROXY": "Every valid PROXY header is accepted; session.proxy_data holds it.",
    "handle_STARTTLS": "Every completed TLS handshake is accepted.",
    "handle_exception": "Logs the error and answers 451 4.3.0; the exception text never "
    "reaches the client.",
}


class HookTable(_Generated):
    """``.. hook-table::``: every hook the server calls, its Protocol, shape and default."""

    modules = ("typed_smtpd.hooks",)

    def run(self) -> list[nodes.Node]:
        from typed_smtpd import hooks

        self.note_sources()
        protocols = {}
        for name in hooks.__all__:
            value = getattr(hooks, name)
            if inspect.isclass(value) and getattr(value, "_is_protocol", False):
                for attribute in vars(value):
                    if attribute in hooks.HOOK_NAMES:
                        protocols[attribute] = value
        rows: list[list[Cell]] = []
        result: list[nodes.Node] = []
        for hook in sorted(
            hooks.HOOK_NAMES,
            key=lambda name: (
                list(WHEN_ABSENT).index(name) if name in WHEN_ABSENT else len(WHEN_ABSENT)
            ),
        ):
            protocol = protocols.get(hook)
            if protocol is None or hook not in WHEN_ABSENT:
                result.append(
                    self.state.document.reporter.warning(
                        f"hook-table: {hook} has no Protocol or no WHEN_ABSENT entry",
                        line=self.lineno,
                    )
                )
                continue
            method = getattr(protocol, hook)
            signature = inspect.signature(method)
            kind = "async def" if inspect.iscoroutinefunction(method) else "def"
            shape = f"{kind} {hook}{signature}".replace("self, ", "").replace("'", "")
            reference, messages = self.state.inline_text(
                f":class:`~typed_smtpd.hooks.{protocol.__name__}`", self.lineno
            )
            rows.append(
                [
                    nodes.container(
                        "",
                        nodes.paragraph("", "", _literal(shape)),
                        nodes.paragraph("", "", *reference),
                    ),
                    WHEN_ABSENT[hook],
                ]
            )
            result.extend(messages)
        result.insert(0, table(["Hook and its Protocol", "Without the hook"], rows, [55, 45]))
        return result


# --- Python documentation labels ----------------------------------------------------------------


def _python_label(
    app: Sphinx, env: BuildEnvironment, node: Any, contnode: nodes.Element
) -> nodes.Node | None:
    """Resolve a known Python-documentation label to an external link."""
    if node.get("refdomain") != "std" or node.get("reftype") != "ref":
        return None
    url = PYTHON_DOC_LABELS.get(node.get("reftarget", ""))
    if url is None:
        return None
    reference = nodes.reference("", "", internal=False, refuri=url)
    reference += contnode
    return reference


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directives and the label resolver."""
    app.add_directive("reply-catalogue", ReplyCatalogue)
    app.add_directive("limits-table", LimitsTable)
    app.add_directive("cli-reference", CLIReference)
    app.add_directive("state-diagram", StateDiagram)
    app.add_directive("hook-table", HookTable)
    app.connect("missing-reference", _python_label)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
