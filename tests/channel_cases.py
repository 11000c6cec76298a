"""The command channel's tests, one body for every backend: tests/integration/test_channel.py runs
them on real KVM guests, tests/unit/harness/fakes/test_fake_channel.py on the fake backend.

Each case takes a booted Guest (with the channel) and a tmp_path.  Commands stay within what both
guests have: busybox ash, and the fake shell's builtins (harness.fakes.fake_shell).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from harness.console import GuestCommandError, GuestProtocolError, GuestTimeout

ALL_BYTES = bytes(range(256)) * 3 + bytes(range(255, -1, -1))     # every value, no trailing newline


def stdout_stderr_and_status(guest, tmp_path: Path) -> None:
    assert guest.channel is not None
    both = guest.run("echo one; echo 'two  words'")
    assert (both.stdout, both.stderr, both.status, both.output) == ("one\ntwo  words\n", "", 0, "one\ntwo  words\n")
    missing = guest.run("nosuch-command")
    assert missing.status == 127 and not missing.ok
    assert missing.stdout == "" and "nosuch-command: not found" in missing.stderr
    assert guest.run("false").status == 1


def stdin_is_given_byte_exact(guest, tmp_path: Path) -> None:
    result = guest.run("cat", input=ALL_BYTES)
    assert result.stdout_bytes == ALL_BYTES and result.status == 0
    assert guest.run("cat", input="héllo\n").stdout == "héllo\n"


def put_get_and_binary_output(guest, tmp_path: Path) -> None:
    local = tmp_path / "all-bytes.bin"
    local.write_bytes(ALL_BYTES)
    guest.put(local, "/tmp/all-bytes.bin")
    shown = guest.run("cat /tmp/all-bytes.bin")
    assert shown.stdout_bytes == ALL_BYTES and shown.stderr_bytes == b""
    back = guest.get("/tmp/all-bytes.bin", tmp_path / "back.bin")
    assert back.read_bytes() == ALL_BYTES
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    guest.put(empty, "/tmp/empty")
    assert guest.get("/tmp/empty", tmp_path / "empty.back").read_bytes() == b""
    with pytest.raises(GuestCommandError, match="No such file"):
        guest.get("/nonexistent/file", tmp_path / "never")


def megabytes_of_output(guest, tmp_path: Path, size: int = 2 << 20) -> None:
    result = guest.run(f"head -c {size} /dev/zero", timeout=600)
    assert result.status == 0 and len(result.stdout_bytes) == size and result.stdout_bytes.count(0) == size
    assert guest.run("echo after").stdout == "after\n"


def a_put_larger_than_memory_is_refused(guest, tmp_path: Path) -> None:
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:
        f.truncate(1 << 30)                 # sparse: never read, the guest refuses first
    with pytest.raises(GuestCommandError, match="no room|no space"):
        guest.put(huge, "/tmp/huge.bin", timeout=120)
    assert guest.run("echo alive").stdout == "alive\n"


def a_command_that_never_ends_times_out(guest, tmp_path: Path, dump_says=("transmitq", "avail idx")) -> None:
    with pytest.raises(GuestTimeout) as err:
        guest.run("echo started; sleep 10", timeout=2)
    message = str(err.value)
    assert "timed out after 2 s" in message and "console tail" in message and "started" in message
    # the launcher's state dump: where the vCPU was and what every virtqueue was waiting for
    # (under the qemu backend, QEMU's virtqueues are not ours: our relay's pipes and QEMU's pid)
    assert "launcher state dump" in message and all(word in message for word in dump_says)
    assert guest.run("echo alive").stdout == "alive\n"


def garbage_from_the_guest_is_a_protocol_error(guest, tmp_path: Path, garbage_command: str) -> None:
    with pytest.raises(GuestProtocolError, match="frame|CRC|magic"):
        guest.run(f"echo mine; {garbage_command}")
    after = guest.run("echo next")             # a fresh hello: nothing of the garbage leaks into it
    assert (after.stdout, after.stderr, after.status) == ("next\n", "", 0)


CASES = [stdout_stderr_and_status, stdin_is_given_byte_exact, put_get_and_binary_output, megabytes_of_output,
         a_put_larger_than_memory_is_refused, a_command_that_never_ends_times_out]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


__all__ = ["CASES", "garbage_from_the_guest_is_a_protocol_error", "os"]
