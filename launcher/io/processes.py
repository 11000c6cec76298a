"""Helper processes the launcher (or the harness) starts and must not leave behind."""
from __future__ import annotations

import ctypes
import signal
import subprocess

STOP_GRACE = 5.0        # seconds a helper has to exit on SIGTERM before it is killed
PR_SET_PDEATHSIG = 1


def stop_process(process: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Have the kernel send `sig` to this process when its parent thread dies, however it dies
    (even by SIGKILL): a helper, or a guest, never outlives whoever started it."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
