"""Helper processes the launcher (or the harness) starts and must not leave behind."""
from __future__ import annotations

import subprocess

STOP_GRACE = 5.0        # seconds a helper has to exit on SIGTERM before it is killed


def stop_process(process: subprocess.Popen, grace: float = STOP_GRACE) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
