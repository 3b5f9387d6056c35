"""Run ``cryotorch-classify`` and SIGKILL it at its N-th file rename: a kill at a random point
of a run, the final writes included (every file cryotorch writes is renamed into place, and
the result set moved from its hidden folder, by ``os.replace``).

    python -m tests.kill_at_write COUNT_FILE N BEFORE [classify arguments ...]

N = 0: run to the end, writing the number of renames to COUNT_FILE. N > 0: kill the process
at the N-th rename, before it (BEFORE = 1: the temporary file is left, the old one in place)
or just after it (BEFORE = 0).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path


def main() -> None:
    count_file, target, before = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
    sys.argv = ["cryotorch-classify", *sys.argv[4:]]
    real, calls = os.replace, [0]

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls[0] += 1
        if calls[0] == target and before:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
        if calls[0] == target:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace  # type: ignore[assignment]
    atexit.register(lambda: count_file.write_text(str(calls[0])))
    from cryotorch.cli.classify import main as classify

    classify()


if __name__ == "__main__":
    main()
