"""One run at a time in an output folder: a lock file holding the process id and host of the
run that writes there.

A second run into the same folder while the first is alive is refused in one line. A lock
left by a run that was killed (its process is gone from this host) is taken over, with a
message. A lock from another host cannot be checked from here and is refused, saying which
file to delete if that run is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from cryotorch.errors import InputError

__all__ = ["LOCK_NAME", "folder_lock"]

LOCK_NAME = ".cryotorch.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def _holder(lock: Path) -> tuple[int, str] | None:
    """(pid, host) written in ``lock``; None if it cannot be read as such."""
    try:
        pid, host = lock.read_text().split(maxsplit=1)
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def folder_lock(
    folder: Path, say: Callable[[str], None] = print, made: bool = False
) -> Iterator[None]:
    """Hold ``folder/.cryotorch.lock`` while the block runs; an :class:`InputError` if a live
    run holds it. A folder made for the lock (or ``made`` just before, by Hydra for a job of a
    sweep) and left empty is removed again."""
    made = made or not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock, me = folder / LOCK_NAME, (os.getpid(), socket.gethostname())
    for _ in range(2):  # a stale lock is removed once, then taken
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is not None and holder[1] != me[1]:
                raise InputError(
                    folder,
                    None,
                    f"another cryotorch run (process {holder[0]} on {holder[1]}) writes here; "
                    f"choose another output_dir, or delete {lock} if that run is gone",
                ) from None
            if holder is not None and _alive(holder[0]):
                raise InputError(
                    folder,
                    None,
                    f"another cryotorch run (process {holder[0]}) writes here: wait for it to "
                    "end, or choose another output_dir",
                ) from None
            say(f"{lock}: taking over the lock of a run that ended without releasing it")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{me[0]} {me[1]}\n")
        break
    else:
        raise InputError(folder, None, f"could not take {lock}")
    try:
        yield
    finally:
        if _holder(lock) == me:
            lock.unlink(missing_ok=True)
        if made and not any(folder.iterdir()):
            folder.rmdir()
