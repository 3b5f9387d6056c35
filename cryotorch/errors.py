"""The one exception type for bad input.

Every problem with a user's files is raised as :class:`InputError`, whose message names the
file, the field (or row) and what was expected, so that command-line tools can print it and
exit non-zero instead of showing a traceback from deep inside a library.
"""

from __future__ import annotations

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
