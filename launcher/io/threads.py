"""Helper threads that never receive process-directed signals.

SIGINT/SIGTERM and the vCPU kick must reach the vCPU (main) thread so they interrupt
KVM_RUN; a helper thread that took one instead would leave KVM_RUN blocked.  A new
thread inherits the creator's signal mask, so we block around its start.
"""
from __future__ import annotations

import signal
import threading

SHIELDED = {signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM}


def start_shielded(target, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SHIELDED)
    try:
        thread.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    return thread
