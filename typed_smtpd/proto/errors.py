"""The engine's own exception, in a module of its own.

It derives from a built-in exception class, which classes compiled with mypyc cannot do; kept
here, the engine module compiles and the class stays a plain one. No I/O here.
"""

from __future__ import annotations

__all__ = ["EngineError"]


class EngineError(RuntimeError):
    """The engine was driven out of order by its adapter (a bug in the adapter)."""


EngineError.__module__ = "typed_smtpd.proto.engine"
