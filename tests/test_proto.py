"""The sans-IO core, driven directly: framing, parsing, content policy, replies, state table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from typed_smtpd.proto import replies as R
from typed_smtpd.proto.commands import (
    Command,
    ParamError,
    PathError,
    parse_command,
    parse_params,
    parse_path,
    render_command,
    render_params,
    render_path,
    split_path_and_params,
    xtext_decode,
)
from typed_smtpd.proto.data import (
    apply_newline_policy,
    dot_stuff,
    dot_unstuff,
    has_bare_newline_or_nul,
    process_content,
)
from typed_smtpd.proto.framing import NEED_DATA, BadLine, ChunkDone, DataDone, Line, Receiver
from typed_smtpd.proto.limits import Limits
from typed_smtpd.proto.replies import Reply
from typed_smtpd.proto.state import (
    TRANSITIONS,
    State,
    Verb,
    allowed,
    allowed_verbs,
    sequence_error,
    state_of,
    to_dot,
)
from typed_smtpd.testing import strategies as ts

# --- replies --------------------------------------------------------------------------------------


def test_reply_renders_with_and_without_enhanced_code() -> None:
    assert R.OK.render(enhanced=True) == b"250 2.0.0 OK\r\n"
    assert R.OK.render(enhanced=False) == b"250 OK\r\n"
    assert R.ENTER_DATA.render(enhanced=True) == b"354 End data with <CR><LF>.<CR><LF>\r\n"


@pytest.mark.parametrize("text", ["a\r\n250 injected", "a\nb", "nul\x00"])
def test_reply_text_cannot_inject(text: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        Reply(250, text)


@pytest.mark.parametrize(
    ("code", "enhanced"), [(199, None), (600, None), (250, "5.0.0"), (250, "2.x.0")]
)
def test_reply_checks_its_codes(code: int, enhanced: str | None) -> None:
    with pytest.raises(ValueError):
        Reply(code, "x", enhanced)


def test_catalogue_is_consistent() -> None:
    seen = [v for v in vars(R).values() if isinstance(v, Reply)]
    assert len(seen) > 40
    for reply in seen:
        assert reply.enhanced is None or reply.enhanced[0] == str(reply.code)[0]
    assert R.TOO_MANY_RECIPIENTS.code == 452  # RFC 5321 section 4.5.3.1.10


# --- command parsing ------------------------------------------------------------------------------


def test_parse_command() -> None:
    assert parse_command("mail FROM:<a@b.c>") == Command("MAIL", "FROM:<a@b.c>")
    assert parse_command("QUIT") == Command("QUIT", None)
    assert parse_command("NOOP   ") == Command("NOOP", None)


@given(
    verb=st.from_regex(r"[A-Z]{4,8}", fullmatch=True),
    arg=st.none() | st.from_regex(r"[!-~]([ -~]*[!-~])?", fullmatch=True),
)
def test_command_round_trip(verb: str, arg: str | None) -> None:
    command = Command(verb, arg)
    assert parse_command(render_command(command)) == command


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("<a@example.com>", "a@example.com"),
        ("<>", ""),
        ("<@relay.example,@other.example:a@example.com>", "a@example.com"),
        ('<"john doe"@example.com>', '"john doe"@example.com'),
        ("<a@[192.0.2.1]>", "a@[192.0.2.1]"),
        ("<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
    ],
)
def test_parse_path_accepts(path: str, expected: str) -> None:
    assert parse_path(path, allow_null=True) == expected


@pytest.mark.parametrize(
    "path",
    [
        "a@example.com",
        "<a@example.com",
        "<a b@example.com>",
        "<@example.com>",
        "<a@>",
        "<a@-bad.example>",
        "<" + "a" * 250 + "@example.com>",  # over 256 octets
        "<a@b\r\n.c>",
    ],
)
def test_parse_path_refuses(path: str) -> None:
    with pytest.raises(PathError):
        parse_path(path, allow_null=True)


def test_null_path_only_where_allowed() -> None:
    with pytest.raises(PathError):
        parse_path("<>", allow_null=False)
    assert parse_path("<Postmaster>", allow_null=False, allow_postmaster=True) == "Postmaster"


@given(ts.mailboxes())
def test_path_round_trip(mailbox: str) -> None:
    assert parse_path(render_path(mailbox), allow_null=True) == mailbox


@given(ts.mailboxes(utf8=True))
def test_utf8_path_round_trip(mailbox: str) -> None:
    assert parse_path(render_path(mailbox), allow_null=True) == mailbox


def test_params_keep_case_and_allow_hyphens() -> None:
    assert parse_params("BODY=8bitmime X-Trace-Id=AbC MT-PRIORITY=3") == [
        "BODY=8bitmime",
        "X-Trace-Id=AbC",
        "MT-PRIORITY=3",
    ]


@pytest.mark.parametrize("params", ["-X=1", "A==b", "KEY=", "K=v=w x=\x7f"])
def test_params_refused(params: str) -> None:
    with pytest.raises(ParamError):
        parse_params(params)


@given(ts.esmtp_params())
def test_params_round_trip(params: list[str]) -> None:
    assert parse_params(render_params(params)) == params


def test_split_path_and_params_respects_quotes() -> None:
    assert split_path_and_params('<"a b>c"@x.y> SIZE=1') == ('<"a b>c"@x.y>', "SIZE=1")
    assert split_path_and_params("<a@b.c>") == ("<a@b.c>", "")


def test_xtext() -> None:
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    with pytest.raises(ParamError):
        xtext_decode("ab+0D+0Acd")  # no CR/LF smuggled through ENVID or AUTH=


# --- content --------------------------------------------------------------------------------------


@given(ts.message_bodies())
def test_dot_stuffing_round_trip(body: bytes) -> None:
    assert dot_unstuff(dot_stuff(body)) == body


@pytest.mark.parametrize("sequence", ts.SMUGGLING_SEQUENCES)
def test_every_smuggling_sequence_is_a_bare_newline_or_nul(sequence: bytes) -> None:
    content = b"first" + sequence + b"MAIL FROM:<x@y>\r\n"
    assert has_bare_newline_or_nul(content)
    assert apply_newline_policy(content, "reject") is None
    normalized = apply_newline_policy(content, "normalize")
    assert normalized is not None and not has_bare_newline_or_nul(normalized)
    assert apply_newline_policy(content, "accept") == content


def test_process_content() -> None:
    assert (
        process_content(b"..a\r\nb\r\n", policy="reject", line_length_limit=1001) == b".a\r\nb\r\n"
    )
    assert (
        process_content(b"a\nb\r\n", policy="reject", line_length_limit=None)
        is R.DATA_BAD_LINE_ENDING
    )
    assert process_content(b"a\nb\r\n", policy="normalize", line_length_limit=None) == b"a\r\nb\r\n"
    long = b"x" * 1000 + b"\r\n"
    assert process_content(long, policy="reject", line_length_limit=1001) is R.DATA_LINE_TOO_LONG
    ok = b"x" * 999 + b"\r\n"
    assert process_content(ok, policy="reject", line_length_limit=1001) == ok


# --- framing --------------------------------------------------------------------------------------


def feed_all(receiver: Receiver, data: bytes) -> list[object]:
    receiver.receive_data(data)
    events: list[object] = []
    while (event := receiver.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def test_receiver_frames_lines() -> None:
    r = Receiver(max_line=64)
    assert feed_all(r, b"NOOP\r\nQU") == [Line("NOOP", 6)]
    assert feed_all(r, b"IT\r\n") == [Line("QUIT", 6)]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("reject", BadLine(R.BAD_LINE_ENDING)),
        ("normalize", Line("NOOP", 5)),
        ("accept", Line("NOOP", 5)),
    ],
)
def test_bare_lf_command(policy: str, expected: object) -> None:
    r = Receiver(max_line=64, policy=policy)  # type: ignore[arg-type]
    assert feed_all(r, b"NOOP\n") == [expected]


def test_nul_and_bare_cr_and_8bit_in_commands() -> None:
    r = Receiver(max_line=64)
    assert feed_all(r, b"NO\x00OP\r\nNO\rOP\r\nNOOP \xc3\xa9\r\n") == [
        BadLine(R.NUL_IN_COMMAND),
        BadLine(R.BAD_LINE_ENDING),
        BadLine(R.NOT_ASCII),
    ]
    r.utf8 = True
    assert feed_all(r, b"NOOP \xc3\xa9\r\n") == [Line("NOOP \u00e9", 9)]


def test_overlong_line_is_discarded_as_it_arrives() -> None:
    r = Receiver(max_line=16)
    assert feed_all(r, b"x" * 100) == []
    assert r.buffered == 0  # nothing kept
    assert feed_all(r, b"y" * 100) == []
    assert feed_all(r, b"z\r\nNOOP\r\n") == [BadLine(R.COMMAND_TOO_LONG), Line("NOOP", 6)]


def test_data_mode() -> None:
    r = Receiver(max_line=64)
    r.start_data(None)
    assert feed_all(r, b"a\r\n..b\r\n.\r") == []
    assert feed_all(r, b"\nNOOP\r\n") == [DataDone(b"a\r\n..b\r\n", stuffed=True), Line("NOOP", 6)]


def test_empty_message() -> None:
    r = Receiver(max_line=64)
    r.start_data(None)
    assert feed_all(r, b".\r\n") == [DataDone(b"")]


@pytest.mark.parametrize("sequence", ts.SMUGGLING_SEQUENCES)
def test_only_crlf_dot_crlf_ends_data(sequence: bytes) -> None:
    r = Receiver(max_line=64)
    r.start_data(None)
    payload = b"first" + sequence + b"MAIL FROM:<s@x>\r\n"
    assert feed_all(r, payload) == []  # still in the same message
    (done,) = feed_all(r, b"\r\n.\r\n")
    assert isinstance(done, DataDone) and done.raw == payload + b"\r\n"


def test_data_size_cap_discards_and_stays_bounded() -> None:
    r = Receiver(max_line=64)
    r.start_data(100)
    for _ in range(100):
        assert feed_all(r, b"x" * 1000 + b"\r\n") == []
        assert r.buffered < 1100
    assert feed_all(r, b".\r\nNOOP\r\n") == [DataDone(None, R.DATA_TOO_LARGE), Line("NOOP", 6)]


def test_bdat_reads_exact_size() -> None:
    r = Receiver(max_line=64)
    r.start_bdat(5)
    assert feed_all(r, b"ab") == []
    assert feed_all(r, b"c\r\nNOOP\r\n") == [ChunkDone(b"abc\r\n"), Line("NOOP", 6)]
    r.start_bdat(3, discard=True)
    assert feed_all(r, b"xyzQUIT\r\n") == [ChunkDone(None), Line("QUIT", 6)]


def test_sasl_line_limit() -> None:
    r = Receiver(max_line=64)
    r.start_sasl(100)
    assert feed_all(r, b"x" * 80 + b"\r\n") == [Line("x" * 80, 82)]
    r.start_sasl(10)
    assert feed_all(r, b"x" * 80 + b"\r\nNOOP\r\n") == [
        BadLine(R.AUTH_LINE_TOO_LONG),
        Line("NOOP", 6),
    ]


@given(data=st.data(), dialog=ts.dialogs())
def test_framing_is_chunking_invariant(data: st.DataObject, dialog: list[bytes]) -> None:
    """The same bytes split anywhere give the same events (pipelining and trickling)."""
    stream = b"".join(dialog)

    def run(chunks: list[bytes]) -> list[object]:
        r = Receiver(max_line=2048)
        events: list[object] = []
        for chunk in chunks:
            r.receive_data(chunk)
            while (event := r.next_event()) is not NEED_DATA:
                events.append(event)
                if isinstance(event, Line) and event.text.upper() == "DATA":
                    r.start_data(None)
        return events

    assert run(data.draw(ts.splits(stream))) == run([stream])


@given(ts.hostile_streams(), st.sampled_from(["reject", "normalize", "accept"]))
def test_hostile_bytes_never_raise_and_stay_bounded(stream: bytes, policy: str) -> None:
    r = Receiver(max_line=512, policy=policy)  # type: ignore[arg-type]
    for i in range(0, len(stream), 7):
        r.receive_data(stream[i : i + 7])
        while (event := r.next_event()) is not NEED_DATA:
            assert isinstance(event, (Line, BadLine))
            if isinstance(event, Line):
                assert "\r" not in event.text and "\n" not in event.text
        assert r.buffered <= 512 + 7


# --- state table ----------------------------------------------------------------------------------


def test_state_table_basics() -> None:
    assert TRANSITIONS[State.GREETED, Verb.EHLO] is State.READY
    assert TRANSITIONS[State.READY, Verb.MAIL] is State.HAVE_SENDER
    assert not allowed(State.GREETED, Verb.MAIL)
    assert not allowed(State.READY, Verb.DATA)
    assert Verb.QUIT in allowed_verbs(State.IN_BDAT)
    assert Verb.MAIL not in allowed_verbs(State.IN_BDAT)


@given(st.sampled_from(list(State)), st.sampled_from(list(Verb)))
def test_every_refusal_is_a_503(state: State, verb: Verb) -> None:
    if not allowed(state, verb):
        assert sequence_error(state, verb).code == 503


def test_sequence_errors_have_aiosmtpd_texts() -> None:
    assert sequence_error(State.GREETED, Verb.MAIL) is R.HELLO_FIRST
    assert sequence_error(State.HAVE_SENDER, Verb.MAIL) is R.MAIL_NESTED
    assert sequence_error(State.READY, Verb.RCPT) is R.NEED_MAIL
    assert sequence_error(State.HAVE_SENDER, Verb.DATA) is R.NEED_RCPT


@given(st.booleans(), st.booleans(), st.integers(0, 3), st.booleans())
def test_state_of_is_total(greeted: bool, sender: bool, rcpts: int, bdat: bool) -> None:
    state = state_of(greeted=greeted, has_sender=sender, recipients=rcpts, in_bdat=bdat)
    assert isinstance(state, State)
    assert (state is State.GREETED) == (not greeted)


def test_every_state_can_quit_and_reach_ready() -> None:
    for state in State:
        assert allowed(state, Verb.QUIT)
        assert TRANSITIONS[state, Verb.EHLO] is State.READY


def test_dot_diagram() -> None:
    dot = to_dot()
    assert dot.startswith("digraph smtp {") and '"ready" -> "have-sender"' in dot


def test_limits_validate() -> None:
    with pytest.raises(ValueError, match="bare_newline"):
        Limits(bare_newline="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Limits(max_recipients=0)
    assert Limits().command_limit("MAIL", extended=True) > Limits().command_limit(
        "MAIL", extended=False
    )


@given(data=st.data(), body=ts.message_bodies())
def test_data_reader_recovers_any_body_split_anywhere(data: st.DataObject, body: bytes) -> None:
    """Stuffed on the wire, split at arbitrary points, the body comes back byte for byte."""
    wire = ts.dot_stuff(body)
    r = Receiver(max_line=64)
    r.start_data(None)
    events: list[object] = []
    for chunk in data.draw(ts.splits(wire)):
        events += feed_all(r, chunk)
    (done,) = events
    assert isinstance(done, DataDone) and done.raw is not None
    content = process_content(
        done.raw, policy="reject", line_length_limit=None, unstuff=done.stuffed
    )
    assert content == body
