"""Errors every stage shares."""


class MissingWeightsError(FileNotFoundError):
    """Model weights are not on this machine (nothing is ever downloaded at run time).

    The message names what is missing, where it was looked for and how to provide it.
    """
