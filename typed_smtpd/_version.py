"""The version of the distribution, in a module of its own that imports nothing.

Both the package's ``__init__`` and the modules it imports read it from here, so none of them has
to import the package itself; the build backend reads it from this file too.
"""

#: The version of this distribution.
__version__ = "0.1.0"
