"""Errors that reach the user as one clear line (the CLI prints them without a traceback)."""


class MMCError(Exception):
    """A problem with the user's input (a file, a key, a value): say what and where, then stop."""


class ConfigError(MMCError):
    """The configuration does not match the schema, or refers to things that do not exist."""
