"""The pytest plugin, tested the way users meet it: a sample project run by pytester."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    ignore::ResourceWarning
"""

SAMPLE = """
import smtplib

import aiosmtplib
import pytest

MESSAGE = b"From: a@client.test\\r\\nTo: b@server.test\\r\\nSubject: sample\\r\\n\\r\\nHello.\\r\\n"


def test_smtpd_receives_mail(smtpd):
    assert smtpd.hostname == "127.0.0.1"
    assert smtpd.port > 0
    with smtplib.SMTP(smtpd.hostname, smtpd.port, timeout=5) as client:
        client.sendmail("a@client.test", ["b@server.test"], MESSAGE)
    [message] = smtpd.wait_for_messages(1)
    assert message.message["Subject"] == "sample"
    assert message.rcpt_tos == ("b@server.test",)
    assert message.peer[0] == "127.0.0.1"
    smtpd.clear()
    assert smtpd.messages == []


def test_smtpd_is_fresh_for_each_test(smtpd):
    assert smtpd.messages == []


@pytest.mark.asyncio
async def test_smtpd_with_aiosmtplib(smtpd):
    await aiosmtplib.send(
        MESSAGE, sender="a@client.test", recipients=["c@server.test"],
        hostname=smtpd.hostname, port=smtpd.port, timeout=5,
    )
    messages = await smtpd.await_messages(1)
    assert messages[0].rcpt_tos == ("c@server.test",)


def test_factory_makes_independent_servers(smtpd_factory):
    first = smtpd_factory()
    second = smtpd_factory(hostname="second.test")
    assert first.port != second.port
    with second.smtp() as client:
        client.sendmail("a@client.test", ["b@server.test"], MESSAGE)
    assert len(second.wait_for_messages(1)) == 1
    assert first.messages == []


@pytest.mark.smtpd(tls="implicit", auth="user:secret")
def test_marker_switches_on_implicit_tls_and_auth(smtpd):
    with smtpd.smtp() as client:
        client.sendmail("a@client.test", ["b@server.test"], MESSAGE)
    [message] = smtpd.wait_for_messages(1)
    assert message.tls
    assert message.authenticated
    assert message.auth_data == "user"


@pytest.mark.smtpd(tls="starttls", require_starttls=True)
def test_marker_switches_on_starttls(smtpd):
    with smtplib.SMTP(smtpd.hostname, smtpd.port, timeout=5) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, _ = client.mail("a@client.test")
        assert code == 530
    with smtpd.smtp() as client:
        client.sendmail("a@client.test", ["b@server.test"], MESSAGE)
    assert smtpd.wait_for_messages(1)[0].tls


@pytest.mark.asyncio
async def test_fake_smtpd(fake_smtpd):
    client = fake_smtpd.client()
    assert (await client.ehlo()).code == 250
    await client.mail("a@client.test")
    await client.rcpt("b@server.test")
    assert (await client.data(MESSAGE)).code == 250
    assert fake_smtpd.messages[0].message["Subject"] == "sample"


@pytest.mark.asyncio
@pytest.mark.smtpd(tls="starttls", auth="user:secret", hostname="fake.example")
async def test_fake_smtpd_with_tls_and_auth(fake_smtpd):
    client = fake_smtpd.client()
    assert (await client.ehlo()).lines[0] == "fake.example"
    assert (await client.starttls()).code == 220
    await client.ehlo()
    assert (await client.auth("PLAIN", "user", "secret")).code == 235
"""

OVERRIDE = """
import smtplib

import pytest

from typed_smtpd.testing import FaultInjector


class Refuser:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return "550 5.1.1 Unknown user"


@pytest.fixture
def smtpd_options():
    return {"handler": FaultInjector(["mail~*@slow.test=greylist"], handler=Refuser()),
            "data_size_limit": 1000}


def test_options_fixture_override(smtpd):
    with smtplib.SMTP(smtpd.hostname, smtpd.port, timeout=5) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "1000"
        assert client.mail("x@slow.test")[0] == 451
        assert client.mail("x@slow.test")[0] == 250
        assert client.rcpt("b@server.test")[0] == 550
"""

