"""The error raised for bad preset handles and unreadable preset files."""


class PresetError(ValueError):
    """A preset handle that cannot be resolved, downloaded or read.

    The message names the handle and what was wrong with it; it is a
    `ValueError`, so code catching bad input in general catches it too.
    """
