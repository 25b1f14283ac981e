"""One exception family for everything mimkit reports to a user."""


class MimkitError(Exception):
    """Base class: a message that names the file or argument, what was expected and what was found."""


class ConfigError(MimkitError, ValueError):
    """An argument or recipe value that cannot work (wrong size, unknown name, ...)."""


class DataError(MimkitError):
    """A data file or folder that is missing, empty, corrupt or of the wrong shape."""


class CheckpointError(MimkitError):
    """A weights file that cannot be read or does not match the model."""


class TrainingError(MimkitError):
    """Training cannot go on (a non-finite loss, say)."""
