"""Snapshots of a running guest: the directory format, writing it, and checking it before a restore.

A snapshot is a directory (written by Launcher.save, read by Launcher.restore):

    manifest.json   what the guest is: format and launcher version, backend, kernel (path,
                    size, sha256), initrd, the command line it booted with, memory size,
                    the devices in bus order with their host backing, and the two files below
                    with their sizes (and the state file's sha256).  Written last: a directory
                    without it is an unfinished snapshot.
    memory.raw      guest RAM, a sparse file (all-zero pages are holes); restored by mapping
                    it MAP_PRIVATE, so restore cost does not grow with memory and guests
                    restored from one snapshot share its pages
    state.json      the backend's state (vCPU, in-kernel irqchip/PIT/clock, 8250) and each
                    device's (virtio-mmio registers, negotiated features, status, queue
                    addresses and indices, config space)
    diskN.img       a sparse copy of block device N's file as it was at the snapshot

A restore checks everything it can before any guest state exists (open_snapshot) and never
writes into the directory: memory is a private mapping, read-only disks are opened read-only,
and each writable disk is a fresh sparse copy in a private directory, removed when the
launcher has opened them (so they vanish with it, however it ends), or the file --block=FILE
names, used in place.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from launcher.config import LaunchConfig
from launcher.devspec import BlockSpec, ConsoleSpec, NetSpec, RngSpec
from launcher.errors import LauncherError

FORMAT = "lguest-harness snapshot"
FORMAT_VERSION = 1
MANIFEST, MEMORY, STATE = "manifest.json", "memory.raw", "state.json"


class SnapshotError(LauncherError):
    """A snapshot cannot be written, or a directory is not a snapshot this launcher can restore."""


@functools.cache
def launcher_version() -> str:
    try:
        from importlib.metadata import version
        return version("lguest-harness")
    except Exception:   # noqa: BLE001 - an uninstalled source tree
        return "0+unknown"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy src to a new file dst, data extents only (copy_file_range: a reflink where the
    file system can), holes left as holes."""
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        size = os.fstat(fin.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
            except OSError:         # ENXIO: only a hole is left
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            while start < end:
                done = os.copy_file_range(fin.fileno(), fout.fileno(), end - start, start, start)
                if done <= 0:
                    raise OSError(f"copy_file_range from {src} stopped at {start:#x}")
                start += done
            offset = end
        fout.truncate(size)


# -- the manifest's device list ------------------------------------------------------------------
def _device_entry(spec, index: int) -> dict:
    if isinstance(spec, ConsoleSpec):
        return {"kind": "console"}
    if isinstance(spec, BlockSpec):
        return {"kind": "block", "read_only": spec.read_only, "source": os.path.abspath(spec.path),
                "image": f"disk{index}.img", "size": os.path.getsize(spec.path)}
    if isinstance(spec, NetSpec):
        return {"kind": "net", "interface": spec.interface, "bridge": spec.bridge,
                "mac": spec.mac.hex() if spec.mac else None}
    if isinstance(spec, RngSpec):
        return {"kind": "rng", "host": "/dev/urandom"}
    raise SnapshotError(f"cannot snapshot a device of kind {getattr(spec, 'kind', spec)!r}")


# -- writing ---------------------------------------------------------------------------------------
def write_snapshot(directory: Path, vm) -> dict:
    """Write a paused guest (a Launcher whose run() returned Stopped(PAUSED)) to directory,
    which must not exist or be empty.  Returns the manifest."""
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise SnapshotError(f"snapshot {directory}: exists and is not an empty directory")
    bus_save = getattr(vm.bus, "save_state", None)
    if bus_save is None:
        raise SnapshotError(f"the {vm.config.backend} backend's device bus cannot snapshot its devices")
    backend_state = vm.backend.save_state()     # SnapshotUnsupported for lguest/fake
    devices_state = bus_save()                  # joins the service threads
    config = vm.config
    specs = vm.bus_class.device_specs(config.devices, config.hvc)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        entries = [_device_entry(spec, n) for n, spec in enumerate(specs)]
        for spec, entry in zip(specs, entries):
            if entry["kind"] == "block":
                copy_sparse(Path(spec.path), directory / entry["image"])
        data_bytes = vm.memory.save_sparse(directory / MEMORY)
        state = json.dumps({"backend": backend_state, "devices": devices_state}, sort_keys=True).encode()
        (directory / STATE).write_bytes(state)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "launcher_version": launcher_version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "backend": config.backend,
            "kernel": {"path": os.path.abspath(config.kernel), "size": os.path.getsize(config.kernel),
                       "sha256": file_sha256(config.kernel)},
            "initrd": ({"path": os.path.abspath(config.initrd), "sha256": file_sha256(config.initrd)}
                       if config.initrd else None),
            "kernel_args": list(config.kernel_args), "cmdline": str(vm.cmdline or ""),
            "mem_mb": config.mem_mb, "hvc": config.hvc, "ready_marker": config.ready_marker,
            "system_map": os.path.abspath(config.system_map) if config.system_map else None,
            "memory": {"file": MEMORY, "size": vm.memory.size, "data_bytes": data_bytes},
            "state": {"file": STATE, "size": len(state), "sha256": hashlib.sha256(state).hexdigest()},
            "devices": entries,
        }
        tmp = directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
        tmp.rename(directory / MANIFEST)
    except BaseException:
        _remove_written(directory, created)
        raise
    return manifest


