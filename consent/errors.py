"""Domain errors of the consent library."""

from __future__ import annotations


class ConsentError(Exception):
    """Base of every consent-library error."""


class InvalidTermError(ConsentError):
    """A malformed term, or a known term with missing or malformed parameters."""


class UnknownTermError(InvalidTermError):
    """A data-use term is not in the vocabulary (fail closed: never ignored)."""


class InvalidConsentError(ConsentError):
    """A consent record that cannot be accepted; ``problems`` lists every field problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
