"""Load every page of the built HTML documentation in headless Chromium; fail on a broken page.

Usage: ``python docs/check_site.py [BUILD_DIR]`` (default ``docs/_build/html``), run by
``nox -s docs`` after the HTML build.

The site is served from a local HTTP server on an ephemeral port of 127.0.0.1, which records the
status of every request. Each page is loaded with ``chromium --headless --dump-dom`` (which waits
for the page's load event), with Chromium's console log on standard error. The check fails if any
request for a file of the site (a stylesheet, a script, an image, a font, the favicon) gets 404,
or if a page logs an uncaught JavaScript error.

Without a Chromium binary the check is skipped with a message, except when the environment
variable ``CI`` is set: CI must run it. ``CHROMIUM`` names the binary to use.

Only the standard library is used; nothing here touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

#: The binaries tried, in order, when ``CHROMIUM`` is not set.
BINARIES: Final = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Seconds one page may take to load before the check gives up on it.
PAGE_TIMEOUT: Final = 60.0
#: Pages loaded at the same time (each is one Chromium process).
PARALLEL: Final = max(2, min(8, os.cpu_count() or 1))
#: A console line of Chromium's log that reports an uncaught exception of a page's script.
_UNCAUGHT: Final = re.compile(r':CONSOLE[:(]\d+\)?\] "(Uncaught [^"]*)", source: (\S+)')
#: Sphinx's output that is not a page of its own: static files, and the highlighted sources of
#: the viewcode extension (same layout and assets as every page; rebuilt only when a module
#: changes, so an incremental build can leave them stale).
_SKIPPED_DIRS: Final = ("_static", "_sources", "_images", "_downloads", "_modules")


@dataclass
class _Requests:
    """What the local server was asked for: each path with its status (thread-safe)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    missing: dict[str, set[str]] = field(default_factory=dict)  # path -> referring pages

    def record(self, path: str, status: int, referer: str) -> None:
        if status == 404:
            with self.lock:
                self.missing.setdefault(path, set()).add(referer or "?")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the build directory quietly and records each request's status."""

    requests: _Requests

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        status = int(code) if str(code).isdigit() else 0
        path = unquote(urlsplit(self.path).path)
        self.requests.record(path, status, self.headers.get("Referer", ""))

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the requests are recorded, not printed


def find_chromium() -> str | None:
    """The Chromium binary to use, or None."""
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


def pages_of(root: Path) -> list[str]:
    """Every HTML page of the site, as paths relative to ``root``, sorted."""
    pages = []
    for page in root.rglob("*.html"):
        relative = page.relative_to(root)
        if relative.parts[0] in _SKIPPED_DIRS:
            continue
        pages.append(relative.as_posix())
    return sorted(pages)


def load(chromium: str, url: str, profile: Path) -> tuple[str, list[str]]:
    """Load ``url``; return it with the uncaught script errors its console reported."""
    command = [
        chromium,
        "--headless=new",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        url,
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PAGE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return url, [f"the page did not finish loading within {PAGE_TIMEOUT:g} seconds"]
    log = result.stderr.decode("utf-8", "replace")
    errors = [f"{message} ({source})" for message, source in _UNCAUGHT.findall(log)]
    if result.returncode != 0:
        errors.append(f"chromium exited with status {result.returncode}: {log.strip()[-500:]}")
    elif b"<html" not in result.stdout.lower():
        errors.append("chromium returned no document")
    return url, errors


def check(root: Path, chromium: str) -> int:
    """Serve ``root``, load each page, print what is wrong; return the exit status."""
    pages = pages_of(root)
    if not pages:
        print(f"check_site: no HTML pages under {root}", file=sys.stderr)
        return 1
    requests = _Requests()
    handler = functools.partial(_Handler, directory=str(root))
    _Handler.requests = requests
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="check-site-http", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    script_errors: dict[str, list[str]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="check-site-") as profiles:
            jobs = [(base + page, Path(profiles, str(number))) for number, page in enumerate(pages)]
            with ThreadPoolExecutor(PARALLEL) as pool:
                futures = [pool.submit(load, chromium, url, profile) for url, profile in jobs]
                for future in futures:
                    url, errors = future.result()
                    if errors:
                        script_errors[url.removeprefix(base)] = errors
    finally:
        server.shutdown()
        server.server_close()
    for path, referers in sorted(requests.missing.items()):
        pages_list = ", ".join(sorted(ref.removeprefix(base) for ref in referers))
        print(f"check_site: 404 for {path} (from {pages_list})", file=sys.stderr)
    for page, errors in sorted(script_errors.items()):
        for error in errors:
            print(f"check_site: {page}: {error}", file=sys.stderr)
    if requests.missing or script_errors:
        return 1
    print(
        f"check_site: {len(pages)} pages loaded in {Path(chromium).name}: no missing file, "
        "no script error"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Check the site in ``argv[0]`` (default ``docs/_build/html``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    root = Path(args[0] if args else Path(__file__).parent / "_build" / "html").resolve()
    if not (root / "index.html").is_file():
        print(f"check_site: {root} holds no built site (no index.html)", file=sys.stderr)
        return 1
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI"):
            print(
                "check_site: error: no Chromium binary (chromium, chromium-browser, "
                "google-chrome), and CI must run this check: install chromium",
                file=sys.stderr,
            )
            return 1
        print(
            "check_site: skipped: no Chromium binary found (install chromium, or name one in "
            "the CHROMIUM environment variable)"
        )
        return 0
    return check(root, chromium)


if __name__ == "__main__":
    sys.exit(main())