ENVIRONMENT = """
import smtplib


def test_environment_switches(smtpd):
    assert smtpd.options.tls == "starttls"
    with smtpd.smtp() as client:
        assert client.sock.version() is not None  # TLS is on
        client.sendmail("a@client.test", ["b@server.test"], b"Subject: env\\r\\n\\r\\nx\\r\\n")
    message = smtpd.wait_for_messages(1)[0]
    assert message.tls and message.authenticated
    assert message.host_name == "client.test"
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample project runs as if started by hand, even when this suite runs under xdist."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("TLS", "AUTH", "AUTH_REQUIRED", "REQUIRE_STARTTLS", "HOST", "HOSTNAME", "LMTP"):
        monkeypatch.delenv(f"TYPED_SMTPD_{name}", raising=False)


def run(pytester: pytest.Pytester, *args: str, others: bool = False) -> pytest.RunResult:
    """Run the sample project's tests in a fresh interpreter (benchmarks off: they warn; and
    smtpdfix's plugin, if installed, off unless ``others``)."""
    options = ["-p", "no:cacheprovider", "-p", "no:benchmark"]
    if not others:
        options += ["-p", "no:smtpd"]
    return pytester.runpytest_subprocess(*options, *args)


@pytest.fixture
def sample(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(test_sample=SAMPLE, test_override=OVERRIDE)
    return pytester


def test_every_fixture_works(sample: pytest.Pytester) -> None:
    result = run(sample)
    result.assert_outcomes(passed=9)


def test_fixtures_run_in_parallel_under_xdist(sample: pytest.Pytester) -> None:
    result = run(sample, "-n", "3")
    result.assert_outcomes(passed=9)


def test_environment_variables_configure_the_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_env=ENVIRONMENT)
    monkeypatch.setenv("TYPED_SMTPD_TLS", "starttls")
    monkeypatch.setenv("TYPED_SMTPD_AUTH", "user:secret")
    monkeypatch.setenv("TYPED_SMTPD_AUTH_REQUIRED", "1")
    result = run(pytester)
    result.assert_outcomes(passed=1)


def test_a_bad_environment_value_is_a_usage_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_env="def test_it(smtpd):\n    pass\n")
    monkeypatch.setenv("TYPED_SMTPD_TLS", "sometimes")
    result = run(pytester)
    result.stdout.fnmatch_lines(["*TYPED_SMTPD_TLS: tls must be*"])
    result.assert_outcomes(errors=1)


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_off="def test_it(smtpd):\n    pass\n")
    result = run(pytester, "-p", "no:typed_smtpd")
    result.stdout.fnmatch_lines(["*fixture 'smtpd' not found*"])


