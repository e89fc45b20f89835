"""Hypothesis strategies that generate SMTP inputs, for typed_smtpd's own tests and for users'.

What lives here: strategies for the RFC 5321 syntax a client sends (domains, address literals,
local parts, mailboxes, reverse paths, ESMTP parameters, whole command lines), RFC 5322-style
message contents and their DATA wire form (:func:`dot_stuff`), whole valid client dialogs, and
hostile byte streams (bare CR/LF, NUL, over-long lines, 8-bit bytes and the public SMTP smuggling
end-of-data variants), plus :func:`splits` / :func:`chunked` to cut any byte string into arbitrary
chunks for chunking-invariance tests.

What must not live here: anything that runs a server, opens a socket or needs an event loop, and
any import of the server modules. Values are generated from the RFC grammars written out below,
never by asking the parser under test what it accepts.

This module needs hypothesis, which comes with the ``testing`` extra:
``pip install typed-smtpd[testing]``.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from email.utils import format_datetime
from functools import cache
from itertools import pairwise
from typing import Final, ParamSpec, TypeVar, cast

try:
    from hypothesis import strategies as st
except ImportError as _missing:  # pragma: no cover - exercised by hiding hypothesis in a test
    raise ImportError(
        "typed_smtpd.testing.strategies needs hypothesis: pip install typed-smtpd[testing]"
    ) from _missing

__all__ = [
    "SMUGGLING_SEQUENCES",
    "address_literals",
    "chunked",
    "command_lines",
    "dialogs",
    "domains",
    "dot_stuff",
    "esmtp_keywords",
    "esmtp_params",
    "esmtp_values",
    "hostile_streams",
    "local_parts",
    "mail_commands",
    "mailboxes",
    "message_bodies",
    "rcpt_commands",
    "reverse_paths",
    "smuggling_sequences",
    "splits",
]

# -- limits ------------------------------------------------------------------------------------

# RFC 1035 section 2.3.4: a DNS label is at most 63 octets (for a U-label: its A-label form).
_MAX_LABEL_OCTETS: Final = 63
# RFC 5321 section 4.5.3.1.2: a domain name is at most 255 octets.
_MAX_DOMAIN_OCTETS: Final = 255
# RFC 5321 section 4.5.3.1.1: a local part is at most 64 octets (RFC 6531: counted in UTF-8).
_MAX_LOCAL_PART_OCTETS: Final = 64
# RFC 5321 section 4.5.3.1.3: a path is at most 256 octets including "<" and ">".
_MAX_MAILBOX_OCTETS: Final = 254
# RFC 5321 section 4.5.3.1.4: a command line is at most 512 octets including CRLF.
_MAX_COMMAND_OCTETS: Final = 510
# RFC 5321 section 4.5.3.1.6 and RFC 5322 section 2.1.1: a text line is at most 1000 octets
# including CRLF (the dot added by transparency is not counted).
_MAX_TEXT_LINE_OCTETS: Final = 998
# splits() also offers the byte-by-byte trickle for inputs up to this size; beyond it a list of
# one-byte chunks costs more than it finds.
_TRICKLE_LIMIT: Final = 2048
# hostile_streams(): the longest run of bytes without a line ending ("a few KiB").
_MAX_HOSTILE_LINE: Final = 4096

# -- character classes, from the ABNF ----------------------------------------------------------

# RFC 5321 section 4.1.2: Let-dig = ALPHA / DIGIT; Ldh-str adds "-".
_LET_DIG: Final = string.ascii_letters + string.digits
_LDH: Final = _LET_DIG + "-"
# RFC 5322 section 3.2.3: atext.
_ATEXT: Final = _LET_DIG + "!#$%&'*+-/=?^_`{|}~"
# RFC 5321 section 4.1.2: qtextSMTP = %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP = "\" %d32-126.
_QTEXT: Final = "".join(chr(c) for c in range(32, 127) if c not in (34, 92))
_QUOTED_PAIR_CHARS: Final = "".join(chr(c) for c in range(32, 127))
# RFC 5321 section 4.1.2: esmtp-value = 1*(%d33-60 / %d62-126).
_ESMTP_VALUE_CHARS: Final = "".join(chr(c) for c in range(33, 127) if c != 61)
# RFC 5322 section 3.2.5 unstructured text without whitespace, used for header and body words.
_VCHAR: Final = "".join(chr(c) for c in range(33, 127))
# RFC 5322 section 3.5 text of body lines (printable ASCII, space and tab; no CR, LF or NUL).
_BODY_TEXT: Final = _VCHAR + " \t"
# Letters that are PVALID in IDNA2008 (RFC 5892), lower case and precomposed (so NFC), one string
# per script so that a generated U-label stays within a script plus ASCII letters and digits.
# No CONTEXTJ/CONTEXTO code points, no right-to-left scripts (no Bidi rule to satisfy), and no
# deviation characters (sharp s, final sigma) whose IDNA2003 mapping differs.
_U_LABEL_SCRIPTS: Final = (
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿœ",
    "αβγδεζηθικλμνξοπρστυφχψω",
    "абвгдежзийклмнопрстуфхцчшщъыьэюяё",
    "中文测试邮件例子日本東京大阪北京上海台湾香港",
    "あいうえおかきくけこさしすせそ",
    "한국어테스트메일서울부산",
)
_U_LABEL_ASCII: Final = string.ascii_lowercase + string.digits

# Keywords of the MAIL and RCPT extensions typed_smtpd knows, so generated parameters hit real
# code paths.
_KNOWN_MAIL_KEYWORDS: Final = ("SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH", "REQUIRETLS")
_KNOWN_RCPT_KEYWORDS: Final = ("NOTIFY", "ORCPT")
# Verbs a random verb must never collide with (RFC 5321, 1985, 2033, 2645, 3030, 3207, 4954).
_KNOWN_VERBS: Final = frozenset(
    [
        "HELO",
        "EHLO",
        "LHLO",
        "MAIL",
        "RCPT",
        "DATA",
        "BDAT",
        "RSET",
        "NOOP",
        "VRFY",
        "EXPN",
        "HELP",
        "QUIT",
        "AUTH",
        "STARTTLS",
        "TURN",
        "ETRN",
        "ATRN",
        "SEND",
        "SOML",
        "SAML",
    ]
)

SMUGGLING_SEQUENCES: Final[tuple[bytes, ...]] = (
    b"\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
)
"""The malformed end-of-data sequences of the public SMTP smuggling scanners (SEC Consult's
inbound and outbound lists and smtpsmug). RFC 5321 section 4.1.1.4: only ``CRLF . CRLF`` ends
DATA, so none of these may ever end a message."""

# -- small helpers -----------------------------------------------------------------------------

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _cached(factory: Callable[_P, _T]) -> Callable[_P, _T]:
    """Build each strategy once per set of arguments.

    Composites call these factories on every draw; a new strategy object would be validated
    again each time, which dominates the cost of generation. Strategies are immutable values,
    so sharing them is safe.
    """
    return cast("Callable[_P, _T]", cache(factory))


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def _fit(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 octets without splitting a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _a_label_octets(label: str) -> int:
    """Length of the label's ASCII (A-label) form (RFC 5890 section 2.3.2.1)."""
    if label.isascii():
        return len(label)
    return len(b"xn--" + label.encode("punycode"))


