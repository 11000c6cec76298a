"""harness.differential without guests: what a difference reads like, and the test-only block
fault the differential runs' own integration test injects."""
from __future__ import annotations

import pytest

from harness.console import CommandResult
from harness.differential import Differential, DifferentialMismatch, describe, make_disk
from launcher.devices.block import FlippedReads


def result(stdout: bytes, status: int = 0, stderr: bytes = b"") -> CommandResult:
    return CommandResult((stdout + stderr).decode(errors="replace"), status, stdout, stderr)


def test_agreeing_results_describe_nothing():
    assert describe("cmd", ("kvm", result(b"a\n")), ("qemu", result(b"a\n"))) is None


def test_a_difference_names_the_command_both_sides_and_the_first_byte():
    said = describe("od /dev/vda", ("kvm", result(b" ff 01\n 02\n")), ("qemu", result(b" 00 01\n 02\n")), agreed=2)
    assert said.startswith("differential run: `od /dev/vda` differs between kvm and qemu (after 2 command(s) that agreed)")
    assert "stdout differs (--- kvm, +++ qemu):" in said
    assert "- ff 01" in said and "+ 00 01" in said
    assert "first difference at byte 1 (kvm: 66 66 20 30 31 0a 20 30; qemu: 30 30 20 30 31 0a 20 30)" in said


def test_status_and_stderr_are_compared_unless_left_out():
    one, other = ("kvm", result(b"", 5, b"I/O error\n")), ("qemu", result(b"", 0))
    said = describe("dd", one, other)
    assert "exit status: kvm 5, qemu 0" in said and "-I/O error" in said
    assert describe("dd", one, other, compare=("stdout",)) is None


def test_binary_output_is_shown_escaped():
    said = describe("cat", ("a", result(b"\x00\xff\n")), ("b", result(b"\x00\xfe\n")))
    assert "-\\x00\\xff" in said and "+\\x00\\xfe" in said


class FakeGuest:
    def __init__(self, answer: bytes):
        self.answer = answer

    def run(self, command, timeout=60, input=None):
        return result(self.answer)


def test_run_returns_the_common_result_and_raises_on_the_first_difference():
    runs = Differential({"kvm": FakeGuest(b"same\n"), "qemu": FakeGuest(b"same\n")})
    assert runs.run("echo same").stdout == "same\n" and runs.agreed == ["echo same"]
    runs.guests["qemu"].answer = b"other\n"
    with pytest.raises(DifferentialMismatch, match="after 1 command"):
        runs.run("echo same")


def test_disk_items(tmp_path):
    assert make_disk(b"abc", tmp_path / "a").read_bytes()[:4] == b"abc\0"
    assert make_disk(2, tmp_path / "b").stat().st_size == 2 << 20
    assert make_disk(tmp_path / "a", tmp_path / "c").read_bytes() == (tmp_path / "a").read_bytes()
    with pytest.raises(TypeError, match="give bytes, a size in MiB or a Path"):
        make_disk("text", tmp_path / "d")


class Backend:
    def read_into(self, views, offset):
        for view in views:
            view[:] = bytes(len(view))
        return sum(len(v) for v in views)

    size = 4096


def test_the_flipped_reads_fault_inverts_the_first_byte_of_each_read():
    faulty = FlippedReads(Backend())
    first, second = bytearray(512), bytearray(512)
    assert faulty.read_into([memoryview(bytearray()), memoryview(first), memoryview(second)], 0) == 1024
    assert first[0] == 0xFF and not any(first[1:]) and not any(second)
    assert faulty.size == 4096          # everything else is the backend's
