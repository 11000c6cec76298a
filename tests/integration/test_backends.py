"""One guest test, every backend this machine has (issue 7, item 3): the ids name the backend.
lguest is left out because no kernel since 4.14 offers /dev/lguest; the plugin skips a backend
a host lacks, naming the device it needs (tests/unit/harness/test_plugin_backends.py).  The fake one boots the same kernel and initramfs through the real Launcher, its scripted
guest answering with a tiny shell (harness.fakes.fake_shell); qemu runs the same kernel and
initramfs under qemu-system-x86_64 (harness.qemu).  The guest is a fresh one: on kvm it is
restored from the session's snapshot of this spec (shared with other fresh tests), not booted."""
import pytest


@pytest.mark.guest(backends=["fake", "kvm", "qemu"], fresh=True)
def test_same_test_on_every_backend(guest):
    assert guest.run("uname -r").status == 0
    assert guest.run("false").status == 1
    assert guest.run("nosuch-command").status == 127
    assert guest.run("echo one; echo 'two  words'").output == "one\ntwo  words\n"
    assert "console=ttyS0" in guest.run("cat /proc/cmdline").output
