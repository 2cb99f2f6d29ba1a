"""The errors a user's input causes: the commands print these in one line, and nothing else.

A ``UserError`` says what input is at fault (the file, field or option, and the value) and how to fix
it; ``viclip.commands.one_line_errors`` ends a command with that line. Every other exception, a
``KeyError`` or ``ValueError`` from our own code included, is a bug and keeps its traceback. Raise the
narrowest subclass at the boundary where the input is read. Each subclasses ``ValueError`` so that
library callers who catch ``ValueError`` keep working.
"""

from __future__ import annotations


class UserError(ValueError):
    """An input is at fault; the message names it (file, field or option, value) and the way out."""


class ConfigError(UserError):
    """A config field or command-line option has a value we cannot use (name the key and the value)."""


class DataError(UserError):
    """A data file (video, tar shard, table, annotation list, weights) is unreadable or malformed
    (name the file, and the member, row or field)."""


class UnsafeFileError(DataError):
    """A file would run code when loaded (a pickle needing globals, a TorchScript archive): refused."""


class OutputError(UserError):
    """An output location would overwrite inputs or files we did not write, or another run holds it."""
