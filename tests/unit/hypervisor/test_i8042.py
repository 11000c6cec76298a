"""The i8042 answers Linux's controller commands the way its driver polls for them."""
import pytest

from launcher.hypervisor.i8042 import COMMAND_PORT, DATA_PORT, I8042, Ctr, Status

STATUS = COMMAND_PORT - DATA_PORT


def controller():
    resets = []
    return I8042(lambda: resets.append(1)), resets


def command(kbc: I8042, value: int, data: int | None = None) -> list[int]:
    """What Linux's i8042_command does: command, optional data byte, then poll for replies."""
    kbc.write(STATUS, 1, value)
    if data is not None:
        kbc.write(0, 1, data)
    replies = []
    while kbc.read(STATUS, 1) & Status.OBF:
        replies.append(kbc.read(0, 1))
    return replies


def test_an_idle_controller_has_nothing_to_flush():
    kbc, _ = controller()
    assert not kbc.read(STATUS, 1) & Status.OBF and kbc.read(STATUS, 1) != 0xFF


def test_ctr_reads_back_what_was_written():
    kbc, _ = controller()
    assert command(kbc, 0x20) == [Ctr.KBDINT | Ctr.SYS | Ctr.XLATE]
    assert command(kbc, 0x60, 0x65) == []
    assert command(kbc, 0x20) == [0x65]


@pytest.mark.parametrize("cmd, bit, on", [(0xA7, Ctr.AUXDIS, True), (0xA8, Ctr.AUXDIS, False),
                                          (0xAD, Ctr.KBDDIS, True), (0xAE, Ctr.KBDDIS, False)])
def test_port_enable_and_disable_flip_the_ctr_bits(cmd, bit, on):
    kbc, _ = controller()
    kbc.ctr = Ctr(0) if on else Ctr(0xFF)
    assert command(kbc, cmd) == []
    assert bool(command(kbc, 0x20)[0] & bit) is on


def test_self_tests_pass_and_the_missing_mouse_port_fails_its_test():
    kbc, _ = controller()
    assert command(kbc, 0xAA) == [0x55] and kbc.read(STATUS, 1) & Status.SYS
    assert command(kbc, 0xAB) == [0x00]
    assert command(kbc, 0xA9) != [0x00]


def test_keyboard_loopback_echoes_and_nothing_answers_the_mouse_or_keyboard():
    kbc, _ = controller()
    assert command(kbc, 0xD2, 0x5A) == [0x5A]
    assert command(kbc, 0xD3, 0x5A) == []
    kbc.write(0, 1, 0xF2)                               # a byte for the (absent) keyboard
    assert not kbc.read(STATUS, 1) & Status.OBF


@pytest.mark.parametrize("cmd, data", [(0xFE, None), (0xF0, None), (0xD1, 0x00)])
def test_reset_line_pulsed_or_written_low_resets(cmd, data):
    kbc, resets = controller()
    command(kbc, cmd, data)
    assert resets == [1]


def test_output_port_written_with_reset_high_does_not_reset():
    kbc, resets = controller()
    command(kbc, 0xD1, 0x03)
    command(kbc, 0xFF)                                  # pulse no lines
    assert resets == []


def test_a_guest_filling_the_output_buffer_is_bounded():
    kbc, _ = controller()
    for _ in range(1000):
        kbc.write(STATUS, 1, 0x20)
    assert len(command(kbc, 0x20)) == 16
