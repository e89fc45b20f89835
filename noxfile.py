"""Development tasks for typed_smtpd: lint, type checks, tests on every Python, docs.

``nox`` alone runs the default sessions (lint, typecheck, tests on 3.10 to 3.13, compiled: the
tests against the mypyc-compiled build, docs, and deployment: HAProxy and servers losing a
process under load); that is also what CI runs.
``nox -s fuzz`` and ``nox -s bench`` run on demand. Every session builds a plain ``venv`` with
pip, so nothing beyond the Python interpreters themselves has to be installed first.

Only task wiring lives here; test settings are in ``pyproject.toml`` and ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import nox

nox.needs_version = ">=2024.3.2"
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "typecheck", "tests", "compiled", "docs", "deployment"]
if os.environ.get("CI"):
    # A Python version missing on a CI machine is a broken machine, not a reason to skip.
    nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
PRIMARY_PYTHON = "3.11"  # the version CI runs everything on, including the slow tests


def _expose_pyenv_pythons() -> None:
    """Under pyenv, make every supported ``python3.X`` runnable by naming it in PYENV_VERSION.

    pyenv's shims only run the versions PYENV_VERSION selects, and a shim-launched ``nox`` gets it
    set to the active version alone. Keep the selected versions first and append the newest
    installed patch release of each supported minor version missing from them.
    """
    if shutil.which("pyenv") is None:
        return
    try:
        installed = _pyenv("versions", "--bare").split()
        selected = os.environ.get("PYENV_VERSION") or _pyenv("version-name").strip()
    except (OSError, subprocess.SubprocessError):
        return
    chosen = [name for name in selected.split(":") if name]
    for minor in PYTHONS:
        if any(name.startswith(f"{minor}.") for name in chosen):
            continue
        patches = [name for name in installed if re.fullmatch(rf"{re.escape(minor)}\.\d+", name)]
        if patches:
            chosen.append(max(patches, key=lambda name: int(name.rsplit(".", 1)[1])))
    if chosen:
        os.environ["PYENV_VERSION"] = ":".join(chosen)


def _pyenv(*args: str) -> str:
    command = ["pyenv", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout


_expose_pyenv_pythons()

# Linters and type checkers are pinned: a new release with new rules should be a deliberate change,
# not a surprise failure. Raise the pins together with the code changes they ask for.
RUFF = "ruff==0.17.6"
MYPY = "mypy==2.4.1"
PYRIGHT = "pyright[nodejs]==1.1.414"
TEST_DEPS = [
    "pytest>=8",
    "pytest-asyncio>=0.24",
    "pytest-xdist",
    "hypothesis>=6.100",
    "uvloop; sys_platform != 'win32'",
]
INTEROP_DEPS = ["aiosmtplib", "trustme", "prometheus-client"]
#: The release tests/test_aiosmtpd_replies.py compares typed_smtpd's replies="aiosmtpd" with.
AIOSMTPD = "aiosmtpd==1.4.6"
DOCS_DEPS = ["sphinx>=7.2", "furo", "sphinx-copybutton"]
LINT_TARGETS = [
    "typed_smtpd",
    "hatch_build.py",
    "tests",
    "bench",
    "noxfile.py",
    "docs/conf.py",
    "docs/_ext",
    "docs/examples",
    "docs/check_site.py",
]


def _hypothesis_env(default_profile: str) -> dict[str, str]:
    """The environment for a test run: the given Hypothesis profile unless the caller chose one."""
    return {"HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", default_profile)}


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite on one Python version, in parallel (pytest-xdist).

    Tests marked ``slow`` run on the primary version (3.11) only, to keep the whole matrix fast.
    """
    session.install("-e", ".")
    session.install(*TEST_DEPS, *INTEROP_DEPS, AIOSMTPD)
    markers = [] if session.python == PRIMARY_PYTHON else ["-m", "not slow"]
    session.run("pytest", "-n", "auto", *markers, *session.posargs, env=_hypothesis_env("ci"))
    if not session.posargs:
        # The examples in the docstrings, each in its own module's namespace.
        session.run("pytest", "--doctest-modules", "typed_smtpd", env=_hypothesis_env("ci"))