def _remove_written(directory: Path, created: bool) -> None:
    if created:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for child in directory.iterdir():
        child.unlink(missing_ok=True)


# -- reading and checking ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DiskOverride:
    """--block=FILE / --block-ro=FILE on restore: the next block device's backing, used in place."""
    path: str
    read_only: bool = False


class Snapshot:
    """A checked snapshot directory: manifest, state, the memory file's path.  Nothing in the
    directory is ever written; writable disks are copied into a private work directory that
    close() removes."""

    def __init__(self, directory: Path, manifest: dict, state: dict):
        self.directory, self.manifest, self.state = directory, manifest, state
        self.memory_path = directory / manifest["memory"]["file"]
        self.memory_size = manifest["memory"]["size"]
        self.workdir: Path | None = None

    def config(self, *, timeout: float | None = None, disks: tuple[DiskOverride, ...] = ()) -> LaunchConfig:
        """The guest's LaunchConfig, its block devices backed as the restore asks: each
        override in order, then fresh copies of the snapshot's images (read-only ones in place)."""
        blocks = [e for e in self.manifest["devices"] if e["kind"] == "block"]
        if len(disks) > len(blocks):
            raise SnapshotError(f"snapshot {self.directory}: {len(disks)} --block flags, but the guest has "
                                f"{len(blocks)} block device(s)")
        devices = []
        overrides = iter(disks)
        for entry in self.manifest["devices"]:
            kind = entry["kind"]
            if kind == "console":
                continue
            if kind == "block":
                devices.append(self._block(entry, next(overrides, None)))
            elif kind == "net":
                devices.append(NetSpec(interface=entry["interface"], bridge=entry["bridge"],
                                       mac=bytes.fromhex(entry["mac"]) if entry["mac"] else None))
            elif kind == "rng":
                devices.append(RngSpec())
            else:
                raise SnapshotError(f"snapshot {self.directory}: unknown device kind {kind!r} in the manifest")
        m = self.manifest
        options = {} if timeout is None else {"timeout": timeout}
        return LaunchConfig(mem_mb=m["mem_mb"], kernel=Path(m["kernel"]["path"]), kernel_args=tuple(m["kernel_args"]),
                            initrd=None, devices=tuple(devices), backend=m["backend"], hvc=m["hvc"],
                            system_map=Path(m["system_map"]) if m["system_map"] else None, **options)

    def _block(self, entry: dict, override: DiskOverride | None) -> BlockSpec:
        read_only = entry["read_only"]
        if override is not None:
            flag = "--block-ro" if override.read_only else "--block"
            if override.read_only != read_only:
                raise SnapshotError(f"{flag}={override.path}: the snapshot's disk {entry['source']} was "
                                    f"{'read-only' if read_only else 'writable'}; use "
                                    f"{'--block-ro' if read_only else '--block'}")
            try:
                size = os.path.getsize(override.path)
            except OSError as exc:
                raise SnapshotError(f"{flag}={override.path}: {exc.strerror}") from None
            if size != entry["size"]:
                raise SnapshotError(f"{flag}={override.path}: {size} bytes, but the guest knows its disk as "
                                    f"{entry['size']} bytes (use a disk of the same size)")
            return BlockSpec(override.path, read_only)
        image = self.directory / entry["image"]
        if read_only:
            return BlockSpec(str(image), True)
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="lguest-restore-"))
        copy = self.workdir / entry["image"]
        try:
            copy_sparse(image, copy)
        except OSError as exc:
            raise SnapshotError(f"cannot copy the snapshot's disk {image}: {exc.strerror or exc}") from None
        return BlockSpec(str(copy), False)

    def close(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def open_snapshot(directory) -> Snapshot:
    """Check a snapshot directory through and through (except what only the backend can judge,
    e.g. the TSC rate); every problem is one SnapshotError line."""
    directory = Path(directory)
    where = f"snapshot {directory}"
    if not directory.is_dir():
        raise SnapshotError(f"{where}: no such directory")
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise SnapshotError(f"{where}: no {MANIFEST} (not a snapshot, or its writing did not finish)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"{where}: {MANIFEST} is corrupt ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"{where}: {MANIFEST} is not an lguest-harness snapshot manifest")
    ours = launcher_version()
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("launcher_version") != ours:
        raise SnapshotError(f"{where}: taken by lguest-harness {manifest.get('launcher_version')} (snapshot format "
                            f"{manifest.get('format_version')}); this is {ours} (format {FORMAT_VERSION}): "
                            f"take a new snapshot")
    try:
        _check_manifest(directory, manifest)
        state = _read_state(directory, manifest)
    except SnapshotError as exc:
        raise SnapshotError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SnapshotError(f"{where}: {MANIFEST} is corrupt (missing or malformed {exc})") from None
    return Snapshot(directory, manifest, state)


def _check_manifest(directory: Path, manifest: dict) -> None:
    kernel = manifest["kernel"]
    path = Path(kernel["path"])
    if not path.is_file():
        raise SnapshotError(f"its kernel {path} is gone")
    if path.stat().st_size != kernel["size"] or file_sha256(path) != kernel["sha256"]:
        raise SnapshotError(f"its kernel {path} changed since the snapshot was taken")
    memory = manifest["memory"]
    if not isinstance(memory["size"], int) or memory["size"] <= 0 or memory["size"] != manifest["mem_mb"] << 20:
        raise SnapshotError(f"{MANIFEST} is corrupt (memory size {memory['size']!r} for {manifest['mem_mb']} MiB)")
    _expect_size(directory / _plain(memory["file"]), memory["size"], "guest memory")
    for entry in manifest["devices"]:
        if entry["kind"] == "block":
            _expect_size(directory / _plain(entry["image"]), entry["size"], "disk image")


def _plain(name: str) -> str:
    """A file name inside the snapshot directory, never a path out of it."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name:
        raise SnapshotError(f"{MANIFEST} is corrupt (file name {name!r} is not a plain name)")
    return name


def _expect_size(path: Path, size: int, what: str) -> None:
    try:
        actual = path.stat().st_size
    except OSError:
        raise SnapshotError(f"its {what} file {path.name} is missing") from None
    if actual != size:
        raise SnapshotError(f"its {what} file {path.name} holds {actual} bytes, the manifest says {size} "
                            f"({'truncated' if actual < size else 'wrong size'})")


def _read_state(directory: Path, manifest: dict) -> dict:
    meta = manifest["state"]
    try:
        raw = (directory / _plain(meta["file"])).read_bytes()
    except OSError:
        raise SnapshotError(f"its state file {meta['file']} is missing") from None
    if len(raw) != meta["size"] or hashlib.sha256(raw).hexdigest() != meta["sha256"]:
        raise SnapshotError(f"its state file {meta['file']} is corrupt (size or sha256 differs from the manifest's)")
    try:
        state = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SnapshotError(f"its state file {meta['file']} is corrupt ({exc})") from None
    if not isinstance(state, dict) or "backend" not in state or "devices" not in state:
        raise SnapshotError(f"its state file {meta['file']} lacks the backend or device state")
    return state
