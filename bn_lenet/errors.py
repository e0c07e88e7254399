"""User errors: things a user can fix (a config, a path, the data), and ``run_main``, which prints them as one
``error:`` line without a traceback. Here, at the bottom of the package, so that every command (the CLI, the
tutorial's own script, experiments/) reports errors the same way without importing the CLI."""

import sys


class UserError(Exception):
    """A mistake in the user's input; the message says what is wrong and what to do."""


class DataError(UserError):
    """Fashion-MNIST is missing, unreadable or corrupt."""


class ConfigError(UserError):
    """A config file, key, value or --set expression is wrong."""


class CorruptFile(UserError):
    """A run's or a sweep's file that cannot be read or does not hold what it should (training/files.py)."""


def run_main(fn, *args, debug=False) -> int:
    """Run fn(*args); a user error becomes one ``error:`` line and exit code 2 (``--debug``: the traceback)."""
    debug = debug or "--debug" in sys.argv
    try:
        return fn(*args)
    except UserError as e:
        if debug:
            raise
        if not getattr(e, "quiet", False):  # a data-parallel job's other processes: rank 0 prints it
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
