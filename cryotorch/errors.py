"""The one exception type for bad input.

Every problem with a user's files is raised as :class:`InputError`, whose message names the
file, the field (or row) and what was expected, so that command-line tools can print it and
exit non-zero instead of showing a traceback from deep inside a library.
"""

from __future__ import annotations

import warnings
from os import PathLike


class InputError(ValueError):
    """A user's input file is malformed or inconsistent.

    Parameters
    ----------
    file
        The offending file.
    field
        The column, field, block or row at fault (``None`` when the whole file is at fault).
    problem
        What is wrong and what was expected, as a sentence.
    """

    def __init__(self, file: str | PathLike[str], field: str | None, problem: str) -> None:
        self.file = str(file)
        self.field = field
        self.problem = problem
        where = f"{self.file}: {field}" if field else self.file
        super().__init__(f"{where}: {problem}")


class InputWarning(UserWarning):
    """A user's input is usable but unusual: read with an assumption the user should know of.

    Raised through :func:`warn_input`; the command-line tools print it as one line,
    ``program: warning: file: field: problem``.
    """


def warn_input(file: str | PathLike[str], field: str | None, problem: str) -> None:
    """Warn (:class:`InputWarning`) about ``file``'s ``field``, worded like :class:`InputError`."""
    where = f"{file}: {field}" if field else str(file)
    warnings.warn(f"{where}: {problem}", InputWarning, stacklevel=3)
