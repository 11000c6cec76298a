"""The fake guest's shell: the tty and the interpreter as pure functions, then the whole thing
end to end through `lguest-harness boot --backend fake` driven by harness.console.Guest (the
real Launcher, lguest device page and console virtqueues both ways), and the plugin on top."""
import sys
import time
from pathlib import Path

import pexpect
import pytest

from harness.console import CommandResult, Guest, GuestTimeout
from harness.fakes import lguest_host
from harness.fakes.fake_shell import (
    SLEEP_MAX, EndOfInput, Exit, FakeShell, Interpreter, Interrupt, Line, PowerOff, Sleep, Terminal,
    Write,
)
from harness.initramfs import PROMPT, READY_MARKER
from harness.launch import GuestSpec, boot
from tests.unit import tiny_guests as g

REPO = Path(__file__).resolve().parents[4]
CMDLINE = "console=ttyS0 panic=-1 quiet fake.shell"


def run(line: str, status: int = 0, cmdline: str = CMDLINE) -> tuple[str, int, list]:
    """(output, $? afterwards, non-Write effects) of one line, $? starting at `status`."""
    shell = Interpreter(cmdline)
    shell.status = status
    effects = shell.run_line(line)
    output = b"".join(e.data for e in effects if isinstance(e, Write)).decode()
    return output, shell.status, [e for e in effects if not isinstance(e, Write)]


# -- the interpreter ---------------------------------------------------------------------------------

@pytest.mark.parametrize("line,output,status", [
    ("echo hello world", "hello world\n", 0),
    ("echo   spaced    out  ", "spaced out\n", 0),
    ("echo -n no newline", "no newline", 0),
    ("echo", "\n", 0),
    ("echo LHabc''B", "LHabcB\n", 0),                       # the console API's marker trick
    ("echo 'a  b' \"c  d\" e\\ f", "a  b c  d e f\n", 0),
    ("echo '$?' \"$?\" $?", "$? 0 0\n", 0),
    ("echo a # a comment", "a\n", 0),
    ("echo a$ $", "a$ $\n", 0),
    ("echo ''", "\n", 0),
    ("true", "", 0),
    ("false", "", 1),
    ("false; echo $?", "1\n", 0),
    ("false; echo LHt''E:$?", "LHtE:1\n", 0),
    ("true; echo $?; false; echo \"s=$?\"", "0\ns=1\n", 0),
    ("nosuch; echo $?", "sh: nosuch: not found\n127\n", 0),
    ("nosuch --flag", "sh: nosuch: not found\n", 127),
    ("true && echo yes || echo no", "yes\n", 0),
    ("false && echo yes || echo no", "no\n", 0),
    ("false || false && echo never", "", 1),
    ("echo a;", "a\n", 0),
    ("", "", 0),
    ("   ", "", 0),
    ("uname", "Linux\n", 0),
    ("uname -r", "fake-lguest\n", 0),
    ("uname -s -r", "Linux fake-lguest\n", 0),
    ("uname -rs", "Linux fake-lguest\n", 0),
    ("uname -a", "Linux (none) fake-lguest #1 lguest-harness fake guest x86_64 GNU/Linux\n", 0),
    ("uname -x", "uname: invalid option '-x' (the fake shell has -snrvma)\n", 1),
    ("cat /proc/cmdline", CMDLINE + "\n", 0),
    ("cat /etc/passwd", "cat: can't open '/etc/passwd': No such file or directory\n", 1),
    ("cat /proc/cmdline /nope", CMDLINE + "\ncat: can't open '/nope': No such file or directory\n", 1),
    ("cat", "cat: reading standard input is not supported by the fake shell\n", 1),
    ("poweroff --now", "poweroff: the fake shell only has poweroff [-f]\n", 1),
    ("sleep", f"sleep: usage: sleep SECONDS (0 to {SLEEP_MAX:g} in the fake shell)\n", 1),
    ("sleep soon", f"sleep: usage: sleep SECONDS (0 to {SLEEP_MAX:g} in the fake shell)\n", 1),
    (f"sleep {SLEEP_MAX + 1:g}", f"sleep: usage: sleep SECONDS (0 to {SLEEP_MAX:g} in the fake shell)\n", 1),
    ("exit soon", "sh: exit: Illegal number: soon\n", 2),
])
def test_line(line, output, status):
    assert run(line)[:2] == (output, status)


