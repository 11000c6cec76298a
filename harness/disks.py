"""Disk images for guests: raw files of a given size, or ext4 made from a host directory."""
from __future__ import annotations

import subprocess
from pathlib import Path

SECTOR = 512


def raw_image(path: Path, size_mb: int = 16, content: bytes = b"") -> Path:
    """A sparse raw disk of size_mb MiB starting with content."""
    size = size_mb << 20
    if len(content) > size:
        raise ValueError(f"content of {len(content)} bytes does not fit a {size_mb} MiB disk")
    with open(path, "wb") as disk:
        disk.write(content)
        disk.truncate(size)
    return Path(path)


def ext4_image(path: Path, source_dir: Path | None = None, size_mb: int = 16) -> Path:
    """An ext4 file system image holding source_dir's files (mkfs.ext4 -d)."""
    raw_image(path, size_mb)
    cmd = ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-O", "^has_journal"]
    if source_dir is not None:
        cmd += ["-d", str(source_dir)]
    result = subprocess.run(cmd + [str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"mkfs.ext4 failed: {result.stderr.strip()}")
    return Path(path)
