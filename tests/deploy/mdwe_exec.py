"""exec a command with memory W^X enforced by the kernel, like systemd's MemoryDenyWriteExecute.

Usage: python mdwe_exec.py [--umask OCTAL] PROGRAM [ARG...]

prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) (Linux >= 6.3) refuses mappings that are writable and
executable and any later gain of execute permission; the flag survives fork and execve, so every
worker process the launcher starts has it too. Stdlib only: ctypes calls libc's prctl.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def main(argv: list[str]) -> None:
    if argv[:1] == ["--umask"]:
        os.umask(int(argv[1], 8))
        argv = argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SystemExit(f"mdwe_exec: prctl(PR_SET_MDWE) failed: {os.strerror(err)}")
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
