"""The exception types the command-line tools report in one line.

Every problem with a user's files is raised as :class:`InputError`, whose message names the
file, the field (or row) and what was expected, so that command-line tools can print it and
exit non-zero instead of showing a traceback from deep inside a library. A file that cannot
be written (a full disk, a read-only folder) is an :class:`OutputError`, naming the file.
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


class OutputError(OSError):
    """A file cannot be written: the disk is full, the folder is read-only or not ours.

    Parameters
    ----------
    file
        The file that was being written.
    cause
        The operating system's error (its ``errno`` and ``strerror`` are kept).
    """

    def __init__(self, file: str | PathLike[str], cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror)
        self.file = str(file)
        self.cause = cause

    def __str__(self) -> str:
        reason = self.cause.strerror or str(self.cause)
        return f"cannot write {self.file}: {reason[:1].lower()}{reason[1:]}"


class InputWarning(UserWarning):
    """A user's input is usable but unusual: read with an assumption the user should know of.

    Raised through :func:`warn_input`; the command-line tools print it as one line,
    ``program: warning: file: field: problem``.
    """


def warn_input(file: str | PathLike[str], field: str | None, problem: str) -> None:
    """Warn (:class:`InputWarning`) about ``file``'s ``field``, worded like :class:`InputError`."""
    where = f"{file}: {field}" if field else str(file)
    warnings.warn(f"{where}: {problem}", InputWarning, stacklevel=3)
