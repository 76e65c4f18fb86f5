"""Child processes that must not outlive the process that started them (`herd up`'s servers
and local services): if `herd up` itself is killed, the kernel sends them SIGTERM."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A `preexec_fn` for `subprocess.Popen` (Linux; elsewhere it does nothing)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
