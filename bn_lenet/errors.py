"""User errors: things a user can fix (a config, a path, the data). The CLI prints them without a traceback."""


class UserError(Exception):
    """A mistake in the user's input; the message says what is wrong and what to do."""


class DataError(UserError):
    """Fashion-MNIST is missing, unreadable or corrupt."""


class ConfigError(UserError):
    """A config file, key, value or --set expression is wrong."""