@pytest.mark.parametrize("line,message", [
    ("echo $((6*7))", "$(... is not supported by the fake shell (only $? is expanded)"),
    ("echo $HOME", "$H... is not supported by the fake shell (only $? is expanded)"),
    ("echo \"${x}\"", "${... is not supported by the fake shell (only $? is expanded)"),
    ("echo a | cat", "pipes ('|') are not supported by the fake shell"),
    ("echo a > /tmp/x", "redirections ('>') are not supported by the fake shell"),
    ("echo a&", "background jobs ('&') are not supported by the fake shell"),
    ("(true)", "subshells ('(') are not supported by the fake shell"),
    ("echo `uname`", "command substitution ('`') are not supported by the fake shell"),
    ("echo 'open", "unterminated quoted string"),
    ("echo \"open", "unterminated quoted string"),
    ("echo a \\", "a backslash at the end of the line (continuation) is not supported"),
    ("; echo a", 'unexpected ";"'),
    ("echo a;; echo b", 'unexpected ";"'),
    ("true &&", 'unexpected end of line after "&&"'),
    ("|| true", 'unexpected "||"'),
])
def test_unsupported_syntax_refuses_the_whole_line(line, message):
    output, status, effects = run(line)
    assert (output, status, effects) == (f"sh: syntax error: {message}\n", 2, [])


def test_status_survives_between_lines():
    shell = Interpreter()
    shell.run_line("false")
    assert shell.run_line("echo $?") == [Write(b"1\n")]
    shell.run_line("nosuch")
    assert shell.run_line("echo $?") == [Write(b"127\n")]


def test_empty_line_keeps_status():
    shell = Interpreter()
    shell.run_line("false")
    shell.run_line("   ")
    assert shell.status == 1


@pytest.mark.parametrize("line,effects,status", [
    ("poweroff -f", [PowerOff()], 0),
    ("poweroff", [PowerOff()], 0),
    ("exit", [Exit(0)], 0),
    ("exit 3", [Exit(3)], 3),
    ("exit 257", [Exit(1)], 1),
    ("sleep 0.5", [Sleep(0.5)], 0),
    ("sleep 1; sleep 2", [Sleep(1.0), Sleep(2.0)], 0),
])
def test_effects(line, effects, status):
    assert run(line)[1:] == (status, effects)


def test_exit_without_a_number_keeps_the_status():
    assert run("exit", status=5)[1:] == (5, [Exit(5)])


def test_nothing_runs_after_poweroff_or_exit():
    assert run("echo a; poweroff -f; echo b")[0] == "a\n"
    assert run("exit 4; echo b") == ("", 4, [Exit(4)])


def test_effects_keep_their_order():
    shell = Interpreter()
    assert shell.run_line("echo a; sleep 1; echo b; poweroff -f; echo c") == [
        Write(b"a\n"), Sleep(1.0), Write(b"b\n"), PowerOff()]


def test_release_is_configurable():
    assert Interpreter(release="6.6.0-test").run_line("uname -r") == [Write(b"6.6.0-test\n")]


# -- the tty -------------------------------------------------------------------------------------------

def test_terminal_echoes_and_ends_lines_on_cr_or_lf():
    term = Terminal()
    assert term.feed(b"ab\rcd\n") == [b"a", b"b", b"\r\n", Line("ab"), b"c", b"d", b"\r\n", Line("cd")]
    assert term.feed(b"\r\n") == [b"\r\n", Line(""), b"\r\n", Line("")]    # ICRNL: CR LF is two lines