@_cached
def _non_ascii_chars() -> st.SearchStrategy[str]:
    # RFC 6532 section 3.1 UTF8-non-ascii, kept to letters, digits, punctuation and symbols:
    # no controls, separators or unassigned code points, so a value stays printable.
    return st.characters(min_codepoint=0x80, categories=("L", "N", "P", "S"))


def _xtext(text: str) -> str:
    """Encode ``text`` as RFC 3461 section 4 xtext."""
    return "".join(
        chr(b) if 33 <= b <= 126 and b not in (43, 61) else f"+{b:02X}"
        for b in text.encode("utf-8")
    )


@_cached
def _mixed_texts(alphabet: str, utf8: bool, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Text over ``alphabet``; with ``utf8``, a run of non-ASCII characters somewhere in it.

    Mixing per character with ``one_of`` costs a strategy draw per character; one run per value
    exercises the same parsing paths at a fraction of the cost.
    """
    if not utf8:
        return st.text(alphabet, min_size=min_size, max_size=max_size)
    return _mixed_text(alphabet, min_size, max_size)


@_cached
@st.composite
def _mixed_text(draw: st.DrawFn, alphabet: str, min_size: int, max_size: int) -> str:
    text = draw(st.text(alphabet, max_size=max_size))
    run = draw(st.text(_non_ascii_chars(), max_size=max(0, min(4, max_size - len(text)))))
    if run:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + run + text[at:]
    if len(text) < min_size:
        text += draw(st.text(alphabet, min_size=min_size - len(text), max_size=min_size))
    return text


# -- domains and address literals --------------------------------------------------------------


@_cached
@st.composite
def _ldh_label(draw: st.DrawFn, max_octets: int) -> str:
    # sub-domain = Let-dig [Ldh-str]; Ldh-str = *( ALPHA / DIGIT / "-" ) Let-dig. One draw, then
    # a hyphen at either end is replaced: labels are drawn by the thousand, so each draw counts.
    label = draw(st.text(_LDH, min_size=1, max_size=max_octets))
    if label.startswith("-"):
        label = "a" + label[1:]
    if label.endswith("-"):
        label = label[:-1] + "z"
    return label


@_cached
@st.composite
def _long_ldh_label(draw: st.DrawFn, octets: int) -> str:
    unit = draw(st.text(_LET_DIG, min_size=1, max_size=4))
    return (unit * octets)[:octets]


@_cached
@st.composite
def _u_label(draw: st.DrawFn, max_octets: int) -> str:
    # The shortest U-label's A-label ("xn--" + a few characters) needs about 8 octets.
    if max_octets < 12:
        return draw(_ldh_label(max_octets))
    script = draw(st.sampled_from(_U_LABEL_SCRIPTS))
    alphabet = _U_LABEL_ASCII + script
    before = draw(st.text(alphabet, max_size=10))
    core = draw(st.sampled_from(script))
    after = draw(st.text(alphabet, max_size=10))

    def fits() -> bool:
        label = before + core + after
        return _octets(label) <= max_octets and _a_label_octets(label) <= max_octets

    while not fits():
        if after:
            after = after[:-1]
        elif before:
            before = before[1:]
        else:  # not reached with the scripts above, whose letters all fit alone
            return draw(_ldh_label(max_octets))
    return before + core + after


@_cached
@st.composite
def _domain(draw: st.DrawFn, utf8: bool, max_octets: int) -> str:
    labels: list[str] = []
    used = 0  # UTF-8 octets
    used_ascii = 0  # octets of the all-A-label form
    # One domain in eight is filled with labels as long as the limits allow, so that the 63-,
    # 255- and 254-octet boundaries are reached; small labels almost never add up to them.
    fill = draw(st.integers(0, 7)) == 0
    for _ in range(draw(st.integers(1, 8))):
        separator = 1 if labels else 0
        room = min(max_octets - used, _MAX_DOMAIN_OCTETS - used_ascii) - separator
        room = min(room, _MAX_LABEL_OCTETS)
        if room < 1:
            break
        if fill:
            label = draw(_long_ldh_label(room))
        elif utf8 and draw(st.booleans()):
            label = draw(_u_label(room))
        else:
            label = draw(_ldh_label(room))
        labels.append(label)
        used += separator + _octets(label)
        used_ascii += separator + _a_label_octets(label)
    return ".".join(labels)


@_cached
def domains(*, utf8: bool = False) -> st.SearchStrategy[str]:
    """Domain names as RFC 5321 section 4.1.2 ``Domain`` spells them.

    Dot-separated labels of letters (either case), digits and hyphens, never starting or ending
    with a hyphen; a label is at most 63 octets and the name at most 255 (RFC 5321 section
    4.5.3.1.2). With ``utf8=True`` some labels are U-labels (RFC 6531 section 3.3, RFC 5890):
    lower-case IDNA2008-valid letters of one non-Latin or accented Latin script mixed with ASCII
    letters and digits, each within 63 octets in its A-label form.
    """
    return _domain(utf8, _MAX_DOMAIN_OCTETS)


@_cached
def address_literals() -> st.SearchStrategy[str]:
    """RFC 5321 section 4.1.3 address literals: ``[192.0.2.1]`` and ``[IPv6:2001:db8::1]``.

    IPv6 addresses come in the compressed form (``::`` only for two or more zero groups, as
    ``IPv6-comp`` requires) or the full eight-group form (``IPv6-full``).
    """
    ipv4 = st.ip_addresses(v=4).map(lambda address: f"[{address}]")
    ipv6 = st.tuples(st.ip_addresses(v=6), st.booleans()).map(
        lambda pair: f"[IPv6:{pair[0].exploded if pair[1] else pair[0].compressed}]"
    )
    return st.one_of(ipv4, ipv6)


# -- local parts, mailboxes, paths -------------------------------------------------------------


@_cached
@st.composite
def _dot_string(draw: st.DrawFn, utf8: bool) -> str:
    # Dot-string = Atom *("." Atom); Atom = 1*atext.
    atoms = draw(st.lists(_mixed_texts(_ATEXT, utf8, 1, 16), min_size=1, max_size=5))
    # A first atom's first character is at most 4 octets, so the cut never leaves it empty;
    # a cut right after a dot leaves a trailing dot, which must go.
    return _fit(".".join(atoms), _MAX_LOCAL_PART_OCTETS).rstrip(".")


@_cached
@st.composite
def _quoted_string(draw: st.DrawFn, utf8: bool) -> str:
    # Quoted-string = DQUOTE *QcontentSMTP DQUOTE; QcontentSMTP = qtextSMTP / quoted-pairSMTP.
    # Draw the characters meant, then quote: DQUOTE and backslash must be quoted-pairs, and
    # a few other ASCII characters are quoted although they need not be.
    meant = draw(_mixed_texts(_QUOTED_PAIR_CHARS, utf8, 0, 32))
    optional = draw(st.sets(st.integers(0, max(0, len(meant) - 1)), max_size=4)) if meant else ()
    tokens = [
        "\\" + char if char in '"\\' or (i in optional and char.isascii()) else char
        for i, char in enumerate(meant)
    ]
    budget = _MAX_LOCAL_PART_OCTETS - 2
    content: list[str] = []
    for token in tokens:
        size = _octets(token)
        if size > budget:
            break
        content.append(token)
        budget -= size
    return '"' + "".join(content) + '"'


@_cached
def local_parts(*, utf8: bool = False) -> st.SearchStrategy[str]:
    """RFC 5321 section 4.1.2 ``Local-part``: a dot-string or a quoted string.

    Dot-strings are atoms of RFC 5322 ``atext`` joined by single dots (no leading, trailing or
    doubled dot); quoted strings hold ``qtextSMTP`` and backslash pairs, possibly nothing at all.
    At most 64 octets counted in UTF-8 (RFC 5321 section 4.5.3.1.1). With ``utf8=True`` both
    forms may contain non-ASCII characters (RFC 6531 section 3.3).
    """
    return _local_part(utf8)


@_cached
@st.composite
def _local_part(draw: st.DrawFn, utf8: bool) -> str:
    # A branch drawn by hand: one_of costs more per draw, and mailboxes draw many local parts.
    return draw(_quoted_string(utf8) if draw(st.booleans()) else _dot_string(utf8))


@_cached
@st.composite
def _mailbox(draw: st.DrawFn, utf8: bool, literals: bool) -> str:
    local = draw(_local_part(utf8))
    room = _MAX_MAILBOX_OCTETS - 1 - _octets(local)
    # One mailbox in four (when allowed) has an address literal. The longest literal,
    # "[IPv6:" + 39 + "]", is well within the room a 64-octet local part leaves.
    if literals and draw(st.integers(0, 3)) == 3:
        return f"{local}@{draw(address_literals())}"
    return f"{local}@{draw(_domain(utf8, room))}"


@_cached
def mailboxes(*, utf8: bool = False, literals: bool = True) -> st.SearchStrategy[str]:
    """RFC 5321 section 4.1.2 ``Mailbox``: ``Local-part "@" ( Domain / address-literal )``.

    At most 254 octets (UTF-8), so that ``<`` mailbox ``>`` fits the 256-octet path limit of RFC
    5321 section 4.5.3.1.3. ``literals=False`` leaves out address literals; ``utf8=True`` allows
    RFC 6531 internationalized local parts and domains.
    """
    return _mailbox(utf8, literals)


@_cached
def reverse_paths(*, utf8: bool = False) -> st.SearchStrategy[str]:
    """What goes between the angle brackets of ``MAIL FROM:<...>`` (RFC 5321 section 4.1.2).

    A mailbox from :func:`mailboxes`, or ``""`` for the null reverse path ``<>`` that bounces
    use (RFC 5321 section 4.5.5).
    """
    return st.one_of(st.just(""), mailboxes(utf8=utf8))


# -- ESMTP parameters --------------------------------------------------------------------------


@_cached
def esmtp_keywords() -> st.SearchStrategy[str]:
    """RFC 5321 section 4.1.2 ``esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")``.

    Mixes the keywords of known extensions (SIZE, BODY, SMTPUTF8, DSN's RET/ENVID/NOTIFY/ORCPT,
    AUTH, REQUIRETLS) with random ones in either case.
    """
    random_keyword = st.builds(str.__add__, st.sampled_from(_LET_DIG), st.text(_LDH, max_size=15))
    return st.one_of(st.sampled_from(_KNOWN_MAIL_KEYWORDS + _KNOWN_RCPT_KEYWORDS), random_keyword)


@_cached
def esmtp_values() -> st.SearchStrategy[str]:
    """RFC 5321 section 4.1.2 ``esmtp-value = 1*(%d33-60 / %d62-126)``.

    Printable ASCII without space and ``=``, in mixed case; a value's case is significant (an
    ENVID or AUTH value must reach the handler unchanged).
    """
    return st.text(_ESMTP_VALUE_CHARS, min_size=1, max_size=40)


@_cached
def _random_params() -> st.SearchStrategy[str]:
    return st.tuples(esmtp_keywords(), st.none() | esmtp_values()).map(
        lambda pair: pair[0] if pair[1] is None else f"{pair[0]}={pair[1]}"
    )


@_cached
def _known_mail_params() -> st.SearchStrategy[str]:
    # RFC 1870 SIZE, RFC 6152 / 3030 BODY, RFC 6531 SMTPUTF8, RFC 3461 RET / ENVID,
    # RFC 4954 AUTH, RFC 8689 REQUIRETLS.
    return st.one_of(
        st.integers(0, 10**20 - 1).map(lambda size: f"SIZE={size}"),
        st.sampled_from(("7BIT", "8BITMIME", "BINARYMIME")).map(lambda body: f"BODY={body}"),
        st.just("SMTPUTF8"),
        st.sampled_from(("FULL", "HDRS")).map(lambda ret: f"RET={ret}"),
        st.text(_VCHAR, min_size=1, max_size=20).map(lambda envid: f"ENVID={_xtext(envid)}"),
        st.one_of(st.just("<>"), mailboxes(literals=False).map(_xtext)).map(
            lambda auth: f"AUTH={auth}"
        ),
        st.just("REQUIRETLS"),
    )


@_cached
def _known_rcpt_params() -> st.SearchStrategy[str]:
    # RFC 3461 NOTIFY and ORCPT.
    notify = st.one_of(
        st.just("NEVER"),
        st.lists(
            st.sampled_from(("SUCCESS", "FAILURE", "DELAY")), min_size=1, max_size=3, unique=True
        ).map(",".join),
    )
    return st.one_of(
        notify.map(lambda value: f"NOTIFY={value}"),
        mailboxes(literals=False).map(lambda address: f"ORCPT=rfc822;{_xtext(address)}"),
    )


def _param_keyword(param: str) -> str:
    return param.partition("=")[0].upper()


@_cached
def _param_lists(known: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    # RFC 5321 section 4.1.2 Mail-parameters; no keyword twice.
    return st.lists(st.one_of(known, _random_params()), max_size=5, unique_by=_param_keyword)


@_cached
def esmtp_params() -> st.SearchStrategy[list[str]]:
    """Lists of RFC 5321 ``esmtp-param`` strings, ``"KEY=value"`` or ``"KEY"``.

    Well-formed values of the known MAIL and RCPT extensions mixed with random keywords and
    values; no keyword appears twice in a list (compared case-insensitively).
    """
    return _param_lists(st.one_of(_known_mail_params(), _known_rcpt_params()))


# -- command lines -----------------------------------------------------------------------------


def _join_params(head: str, params: Sequence[str]) -> str:
    """``head`` plus those of ``params``, in order, that fit in a 512-octet command line."""
    line = head
    for param in params:
        candidate = f"{line} {param}"
        if _octets(candidate) <= _MAX_COMMAND_OCTETS:
            line = candidate
    return line


@_cached
@st.composite
def _mail_command(draw: st.DrawFn, utf8: bool, params: st.SearchStrategy[list[str]] | None) -> str:
    path = draw(reverse_paths(utf8=utf8))
    chosen = list(draw(_param_lists(_known_mail_params()) if params is None else params))
    if not path.isascii():
        # First, so that it is never among the parameters left off for length.
        given = [p for p in chosen if _param_keyword(p) == "SMTPUTF8"]
        chosen = [*(given or ["SMTPUTF8"]), *(p for p in chosen if p not in given)]
    return _join_params(f"MAIL FROM:<{path}>", chosen)


@_cached
def mail_commands(
    *, utf8: bool = False, params: st.SearchStrategy[list[str]] | None = None
) -> st.SearchStrategy[str]:
    """Whole ``MAIL FROM:<reverse-path> [params]`` lines, without CRLF (RFC 5321 section 4.1.1.2).

    ``params`` replaces the default parameter lists (known MAIL extensions mixed with random
    ones), for instance ``st.just([])``. With ``utf8=True`` a non-ASCII path always carries
    ``SMTPUTF8`` (RFC 6531 section 3.4). Parameters that would push the line past 512 octets
    with its CRLF (RFC 5321 section 4.5.3.1.4) are left off.
    """
    return _mail_command(utf8, params)


@_cached
@st.composite
def _rcpt_command(draw: st.DrawFn, utf8: bool, params: st.SearchStrategy[list[str]] | None) -> str:
    # RFC 5321 section 4.1.1.3: "<Postmaster>" (any case) is a valid forward path on its own.
    path = draw(st.one_of(mailboxes(utf8=utf8), st.sampled_from(("Postmaster", "postmaster"))))
    chosen = draw(_param_lists(_known_rcpt_params()) if params is None else params)
    return _join_params(f"RCPT TO:<{path}>", chosen)


@_cached
def rcpt_commands(
    *, utf8: bool = False, params: st.SearchStrategy[list[str]] | None = None
) -> st.SearchStrategy[str]:
    """Whole ``RCPT TO:<forward-path> [params]`` lines, without CRLF (RFC 5321 section 4.1.1.3).

    Forward paths are mailboxes or the special ``<Postmaster>``; ``params`` replaces the
    default parameter lists (DSN's NOTIFY/ORCPT mixed with random ones). Lines stay within 512
    octets with their CRLF.
    """
    return _rcpt_command(utf8, params)


@_cached
def _strings(*, utf8: bool) -> st.SearchStrategy[str]:
    # RFC 5321 section 4.1.2: String = Atom / Quoted-string.
    atoms = _mixed_texts(_ATEXT, utf8, 1, 20)
    return st.one_of(atoms, _quoted_string(utf8))


@_cached
def _random_verb_lines() -> st.SearchStrategy[str]:
    verb = st.text(string.ascii_letters, min_size=1, max_size=10).filter(
        lambda word: word.upper() not in _KNOWN_VERBS
    )
    argument = st.text(st.sampled_from(_QUOTED_PAIR_CHARS), max_size=40)
    return st.tuples(verb, argument).map(
        lambda pair: f"{pair[0]} {pair[1]}" if pair[1] else pair[0]
    )


@_cached
@st.composite
def _recased(draw: st.DrawFn, lines: st.SearchStrategy[str]) -> str:
    # RFC 5321 section 2.4: verbs are case-insensitive.
    line = draw(lines)
    verb, space, rest = line.partition(" ")
    verb = draw(st.sampled_from((verb, verb.lower(), verb.title())))
    return verb + space + rest


@_cached
def command_lines(*, utf8: bool = False) -> st.SearchStrategy[str]:
    """Single command lines, without CRLF, within 512 octets (RFC 5321 sections 4.1.1, 4.5.3.1.4).

    HELO, EHLO, MAIL, RCPT, RSET, NOOP, VRFY, QUIT and HELP with plausible arguments, plus random
    verbs that are no known command; verbs come in upper, lower or title case. No line starts a
    DATA, BDAT, AUTH or STARTTLS exchange, so a stream of these lines stays in command mode.
    """
    strings = _strings(utf8=utf8)
    lines = st.one_of(
        domains().map(lambda domain: f"HELO {domain}"),
        st.one_of(domains(), address_literals()).map(lambda domain: f"EHLO {domain}"),
        mail_commands(utf8=utf8),
        rcpt_commands(utf8=utf8),
        st.sampled_from(("RSET", "QUIT", "NOOP", "HELP")),
        strings.map(lambda text: f"NOOP {text}"),
        st.one_of(strings, mailboxes(utf8=utf8)).map(lambda text: f"VRFY {text}"),
        st.one_of(st.sampled_from(sorted(_KNOWN_VERBS)), strings).map(lambda text: f"HELP {text}"),
        _random_verb_lines(),
    )
    return _recased(lines)


# -- message contents and DATA -----------------------------------------------------------------


@_cached
def _words(eight_bit: bool, max_size: int) -> st.SearchStrategy[str]:
    return _mixed_texts(_VCHAR, eight_bit, 1, max_size)


@_cached
@st.composite
def _header_block(draw: st.DrawFn, eight_bit: bool) -> list[str]:
    words = _words(eight_bit, 20)

    def unstructured() -> str:
        # RFC 5322 section 2.2.3: a long value may be folded as CRLF followed by whitespace.
        parts = draw(st.lists(st.tuples(words, st.booleans()), max_size=8))
        return "".join(("\r\n " if fold else " ") + word for word, fold in parts)

    when = draw(
        st.datetimes(
            min_value=datetime(1970, 1, 1),
            max_value=datetime(2099, 12, 31),
            timezones=st.just(timezone.utc),
        )
    )
    message_id = draw(_dot_string(False)) + "@" + draw(domains())
    headers = [
        f"From: <{draw(mailboxes(utf8=eight_bit, literals=False))}>",
        f"To: <{draw(mailboxes(utf8=eight_bit, literals=False))}>",
        f"Subject:{unstructured()}",
        f"Date: {format_datetime(when)}",
        f"Message-ID: <{message_id}>",
    ]
    # RFC 5322 section 3.6.8 optional fields: ftext names.
    names = st.text(_LDH, min_size=1, max_size=20).map(lambda name: f"X-{name}")
    for name in draw(st.lists(names, max_size=4)):
        headers.append(f"{name}:{unstructured()}")
    return "\r\n".join(headers).split("\r\n")


@_cached
@st.composite
def _body_line(draw: st.DrawFn, eight_bit: bool) -> str:
    kind = draw(st.integers(0, 3))
    if kind == 0:  # ordinary text
        line = draw(_mixed_texts(_BODY_TEXT, eight_bit, 0, 80))
    elif kind == 1:  # a line that dot-stuffing must protect (RFC 5321 section 4.5.2)
        line = "." + draw(_mixed_texts(_BODY_TEXT, eight_bit, 0, 20))
    elif kind == 2:  # a lone dot, the line that would end DATA unless stuffed
        line = draw(st.sampled_from((".", "..", "...")))
    else:  # a long line, up to the limit
        unit = draw(_mixed_texts(_BODY_TEXT, eight_bit, 1, 4))
        line = unit * draw(st.integers(0, _MAX_TEXT_LINE_OCTETS))
    return _fit(line, _MAX_TEXT_LINE_OCTETS)


@_cached
@st.composite
def _message(draw: st.DrawFn, headers: bool | None, eight_bit: bool) -> bytes:
    with_headers = draw(st.booleans()) if headers is None else headers
    lines = [*draw(_header_block(eight_bit)), ""] if with_headers else []
    lines += draw(st.lists(_body_line(eight_bit), max_size=30))
    return "".join(line + "\r\n" for line in lines).encode("utf-8")


@_cached
def message_bodies(
    *, headers: bool | None = None, eight_bit: bool = False
) -> st.SearchStrategy[bytes]:
    """Message contents as a client means them, before dot-stuffing (RFC 5322, RFC 5321 4.5.2).

    Every line ends in CRLF and holds at most 998 octets (RFC 5322 section 2.1.1); there is no
    bare CR, bare LF or NUL; many lines start with ``.`` to exercise transparency; a content is
    empty or ends with CRLF. ``headers=True`` always starts with a header block (From, To,
    Subject, Date, Message-ID, some folded ``X-`` fields) and a blank line, ``headers=False``
    never does (so the very first line may start with a dot), ``None`` draws either.
    ``eight_bit=True`` puts UTF-8 text in header values and body lines (RFC 6152, RFC 6532).
    """
    return _message(headers, eight_bit)


def dot_stuff(body: bytes) -> bytes:
    """The DATA wire form of ``body``: dot-stuffed and terminated (RFC 5321 section 4.5.2).

    A ``.`` is added in front of every line that starts with one (a line starts at the beginning
    of ``body`` and after each CRLF; a bare CR or LF starts no line), then the end-of-data
    ``.`` CRLF follows, after a CRLF of its own if ``body`` is not empty and does not end in
    one. Unstuffing the result therefore gives back ``body`` exactly when ``body`` is empty or
    ends with CRLF, and ``body`` + CRLF otherwise. Nothing else is changed: bare CR, bare LF
    and NUL pass through as they are.
    """
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def _wire_lines(data: bytes) -> list[bytes]:
    """Split CRLF-only ``data`` that ends in CRLF into lines that keep their CRLF."""
    return [line + b"\r\n" for line in data.split(b"\r\n")[:-1]]


@_cached
@st.composite
def _dialog(draw: st.DrawFn, utf8: bool, max_transactions: int) -> list[bytes]:
    client = draw(st.one_of(domains(), address_literals()))
    commands: list[str | bytes] = [f"EHLO {client}"]
    for _ in range(draw(st.integers(1, max_transactions))):
        if draw(st.booleans()):
            commands.append("RSET")
        sender = draw(reverse_paths(utf8=utf8))
        recipients = draw(st.lists(mailboxes(utf8=utf8), min_size=1, max_size=5))
        body = draw(message_bodies(eight_bit=utf8))
        params: list[str] = []
        if not (sender.isascii() and all(r.isascii() for r in recipients) and body.isascii()):
            params.append("SMTPUTF8")  # RFC 6531 section 3.4
        if not body.isascii():
            params.append("BODY=8BITMIME")  # RFC 6152 section 3
        if draw(st.booleans()):
            params.append(f"SIZE={len(body)}")  # RFC 1870 section 6
        commands.append(_join_params(f"MAIL FROM:<{sender}>", params))
        commands.extend(f"RCPT TO:<{recipient}>" for recipient in recipients)
        if draw(st.booleans()):
            commands.append("RSET")  # the transaction is abandoned before DATA
            continue
        commands.append("DATA")
        commands.append(dot_stuff(body))
    commands.append("QUIT")
    lines: list[bytes] = []
    for command in commands:
        if isinstance(command, bytes):
            lines.extend(_wire_lines(command))
        else:
            lines.append(command.encode("utf-8") + b"\r\n")
    return lines


@_cached
def dialogs(*, utf8: bool = False, max_transactions: int = 3) -> st.SearchStrategy[list[bytes]]:
    """A whole valid client dialog as a list of CRLF-terminated wire lines.

    ``EHLO``, then 1 to ``max_transactions`` transactions, each maybe preceded by ``RSET``:
    ``MAIL`` (with a correct SIZE sometimes), 1 to 5 ``RCPT``, then either ``DATA``, the
    dot-stuffed lines of a :func:`message_bodies` content and the final ``.`` CRLF line, or an
    ``RSET`` that abandons the transaction; the dialog ends with ``QUIT``. ``b"".join(dialog)``
    is the byte stream a pipelining client sends; after a ``DATA`` line the first
    ``b".\\r\\n"`` line ends the message.

    Without ``utf8`` everything is 7-bit ASCII and a default server accepts every command. With
    ``utf8=True`` addresses and contents may be UTF-8, and MAIL then carries ``SMTPUTF8`` and,
    for 8-bit content, ``BODY=8BITMIME``: the server needs SMTPUTF8 enabled.
    """
    if max_transactions < 1:
        raise ValueError(f"max_transactions must be at least 1, not {max_transactions}")
    return _dialog(utf8, max_transactions)


# -- hostile input -----------------------------------------------------------------------------


@_cached
def smuggling_sequences() -> st.SearchStrategy[bytes]:
    """One of :data:`SMUGGLING_SEQUENCES`, the malformed end-of-data sequences of SMTP smuggling.

    RFC 5321 section 4.1.1.4: only ``CRLF . CRLF`` ends DATA; a server that takes any of these
    for the end of a message lets a client smuggle a second message past a relay.
    """
    return st.sampled_from(SMUGGLING_SEQUENCES)


_STREAM_PREFIXES: Final = (
    b"",
    b"EHLO client.test\r\n",
    b"EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<b@server.test>\r\nDATA\r\n",
)

_PROTOCOL_FRAGMENTS: Final = (
    b"\r",
    b"\n",
    b"\x00",
    b"\r\n",
    b"DATA\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"..\r\n",
    b"BDAT 5\r\n",
    b"BDAT 0 LAST\r\n",
    b"RSET\r\n",
    b"QUIT\r\n",
)

_LINE_ENDINGS: Final = (b"\r\n", b"\n", b"\r", b"", b"\r\r\n", b"\n\r")


@_cached
def _smuggling_payloads() -> st.SearchStrategy[bytes]:
    # The shape of the published attack: end a message with a malformed sequence and pipeline
    # a second transaction after it, then close with a real end-of-data.
    return st.tuples(st.binary(max_size=16), smuggling_sequences()).map(
        lambda pair: (
            pair[0]
            + pair[1]
            + b"MAIL FROM:<smuggled@attacker.test>\r\nRCPT TO:<victim@server.test>\r\nDATA\r\n"
            + b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
        )
    )


@_cached
def _hostile_fragments() -> st.SearchStrategy[bytes]:
    commands = st.tuples(command_lines(), st.sampled_from(_LINE_ENDINGS)).map(
        lambda pair: pair[0].encode("utf-8") + pair[1]
    )
    long_lines = st.tuples(st.binary(min_size=1, max_size=4), st.integers(0, _MAX_HOSTILE_LINE))
    eight_bit = st.lists(st.integers(0x80, 0xFF), min_size=1, max_size=32).map(bytes)
    return st.one_of(
        commands,
        st.sampled_from(_PROTOCOL_FRAGMENTS),
        smuggling_sequences(),
        _smuggling_payloads(),
        long_lines.map(lambda pair: (pair[0] * pair[1])[: pair[1]]),
        eight_bit,
        st.binary(max_size=64),
    )


@_cached
@st.composite
def _hostile_stream(draw: st.DrawFn) -> bytes:
    prefix = draw(st.sampled_from(_STREAM_PREFIXES))
    return prefix + b"".join(draw(st.lists(_hostile_fragments(), max_size=24)))


@_cached
def hostile_streams() -> st.SearchStrategy[bytes]:
    """Client byte streams that break the rules a server must survive.

    Command lines ended by CRLF, bare LF, bare CR or nothing; bare CR, bare LF and NUL on their
    own; lines of up to 4 KiB without a line ending; 8-bit bytes and random binary; the
    :data:`SMUGGLING_SEQUENCES`, alone and inside a full smuggling attempt (a second transaction
    pipelined after a malformed end-of-data); DATA, BDAT and end-of-data fragments. Streams
    may start with EHLO, or with a transaction already in DATA. A server fed any of them must
    reply, keep its limits and never accept a smuggled message.
    """
    return _hostile_stream()


# -- chunking ----------------------------------------------------------------------------------


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[start:end] for start, end in pairwise(bounds)]


def _trickle(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def splits(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """``data`` cut into non-empty chunks at arbitrary boundaries; ``b"".join`` gives it back.

    For chunking-invariance tests: feeding the chunks one by one must give the same result as
    feeding ``data`` at once. No chunk is empty (an empty read means end of stream), so empty
    ``data`` gives ``[]``. Up to 64 cut points are drawn anywhere; inputs up to 2 KiB are also
    offered one byte at a time.
    """
    if not data:
        return st.just(data).map(_trickle)
    if len(data) == 1:
        return st.just(data).map(lambda whole: [whole])
    cut_points = st.lists(
        st.integers(1, len(data) - 1), unique=True, max_size=min(len(data) - 1, 64)
    )
    chunked_at = cut_points.map(lambda cuts: _cut(data, cuts))
    if len(data) <= _TRICKLE_LIMIT:
        return st.one_of(chunked_at, st.just(data).map(_trickle))
    return chunked_at


@st.composite
def _chunked(draw: st.DrawFn, strategy: st.SearchStrategy[bytes]) -> list[bytes]:
    return draw(splits(draw(strategy)))


def chunked(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """Values of ``strategy`` cut by :func:`splits`: ``chunked(hostile_streams())``.

    The original value is ``b"".join(chunks)``.
    """
    return _chunked(strategy)
