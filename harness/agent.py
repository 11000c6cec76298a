"""lh-agent, the guest end of the command channel (harness/lh_agent.c): a static binary built
with the host's gcc on first use and cached by the source's hash, like the kernel recipe."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("lh_agent.c")
GUEST_PATH = "bin/lh-agent"
CFLAGS = ("-static", "-Os", "-s", "-Wall")


class AgentBuildError(RuntimeError):
    pass


def _cache_root() -> Path:
    from harness.kernel import cache_root
    return cache_root()


def agent_key() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    return digest.hexdigest()[:16]


def ensure_agent() -> Path:
    """The cached lh-agent binary, compiled now if this source has not been built yet."""
    out_dir = _cache_root() / "agent" / agent_key()
    binary = out_dir / "lh-agent"
    if binary.exists():
        return binary
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise AgentBuildError("no C compiler for lh-agent: apt-get install build-essential")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        tmp = out_dir / f"lh-agent.{os.getpid()}"
        made = subprocess.run([compiler, *CFLAGS, "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
        if made.returncode != 0:
            raise AgentBuildError(f"compiling {SOURCE.name} failed (a static libc is in libc6-dev):\n{made.stderr}")
        tmp.rename(binary)
    return binary
