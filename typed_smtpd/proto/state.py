"""The SMTP session state: one Enum and one Final transition table.

The state of a connection is what RFC 5321 section 4.1.4 sequences on: whether the client has
greeted, whether a transaction has a sender, recipients, or BDAT chunks in progress. Which
commands are allowed now, which get 503 (and with which text), and the state diagram in the docs
are all derived from :data:`TRANSITIONS`. A refused command never advances the state: it is not
in the table.

The engine reads the state off the session and envelope (``host_name``, ``mail_from``,
``rcpt_tos``), because aiosmtpd-style hooks record those themselves; :func:`state_of` is that
reading, and the property tests check that the engine always lands where the table says.

No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Final

from typed_smtpd.proto.replies import (
    BDAT_AFTER_DATA,
    HELLO_FIRST,
    MAIL_NESTED,
    NEED_MAIL,
    NEED_RCPT,
    Reply,
)

__all__ = [
    "BAD_SEQUENCE",
    "TRANSITIONS",
    "State",
    "Verb",
    "allowed",
    "allowed_verbs",
    "next_state",
    "sequence_error",
    "state_of",
    "to_dot",
]


class State(Enum):
    """Where a connection stands in the dialog."""

    # Members are singletons: identity hashing keeps the transition lookups in C.
    if TYPE_CHECKING:

        def __hash__(self) -> int: ...

    else:
        __hash__ = object.__hash__

    #: Greeting sent; no HELO, EHLO or LHLO accepted yet.
    GREETED = "greeted"
    #: Client identified itself; no transaction open.
    READY = "ready"
    #: MAIL accepted; no recipient yet.
    HAVE_SENDER = "have-sender"
    #: At least one RCPT accepted.
    HAVE_RECIPIENT = "have-recipient"
    #: BDAT chunks received, the LAST one not yet.
    IN_BDAT = "in-bdat"


class Verb(Enum):
    """The commands whose sequencing RFC 5321, 3030, 3207 and 4954 define."""

    # Members are singletons: identity hashing keeps the transition lookups in C.
    if TYPE_CHECKING:

        def __hash__(self) -> int: ...

    else:
        __hash__ = object.__hash__

    HELO = "HELO"
    EHLO = "EHLO"
    LHLO = "LHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    BDAT = "BDAT"
    BDAT_LAST = "BDAT LAST"
    RSET = "RSET"
    NOOP = "NOOP"
    VRFY = "VRFY"
    EXPN = "EXPN"
    HELP = "HELP"
    QUIT = "QUIT"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"


BAD_SEQUENCE: Final = Reply(503, "Error: bad sequence of commands", "5.5.1")

_GREETED = State.GREETED
_IN_TRANSACTION: Final = (State.HAVE_SENDER, State.HAVE_RECIPIENT)
_HELLOS: Final = (Verb.HELO, Verb.EHLO, Verb.LHLO)
_NEUTRAL: Final = (Verb.NOOP, Verb.VRFY, Verb.EXPN, Verb.HELP, Verb.QUIT)


def _build() -> dict[tuple[State, Verb], State]:
    table: dict[tuple[State, Verb], State] = {}
    for state in State:
        # A greeting (re)starts everything; RSET ends a transaction but keeps the greeting.
        for hello in _HELLOS:
            table[state, hello] = State.READY
        table[state, Verb.RSET] = _GREETED if state is _GREETED else State.READY
        for verb in _NEUTRAL:
            if state is not State.IN_BDAT or verb in (Verb.NOOP, Verb.QUIT):
                table[state, verb] = state
    # STARTTLS resets the session: the client must greet again (RFC 3207 section 4.2).
    table[_GREETED, Verb.STARTTLS] = _GREETED
    table[State.READY, Verb.STARTTLS] = _GREETED
    # AUTH is refused inside a transaction (RFC 4954 section 4).
    table[State.READY, Verb.AUTH] = State.READY
    table[State.READY, Verb.MAIL] = State.HAVE_SENDER
    table[State.HAVE_SENDER, Verb.RCPT] = State.HAVE_RECIPIENT
    table[State.HAVE_RECIPIENT, Verb.RCPT] = State.HAVE_RECIPIENT
    # The DATA transition is taken when the content phase is over, whatever its final reply:
    # a refused message ends its transaction too (RFC 5321 section 4.1.1.4).
    table[State.HAVE_RECIPIENT, Verb.DATA] = State.READY
    table[State.HAVE_RECIPIENT, Verb.BDAT] = State.IN_BDAT
    table[State.IN_BDAT, Verb.BDAT] = State.IN_BDAT
    table[State.HAVE_RECIPIENT, Verb.BDAT_LAST] = State.READY
    table[State.IN_BDAT, Verb.BDAT_LAST] = State.READY
    return table


#: (state, command accepted) -> next state. The only statement of SMTP sequencing in the code.
TRANSITIONS: Final[Mapping[tuple[State, Verb], State]] = _build()


def allowed(state: State, verb: Verb) -> bool:
    """Whether ``verb`` may be issued in ``state``."""
    return (state, verb) in TRANSITIONS


def allowed_verbs(state: State) -> frozenset[Verb]:
    """Every verb allowed in ``state``."""
    return frozenset(verb for (st, verb) in TRANSITIONS if st is state)


def next_state(state: State, verb: Verb) -> State:
    """The state after ``verb`` was accepted in ``state`` (``KeyError`` when not allowed)."""
    return TRANSITIONS[state, verb]


def sequence_error(state: State, verb: Verb) -> Reply:
    """The 503 reply for a ``verb`` that :func:`allowed` refuses in ``state``."""
    if state is _GREETED:
        return HELLO_FIRST
    if verb is Verb.MAIL and state in _IN_TRANSACTION:
        return MAIL_NESTED
    if verb is Verb.MAIL and state is State.IN_BDAT:
        return MAIL_NESTED
    if verb is Verb.DATA and state is State.IN_BDAT:
        return BDAT_AFTER_DATA  # RFC 3030 section 3: the two cannot be mixed in one message
    if verb is Verb.RCPT:
        return NEED_MAIL if state is State.READY else BAD_SEQUENCE
    if verb in (Verb.DATA, Verb.BDAT, Verb.BDAT_LAST):
        return NEED_RCPT if state in (State.READY, State.HAVE_SENDER) else BAD_SEQUENCE
    return BAD_SEQUENCE


def state_of(*, greeted: bool, has_sender: bool, recipients: int, in_bdat: bool = False) -> State:
    """Read the state off what the session and envelope record."""
    if not greeted:
        return _GREETED
    if in_bdat:
        return State.IN_BDAT
    if not has_sender:
        return State.READY
    return State.HAVE_RECIPIENT if recipients else State.HAVE_SENDER


def to_dot() -> str:
    """The transition table as a Graphviz digraph (for the documentation)."""
    edges: dict[tuple[State, State], list[str]] = {}
    for (src, verb), dst in TRANSITIONS.items():
        edges.setdefault((src, dst), []).append(verb.value)
    lines = ["digraph smtp {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
    for (src, dst), verbs in sorted(edges.items(), key=lambda kv: (kv[0][0].value, kv[0][1].value)):
        label = "\\n".join(sorted(verbs))
        lines.append(f'  "{src.value}" -> "{dst.value}" [label="{label}"];')
    lines.append("}")
    return "\n".join(lines)