def test_terminal_keeps_a_partial_line_across_buffers():
    term = Terminal()
    assert term.feed(b"ech") == [b"e", b"c", b"h"]
    assert term.feed(b"o\n")[-1] == Line("echo")


def test_terminal_erase_kill_interrupt_and_eof():
    term = Terminal()
    assert term.feed(b"ax\x7f") == [b"a", b"x", b"\b \b"]
    assert term.feed(b"\x08\x08") == [b"\b \b"]                  # nothing left to erase the second time
    assert term.feed(b"abc\x15") == [b"a", b"b", b"c", b"\b \b" * 3]
    assert term.feed(b"ab\x03") == [b"a", b"b", b"^C\r\n", Interrupt()]
    assert term.feed(b"x\x04\x7f\x04") == [b"x", b"\b \b", EndOfInput()]   # ^D only on an empty line
    assert term.feed(b"\n") == [b"\r\n", Line("")]


def test_terminal_erases_whole_utf8_characters():
    term = Terminal()
    term.feed("é".encode() + b"\x7f" + b"\xc3\xa9\n")
    term.feed("aé\x15b\n".encode())
    assert term.feed("ü\n".encode())[-1] == Line("ü")


def test_terminal_caps_a_line_like_n_tty():
    term = Terminal()
    events = term.feed(b"x" * 5000 + b"\n")
    assert events[-1] == Line("x" * 4095) and events.count(b"x") == 4095


# -- tty + interpreter -----------------------------------------------------------------------------------

def joined(effects) -> bytes:
    return b"".join(e.data for e in effects if isinstance(e, Write))


def test_shell_starts_with_the_ready_marker_and_a_prompt():
    assert FakeShell().start() == [Write(f"{READY_MARKER}\r\n{PROMPT}".encode())]


def test_shell_answers_a_console_api_line_as_a_tty_would():
    shell = FakeShell(CMDLINE)
    line = b"echo LH1''B; uname -r; false; echo LH1''E:$?\n"
    effects = shell.feed(line)
    assert len(effects) == 1       # echo, output and prompt in one write
    assert joined(effects) == line[:-1] + b"\r\nLH1B\r\nfake-lguest\r\nLH1E:1\r\n" + PROMPT.encode()


def test_shell_interrupt_and_end_of_input():
    shell = FakeShell()
    assert joined(shell.feed(b"sleep 9\x03")) == b"sleep 9^C\r\n" + PROMPT.encode()
    assert shell.status == 130
    assert shell.feed(b"\x04echo ignored\n") == [Write(b"exit\r\n"), Exit(130)]
    assert shell.ended and shell.feed(b"echo more\n") == []


def test_shell_stops_reading_after_poweroff():
    shell = FakeShell()
    assert shell.feed(b"poweroff -f\necho late\n") == [Write(b"poweroff -f\r\n"), PowerOff()]


def test_shell_sleep_is_an_effect_between_writes():
    shell = FakeShell()
    assert shell.feed(b"echo a; sleep 2; echo b\n") == [
        Write(b"echo a; sleep 2; echo b\r\na\r\n"), Sleep(2.0), Write(b"b\r\n" + PROMPT.encode())]


# -- the console API reads the whole exit status ---------------------------------------------------------

SPLIT_STATUS = r"""
import re, sys, time
print("lguest-harness: ready\n# ", end="", flush=True)
token = re.search(r"LH(\w+)''B", sys.stdin.readline()).group(1)
print(f"LH{token}B\nLH{token}E:1", end="", flush=True)
time.sleep(0.5)
print("27\n# ", end="", flush=True)
time.sleep(10)
"""


def test_run_waits_for_the_whole_status():
    """A status whose digits arrive in two writes (as they may from any guest) is read whole."""
    guest = Guest(pexpect.spawn(sys.executable, ["-c", SPLIT_STATUS], encoding="utf-8"), name="split")
    try:
        guest.wait_ready(timeout=10)
        assert guest.run("nosuch", timeout=10).status == 127
    finally:
        guest.close()


# -- end to end through `lguest-harness boot --backend fake` ------------------------------------------