def test_the_plugin_imports_nothing_heavy() -> None:
    code = (
        "import sys, typed_smtpd.testing.plugin\n"
        "heavy = {'trustme', 'hypothesis', 'aiosmtplib', 'typed_smtpd.testing.fake'}\n"
        "loaded = heavy & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


FAULTS = """
import smtplib

import pytest

MESSAGE = b"Subject: retry\\r\\n\\r\\nHello.\\r\\n"


def send(host, port):
    with smtplib.SMTP(host, port, timeout=5) as client:
        client.sendmail("a@client.test", ["b@server.test"], MESSAGE)


@pytest.mark.smtpd(faults=["eod/1=451 4.3.0 Try again later"])
def test_marker_faults_on_the_real_server(smtpd):
    with pytest.raises(smtplib.SMTPDataError):
        send(smtpd.hostname, smtpd.port)
    send(smtpd.hostname, smtpd.port)
    assert len(smtpd.wait_for_messages(1)) == 1


@pytest.mark.smtpd(faults=["data/1=drop-after:10"], fault_seed=3)
def test_marker_faults_at_a_server_class_stage(typed_smtpd):
    with pytest.raises(smtplib.SMTPServerDisconnected):
        send(typed_smtpd.hostname, typed_smtpd.port)
    send(typed_smtpd.hostname, typed_smtpd.port)


@pytest.mark.asyncio
@pytest.mark.smtpd(faults=["rcpt~*@gone.test=550 5.1.1 No such user"])
async def test_marker_faults_on_the_fake(fake_smtpd):
    client = fake_smtpd.client()
    await client.ehlo()
    await client.mail("a@client.test")
    assert (await client.rcpt("x@gone.test")).code == 550


@pytest.mark.smtpd(faults=["rcpt=maybe"])
def test_a_bad_rule_is_a_usage_error(smtpd):
    pass
"""

INTERCEPT = """
import asyncio
import smtplib
import ssl

import aiosmtplib
import pytest

MESSAGE = "From: app@example.com\\r\\nSubject: Welcome\\r\\n\\r\\nHello!\\r\\n"


def send_welcome(address):  # the application's own code
    with smtplib.SMTP("smtp.example.com", 587, timeout=5) as client:
        client.starttls(context=ssl.create_default_context())
        client.login("app", "secret")
        client.sendmail("app@example.com", [address], MESSAGE)


@pytest.mark.smtpd(auth="app:secret")
def test_the_application_reaches_the_fake(smtpd_intercept):
    mail = smtpd_intercept("smtp.example.com", 587)
    send_welcome("anne@example.net")
    [message] = mail.messages
    assert message.message["Subject"] == "Welcome"
    assert message.tls and message.authenticated


@pytest.mark.smtpd(faults=["eod/1=451 4.3.0 Later"])
def test_aiosmtplib_and_faults(smtpd_intercept):
    mail = smtpd_intercept("smtp.example.com", 465, ("mx.example.org", 25))
    async def send():
        await aiosmtplib.send(MESSAGE, sender="app@example.com", recipients=["b@example.net"],
                              hostname="smtp.example.com", port=465, use_tls=True)
    with pytest.raises(aiosmtplib.SMTPDataError):
        asyncio.run(send())
    asyncio.run(send())
    assert len(mail.messages) == 1
"""

OTHER_SMTPD = """
import pytest


class OtherPlugin:
    @pytest.fixture
    def smtpd(self):
        return "theirs"


def pytest_addhooks(pluginmanager):
    pluginmanager.register(OtherPlugin(), "smtpdfix")  # as smtpdfix's own conftest names it
"""

SMTPDFIX_STYLE = """
from email.message import EmailMessage
import smtplib


def test_smtpdfix_fixture(smtpd):
    assert smtpd.config.login_username  # smtpdfix's configuration object
    message = EmailMessage()
    message["Subject"] = "Foo"
    message["From"] = "from.addr@example.org"
    message["To"] = "to.addr@example.org"
    message.set_content("foo bar")
    with smtplib.SMTP(smtpd.hostname, smtpd.port) as client:
        client.send_message(message)
    assert smtpd.messages[0]["Subject"] == "Foo"


def test_ours_beside_it(typed_smtpd):
    with typed_smtpd.smtp() as client:
        client.sendmail("a@client.test", ["b@server.test"], b"Subject: ours\\r\\n\\r\\nx\\r\\n")
    assert typed_smtpd.wait_for_messages(1)[0].message["Subject"] == "ours"
"""


def test_the_marker_takes_fault_rules(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_faults=FAULTS)
    result = run(pytester)
    result.stdout.fnmatch_lines(["*typed_smtpd fixture options: unknown action 'maybe'*"])
    result.assert_outcomes(passed=3, errors=1)


def test_the_intercept_fixture(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makepyfile(test_intercept=INTERCEPT)
    run(pytester).assert_outcomes(passed=2)


def test_another_plugins_smtpd_fixture_is_left_alone(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(OTHER_SMTPD)
    pytester.makepyfile(
        test_both="""
def test_both(smtpd, typed_smtpd):
    assert smtpd == "theirs"
    assert typed_smtpd.port > 0
"""
    )
    run(pytester).assert_outcomes(passed=1)


def test_smtpdfix_tests_pass_beside_ours(pytester: pytest.Pytester) -> None:
    pytest.importorskip("smtpdfix")
    pytester.makeini(INI)
    pytester.makepyfile(test_smtpdfix=SMTPDFIX_STYLE)
    run(pytester, others=True).assert_outcomes(passed=2)