@nox.session(python=PRIMARY_PYTHON)
def compiled(session: nox.Session) -> None:
    """Run the test suite against the build made with ``TYPED_SMTPD_COMPILE=1``: the protocol
    core compiled with mypyc (hatch_build.py). Needs a C compiler and the Python headers.

    The wheel is built and installed (its entry points: the pytest plugin); then its compiled
    modules are put into a copy of the project, where the tests run, so they import the compiled
    modules ahead of the sources beside them (tests/test_compiled.py checks that they do).
    """
    tmp = Path(session.create_tmp())
    wheels, tree = tmp / "wheels", tmp / "tree"
    for directory in (wheels, tree):
        shutil.rmtree(directory, ignore_errors=True)
    session.install("pip>=24")
    command = ["python", "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(wheels)]
    session.run(*command, ".", env={"TYPED_SMTPD_COMPILE": "1"})
    (wheel,) = wheels.glob("typed_smtpd-*.whl")
    session.install(str(wheel), *TEST_DEPS, *INTEROP_DEPS)
    skip = shutil.ignore_patterns(".nox", ".git", "_build", "__pycache__", "*.so", "*.pyd")
    shutil.copytree(ROOT, tree, ignore=skip)
    with zipfile.ZipFile(wheel) as archive:
        extensions = [name for name in archive.namelist() if name.endswith((".so", ".pyd"))]
        if not extensions:
            session.error(f"{wheel.name} holds no compiled module")
        archive.extractall(tree, members=extensions)
    session.chdir(tree)
    env = {**_hypothesis_env("ci"), "TYPED_SMTPD_EXPECT_COMPILED": "1"}
    # python -m puts the copy first on sys.path: its package, and the tests package of its own
    session.run("python", "-m", "pytest", "-n", "auto", "-m", "not slow", *session.posargs, env=env)


@nox.session(python=PRIMARY_PYTHON)
def typecheck(session: nox.Session) -> None:
    """Run mypy --strict and require a 100% pyright type-completeness score for the public API."""
    session.install("-e", ".")
    session.install(MYPY, PYRIGHT, *TEST_DEPS, *INTEROP_DEPS)
    # Files and options come from [tool.mypy] in pyproject.toml; the type tests of tests/typing
    # are added to the run once that directory holds any.
    if any((ROOT / "tests" / "typing").rglob("*.py")):
        session.run("mypy", "--strict", *session.posargs)
    else:
        session.run("mypy", "--strict", "typed_smtpd", *session.posargs)
    # The type tests that run mypy and pyright on handlers with mistakes (tests/typing/test_*.py).
    session.run("pytest", "tests/typing", "-q", "-p", "no:cacheprovider")

    # pyright exits 1 both for an incomplete API and for errors: read its report to say which, and
    # to list every exported symbol whose type is unknown or ambiguous.
    output = session.run(
        "pyright",
        "--verifytypes",
        "typed_smtpd",
        "--ignoreexternal",
        "--outputjson",
        silent=True,
        success_codes=[0, 1],
    )
    if not isinstance(output, str):
        session.error("pyright --verifytypes produced no output")
    _check_type_completeness(session, output)


def _check_type_completeness(session: nox.Session, output: str) -> None:
    """Fail the session unless pyright's completeness score is exactly 1.0; list what is missing."""
    try:
        report: dict[str, Any] = json.loads(output)
    except json.JSONDecodeError:
        session.error(f"could not parse pyright's JSON output:\n{output}")
    completeness = report.get("typeCompleteness") or {}
    score = completeness.get("completenessScore")
    if score is None:
        session.error(f"pyright reported no completeness score:\n{output}")
    incomplete = [
        symbol
        for symbol in completeness.get("symbols", [])
        if symbol.get("isExported")
        and (not symbol.get("isTypeKnown", True) or symbol.get("isTypeAmbiguous", False))
    ]
    for symbol in incomplete:
        session.log(f"incompletely typed: {symbol.get('name')}")
        for diagnostic in symbol.get("diagnostics", []):
            message = " ".join(diagnostic.get("message", "").split())
            session.log(f"    {diagnostic.get('file', '')}: {message}")
    for diagnostic in report.get("generalDiagnostics", []):
        if diagnostic.get("severity") == "error":
            session.log(f"pyright: {diagnostic.get('message', '').strip()}")
    if score != 1.0:
        session.error(f"type completeness is {score:.2%}, must be 100%")
    session.log("type completeness: 100%")


@nox.session(python=PRIMARY_PYTHON)
def lint(session: nox.Session) -> None:
    """Check the code with ruff, both the linter and the formatter."""
    session.install(RUFF)
    targets = [target for target in LINT_TARGETS if (ROOT / target).exists()]
    session.run("ruff", "check", *targets)
    session.run("ruff", "format", "--check", *targets)


@nox.session(python=PRIMARY_PYTHON)
def docs(session: nox.Session) -> None:
    """Build the HTML docs with warnings as errors, load them in a browser, run their doctests.

    Internal links are checked too. The browser check (docs/check_site.py) fails on a missing
    file or a script error; without a Chromium binary it is skipped, except in CI (the ``CI``
    environment variable set).
    """
    # [testing]: the testing guide's examples run the fixtures, the fakes and the strategies;
    # [metrics]: the reference documents typed_smtpd.metrics.
    session.install("-e", ".[testing,metrics]")
    session.install(*DOCS_DEPS, "aiosmtplib")
    build = Path("docs", "_build")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", str(build / "html"), "-q"
    )
    session.run("python", "docs/check_site.py", str(build / "html"))
    session.run("sphinx-build", "-W", "-b", "doctest", "docs", str(build / "doctest"), "-q")
    # conf.py ignores every http(s) URL, so only links inside the docs are checked (no network).
    session.run("sphinx-build", "-W", "-b", "linkcheck", "docs", str(build / "linkcheck"), "-q")


@nox.session(python=PRIMARY_PYTHON)
def fuzz(session: nox.Session) -> None:
    """Run the property tests with many more examples (the 'fuzz' Hypothesis profile)."""
    session.install("-e", ".")
    session.install(*TEST_DEPS, *INTEROP_DEPS)
    target = "tests/fuzz" if (ROOT / "tests" / "fuzz").is_dir() else "tests"
    args = [target, "-m", "not integration", "-n", "auto", *session.posargs]
    session.run("pytest", *args, env=_hypothesis_env("fuzz"))


@nox.session(python=PRIMARY_PYTHON)
def bench(session: nox.Session) -> None:
    """Run the benchmarks against aiosmtpd (see bench/run.py for its options)."""
    # uvloop too, for --uvloop; prometheus-client for the typed-observed server
    session.install(".[speed,metrics]", "aiosmtpd", "aiosmtplib")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(python=PRIMARY_PYTHON)
def deployment(session: nox.Session) -> None:
    """HAProxy before three command-line servers, and --workers 3, each losing a process under load.

    Needs haproxy; builds network namespaces when root with iproute2's ``ip``, uses 127.0.0.x
    loopback addresses otherwise (see tests/deployment/network.py).
    """
    session.install("-e", ".")
    session.install(*TEST_DEPS)
    env = {"TYPED_SMTPD_DEPLOYMENT": "1"}
    session.run("pytest", "tests/deployment", *session.posargs, env=env)