@pytest.fixture
def kernel(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(g.elf(g.SPIN, 64))
    return path


@pytest.fixture
def booted(kernel, tmp_path, monkeypatch):
    """boot(*kernel args, **GuestSpec fields) -> Guest, waited for; all closed afterwards."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv(lguest_host.BOOT_ENV, raising=False)
    guests = []

    def make(*cmdline, wait=True, **fields):
        spec = GuestSpec(kernel=kernel, backend="fake", mem=16, cmdline=("console=ttyS0", *cmdline), **fields)
        guest = boot(spec, tmp_path / "logs", wait=wait, ready_timeout=30)
        guests.append(guest)
        return guest
    yield make
    for guest in guests:
        guest.close()


def test_fake_spec_asks_for_the_shell_and_patient_device_waits(kernel):
    assert GuestSpec(kernel=kernel, backend="fake").argv()[-2:] == ["fake.shell", "fake.timeout=60"]
    assert not any(a.startswith("fake.") for a in GuestSpec(kernel=kernel, backend="kvm").argv())
    mine = GuestSpec(kernel=kernel, backend="fake", cmdline=("fake.shell", "fake.timeout=2")).argv()
    assert mine.count("fake.shell") == 1 and [a for a in mine if a.startswith("fake.timeout")] == ["fake.timeout=2"]


def test_console_api_on_the_fake_backend(booted):
    started = time.monotonic()
    guest = booted()
    assert guest.run("uname -r") == CommandResult("fake-lguest\n", 0)
    assert guest.run("false").status == 1
    assert guest.run("true").ok
    assert guest.run("echo one; echo 'two  words'").output == "one\ntwo  words\n"
    assert guest.run("nosuch").status == 127
    assert guest.run("cat /proc/cmdline").output == "console=ttyS0 lhagent=console fake.shell fake.timeout=60\n"
    long = "x" * 1000                                  # several receive buffers of 256 bytes
    assert guest.run(f"echo {long}").output == long + "\n"
    assert guest.poweroff() == 0
    assert time.monotonic() - started < 20
    log = guest.launcher_log
    assert "Device console OK" in log and "the guest powered off: CRASH: Power down" in log


def test_console_output_is_byte_exact(booted):
    guest = booted(channel=False)       # the typed console itself, not the command channel
    guest.sendline("echo a")
    guest.expect("echo a\r\na\r\n# ", timeout=10)    # no "\r\r\n": the pty does no output processing
    assert guest.poweroff() == 0


def test_exit_ends_the_shell_as_fake_end_says(booted):
    guest = booted("fake.end=panic", "fake.reason=init_exited", channel=False)    # the typed shell's exit
    guest.sendline("exit 3")
    assert guest.wait_exit(timeout=20) == 3
    assert "Kernel panic - not syncing: init exited" in guest.launcher_log


def test_sleep_and_the_launcher_timeout(booted):
    guest = booted(timeout=3)
    assert guest.run("sleep 0.2").ok
    with pytest.raises(GuestTimeout):
        guest.run("sleep 30", timeout=1)
    assert guest.wait_exit(timeout=20) == 4            # --timeout breaks out of the guest's sleep


def test_plugin_guests_on_the_fake_backend(pytester, kernel, tmp_path):
    """The plugin's `guest` fixture on --guest-backend=fake, without the recipe kernel or image."""
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"not a real initramfs; the fake guest never reads it\n")
    pytester.makepyfile(test_user="""
        import pytest

        def test_uname(guest):
            assert guest.run("uname -r").status == 0
            assert guest.run("false").status == 1

        @pytest.mark.guest(backends=["fake"])
        def test_marker(guest):
            assert "fake.shell" in guest.run("cat /proc/cmdline").output
    """)
    result = pytester.runpytest_subprocess(f"--guest-kernel={kernel}", f"--guest-initrd={initrd}",
                                           "--guest-backend=fake", "--guest-mem=16", "-v", timeout=120)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_marker?fake? PASSED*"])
