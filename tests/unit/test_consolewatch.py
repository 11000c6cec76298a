"""Console lines that end a run, recognised across chunk boundaries."""
from launcher.consolewatch import ConsoleEvent, ConsoleWatcher, MarkerClock
from launcher.io.console import CtrlCCounter


def test_events_complete_at_newline_across_chunks():
    w = ConsoleWatcher()
    assert w.feed(b"[ 1.0] reboot: Pow") == []
    assert w.feed(b"er down\r\n") == [ConsoleEvent.POWER_OFF]


def test_panic_line_is_kept():
    w = ConsoleWatcher()
    w.feed(b"[    2.5] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000\r\n")
    assert w.seen(ConsoleEvent.PANIC)
    assert w.panic_line.endswith("Attempted to kill init! exitcode=0x00000000")


def test_other_events_and_tail():
    w = ConsoleWatcher()
    assert w.feed(b"System halted\nreboot: Restarting system\n") == [ConsoleEvent.HALTED, ConsoleEvent.RESTART]
    assert w.tail(1) == "reboot: Restarting system"


def test_endless_line_is_bounded():
    w = ConsoleWatcher()
    w.feed(b"x" * 100000)
    assert len(w._line) < 5000


def test_three_ctrl_c_within_a_second():
    now = [0.0]
    counter = CtrlCCounter(clock=lambda: now[0])
    assert not counter.feed(b"\x03\x03")
    now[0] = 1.5
    assert not counter.feed(b"\x03")  # the first two are too old
    now[0] = 1.6
    assert not counter.feed(b"a\x03")
    assert counter.feed(b"\x03")


def test_marker_split_across_writes():
    clock = MarkerClock("ready!", started=0.0)
    clock.feed(b"...rea", lambda: 1.0)
    assert clock.seen_at is None
    clock.feed(b"dy!\n", lambda: 2.0)
    assert clock.in_run_at == 2.0
