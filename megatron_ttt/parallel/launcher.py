"""A rank dies with its launcher. torchrun starts each rank in a session of its own, so when
torchrun itself is killed (SIGKILL from an operator or the OOM killer) nothing reaches the
ranks: they live on as orphans, blocked in a collective that will never complete, holding their
memory (and GPUs) until gloo's or NCCL's timeout. Linux can instead kill a process when its
parent dies (prctl PR_SET_PDEATHSIG); SIGKILL, because a rank whose launcher is gone cannot
finish a collective checkpoint anyway (the last complete checkpoint stays the latest). Other
systems have no such call: there the ranks end at the collective's timeout."""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
LAUNCHED = "TORCHELASTIC_RUN_ID"
"""Set by torchrun in every rank's environment."""


def die_with_launcher() -> None:
    """Under torchrun on Linux: this process is killed as soon as its launcher dies (and now, if
    it died already). Elsewhere nothing."""
    if LAUNCHED not in os.environ or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() == 1:  # the launcher died before the request: init adopted us
        os.kill(os.getpid(), signal.SIGKILL)
