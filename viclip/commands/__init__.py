"""The console commands: ``viclip-train``, ``viclip-eval``, ``viclip-curate <stage>``, ``viclip-convert``.

Each command is a module here with a ``main()`` (pyproject's ``[project.scripts]``); the clone's
``train.py``, ``eval.py`` and ``tools/*.py`` call the same ``main``. This is the top layer: it may
import every other part of the package, and nothing imports it but the entry points.

A user error (a missing file, field or column, a bad value) ends a command with one line that
names it, exit status 1 and no traceback; ``--debug`` or ``HYDRA_FULL_ERROR=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf.errors import ConfigAttributeError, MissingMandatoryValue, OmegaConfBaseException

from viclip.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])

CONFIGS = "pkg://viclip.configs"  # the Hydra configs shipped inside the package
DEBUG_FLAG = "--debug"
# What a user's input causes: reported in one line. Anything else (a KeyError or ValueError of our own code
# included) is a bug and keeps its traceback; code raises viclip.errors.UserError where the input is at fault.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError, MissingMandatoryValue, ConfigAttributeError)


def debug_requested() -> bool:
    """Whether tracebacks were asked for; takes ``--debug`` off the command line (the parsers do not know it)
    and sets ``HYDRA_FULL_ERROR=1``, Hydra's own switch, so Hydra's errors show theirs too."""
    if DEBUG_FLAG in sys.argv[1:]:
        sys.argv.remove(DEBUG_FLAG)
        os.environ["HYDRA_FULL_ERROR"] = "1"
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def error_line(e: BaseException) -> str:
    """The message of a user error on one line, naming the path or config key."""
    if isinstance(e, OmegaConfBaseException):
        key, first = e.full_key, str(e.msg or e).splitlines()[0]  # the lines after it restate the key and types
        if isinstance(e, MissingMandatoryValue) and key:
            return f"{first} (set {key}=... on the command line)"
        return f"{first} (config key {key})" if key else first
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"  # open()'s own errors: "[Errno 2] ..." reworded
    return str(e)


def one_line_errors(main: F) -> F:
    """``main`` (a tool's or a Hydra task function) ending a user error with ``PROG: error: MESSAGE``."""
    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if debug_requested():
            return main(*args, **kwargs)
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as e:
            sys.exit(f"{Path(sys.argv[0]).name}: error: {error_line(e)}")
    return wrapped  # type: ignore[return-value]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default in its help line."""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.default not in (None, argparse.SUPPRESS):
            action = copy.copy(action)  # argparse prints no line for an option without help, default or not
            action.help = "default: %(default)s"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and "default" not in text):
            text += " (default: %(default)s)"
        return text


class StageParser(argparse.ArgumentParser):
    """The parser of a curation command: defaults in ``--help``, and an option it does not know (``--inptu``)
    named as such before any complaint about missing required options."""

    def __init__(self, description: str | None) -> None:
        super().__init__(description=description, formatter_class=HelpFormatter)

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        known = list(self._option_string_actions)
        for token in args:
            if token == "--":
                break
            name = token.split("=", 1)[0]
            if name.startswith("--") and name not in known and sum(o.startswith(name) for o in known) != 1:
                self.error(f"unrecognized option {name} (see --help for the options)")
        return super().parse_known_args(args, namespace)


def hydra_command(task: Callable[[Any], None], config_name: str) -> Callable[[], None]:
    """The console entry of a Hydra app over the shipped configs; wrap ``task`` in one_line_errors first.

    User config folders join the search path with Hydra's ``--config-dir DIR`` or
    ``hydra.searchpath=[file://DIR]``; ``--debug`` is taken off the command line before Hydra parses it.
    """
    import hydra

    app = hydra.main(config_path=CONFIGS, config_name=config_name, version_base="1.3")(task)

    def main() -> None:
        if not debug_requested():
            from viclip.commands.config_keys import check_override_keys

            check_override_keys(CONFIGS.removeprefix("pkg://"), config_name, sys.argv[1:])
        app()
    return main
