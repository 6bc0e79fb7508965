"""Errors every stage shares."""


class MissingWeightsError(FileNotFoundError):
    """Model weights are not on this machine (nothing is ever downloaded at run time).

    The message names what is missing, where it was looked for and how to provide it.
    """


def first_few(items: list[str], limit: int = 5, separator: str = "; ") -> str:
    """The first ``limit`` of ``items`` joined, and how many more there are: error messages name a few, count the rest."""
    more = f"{separator}and {len(items) - limit} more" if len(items) > limit else ""
    return separator.join(items[:limit]) + more
