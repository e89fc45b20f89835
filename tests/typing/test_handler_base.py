"""Both type checkers catch hook mistakes in a ``Handler`` subclass: each case is a small module,
checked by ``mypy --strict`` and by pyright, and each checker must report the expected error on
the expected line (and nothing in the correct handler).

The checkers run as subprocesses (a few seconds); the tests skip where mypy or pyright is not
installed, and the nox ``typecheck`` session, which has both, runs them.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None or importlib.util.find_spec("pyright") is None,
    reason="needs mypy and pyright",
)

HEADER: Final = """\
from __future__ import annotations

from typing_extensions import override

from typed_smtpd.hooks import Handler
from typed_smtpd.session import Envelope, Session
from typed_smtpd.smtp import SMTP

"""


@dataclass(frozen=True)
class Case:
    """One mistake: the class body after the header, the line (1-based, in the whole module)
    where both checkers must flag it, mypy's error code and pyright's rule."""

    body: str
    line: int
    mypy: str | None
    pyright: str | None


FIRST: Final = HEADER.count("\n") + 1  # the line of the class statement

CASES: Final = {
    "sync_hook": Case(
        """class H(Handler):
    @override
    def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"
""",
        FIRST + 2,
        "override",
        "reportIncompatibleMethodOverride",
    ),
    "missing_parameter": Case(
        """class H(Handler):
    @override
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str
    ) -> str:
        return "250 OK"
""",
        FIRST + 2,
        "override",
        "reportIncompatibleMethodOverride",
    ),
    "wrong_return_type": Case(
        """class H(Handler):
    @override
    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        mail_options: list[str],
    ) -> int:
        return 250
""",
        FIRST + 2,
        "override",
        "reportIncompatibleMethodOverride",
    ),
    "misspelled_hook": Case(
        """class H(Handler):
    @override
    async def handle_RCTP(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        return "250 OK"
""",
        FIRST + 2,
        "misc",
        "reportGeneralTypeIssues",
    ),
    "forgotten_override": Case(
        """class H(Handler):
    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "221 Bye"
""",
        FIRST + 1,
        "explicit-override",
        "reportImplicitOverride",
    ),
    "correct": Case(
        """class H(Handler):
    @override
    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        return responses

    @override
    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        return True

    @override
    async def handle_exception(self, error: Exception) -> str:
        return "451 4.3.0 Try again later"
""",
        0,
        None,
        None,
    ),
}

MYPY_CONFIG: Final = """\
[mypy]
strict = True
enable_error_code = explicit-override
"""
PYRIGHT_CONFIG: Final = {"typeCheckingMode": "standard", "reportImplicitOverride": "error"}
_MYPY_LINE: Final = re.compile(r"^(?P<file>[\w.]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")

Findings = dict[str, set[tuple[int, str]]]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("handler_checks")
    for name, case in CASES.items():
        (root / f"{name}.py").write_text(HEADER + case.body)
    (root / "mypy.ini").write_text(MYPY_CONFIG)
    (root / "pyrightconfig.json").write_text(json.dumps(PYRIGHT_CONFIG))
    return root


def _files() -> list[str]:
    return [f"{name}.py" for name in CASES]


@pytest.fixture(scope="module")
def mypy_findings(project: Path) -> Findings:
    command = [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir"]
    command += [str(project / ".mypy_cache"), "--no-error-summary", *_files()]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300)
    findings: Findings = {name: set() for name in CASES}
    for line in result.stdout.splitlines():
        match = _MYPY_LINE.match(line)
        if match is not None:
            findings[match["file"].removesuffix(".py")].add((int(match["line"]), match["code"]))
    return findings


@pytest.fixture(scope="module")
def pyright_findings(project: Path) -> Findings:
    command = [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable]
    result = subprocess.run(
        [*command, *_files()], cwd=project, capture_output=True, text=True, timeout=300
    )
    report = json.loads(result.stdout)
    findings: Findings = {name: set() for name in CASES}
    for diagnostic in report["generalDiagnostics"]:
        if diagnostic["severity"] != "error":
            continue
        name = Path(diagnostic["file"]).stem
        line = diagnostic["range"]["start"]["line"] + 1
        findings[name].add((line, diagnostic.get("rule", "")))
    return findings


@pytest.mark.parametrize("name", sorted(CASES))
def test_mypy_reports_the_mistake(mypy_findings: Findings, name: str) -> None:
    case = CASES[name]
    expected = set() if case.mypy is None else {(case.line, case.mypy)}
    assert mypy_findings[name] == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_pyright_reports_the_mistake(pyright_findings: Findings, name: str) -> None:
    case = CASES[name]
    expected = set() if case.pyright is None else {(case.line, case.pyright)}
    assert pyright_findings[name] == expected
