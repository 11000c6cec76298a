"""One guest test, every backend (issue 7, item 3): the ids name the backend.  A backend this
host lacks is skipped by the plugin with the device it needs (/dev/lguest on most machines);
the fake one boots the same kernel and initramfs through the real Launcher, its scripted
guest answering with a tiny shell (harness.fakes.fake_shell)."""
import pytest


@pytest.mark.guest(backends=["fake", "kvm", "lguest"])
def test_same_test_on_every_backend(guest):
    assert guest.run("uname -r").status == 0
    assert guest.run("false").status == 1
    assert guest.run("nosuch-command").status == 127
    assert guest.run("echo one; echo 'two  words'").output == "one\ntwo  words\n"
    assert "console=ttyS0" in guest.run("cat /proc/cmdline").output
