"""The wheel's build hook: with ``TYPED_SMTPD_COMPILE=1``, the protocol core is compiled.

Without that variable (the default) this hook does nothing and the wheel is pure Python. With it,
the modules of :data:`COMPILED` (the sans-IO engine and what it calls for every command) are
compiled to C extension modules with mypyc, from the same type-checked sources, and added to a
platform wheel beside them; Python imports the extension in place of the source. Everything
else, the asyncio adapter included, stays Python. Building needs a C compiler and the Python
headers; pip fetches mypy and setuptools into the build environment.

    TYPED_SMTPD_COMPILE=1 pip install --no-binary typed-smtpd typed-smtpd
    TYPED_SMTPD_COMPILE=1 pip install .
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ENV = "TYPED_SMTPD_COMPILE"
#: Compiled with mypyc: the engine, the framing and parsers it runs per command, the reply
#: catalogue. Left out: proto/state.py (enums with an identity hash, which mypyc does not
#: compile), proto/proxy.py and proto/errors.py (they subclass built-in exceptions), the
#: package's __init__ modules.
COMPILED = [
    "typed_smtpd/proto/auth.py",
    "typed_smtpd/proto/clients.py",
    "typed_smtpd/proto/commands.py",
    "typed_smtpd/proto/data.py",
    "typed_smtpd/proto/engine.py",
    "typed_smtpd/proto/framing.py",
    "typed_smtpd/proto/limits.py",
    "typed_smtpd/proto/monitor.py",
    "typed_smtpd/proto/params.py",
    "typed_smtpd/proto/replies.py",
    "typed_smtpd/proto/stream.py",
]
#: The mypy that compiles (the one the typecheck session pins) and a setuptools that builds C
#: extensions.
BUILD_DEPENDENCIES = ["mypy==2.4.1", "setuptools>=70"]


def compile_wanted() -> bool:
    """Whether this build compiles (``TYPED_SMTPD_COMPILE`` set to anything but ``""``/``0``)."""
    return os.environ.get(ENV, "").strip() not in ("", "0")


class CompileHook(BuildHookInterface):  # type: ignore[misc]
    """Compile :data:`COMPILED` into the wheel when :func:`compile_wanted`."""

    PLUGIN_NAME = "custom"

    def dependencies(self) -> list[str]:
        return BUILD_DEPENDENCIES if compile_wanted() else []

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if not compile_wanted() or self.target_name != "wheel":
            return
        if version == "editable":
            raise RuntimeError(f"{ENV}=1 builds a regular wheel; leave out -e to compile")
        from mypyc.build import mypycify
        from setuptools import Distribution

        root = Path(self.root)
        out = Path(self.directory) / "compiled"
        with tempfile.TemporaryDirectory(prefix="typed-smtpd-mypyc-") as temp:
            here = Path.cwd()
            os.chdir(root)  # mypycify takes paths relative to the project, as mypy does
            try:
                extensions = mypycify(COMPILED, opt_level="3", target_dir=str(Path(temp, "c")))
                distribution = Distribution({"name": "typed_smtpd", "ext_modules": extensions})
                build_ext = distribution.get_command_obj("build_ext")
                build_ext.build_lib = str(out)
                build_ext.build_temp = str(Path(temp, "objects"))
                build_ext.ensure_finalized()
                build_ext.run()
            finally:
                os.chdir(here)
        built = sorted(p for p in out.rglob("*") if p.is_file())
        if not built:
            raise RuntimeError("mypyc built nothing")
        for path in built:
            build_data["force_include"][str(path)] = path.relative_to(out).as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
