"""The L1 VM for ordinary KVM: its init script and QEMU command line (the stage itself runs in CI)."""
import shlex
import subprocess
import sys

from harness import nested


def test_init_loads_modules_in_order_then_runs_the_command_quoted_in_the_host_tree(tmp_path):
    workdir = tmp_path / "my repo"
    workdir.mkdir()
    command = [sys.executable, "-c", "import os; print(os.getcwd(), os.environ['LH_X'], 'a  b')"]
    init = nested.l1_init(["kvm.ko", "kvm-amd.ko"], str(workdir), command, {"LH_X": "it's"})
    lines = init.splitlines()
    assert lines.index("insmod /modules/kvm.ko || echo 'nested: insmod kvm.ko failed'") < \
        lines.index("insmod /modules/kvm-amd.ko || echo 'nested: insmod kvm-amd.ko failed'")
    chroot, newroot, shell, flag, job = shlex.split(next(line for line in lines if line.startswith("chroot ")))
    assert (chroot, newroot, shell, flag) == ("chroot", "/newroot", "/bin/sh", "-c")
    ran = subprocess.run(["/bin/sh", "-c", job], capture_output=True, text=True, check=True)
    assert ran.stdout == f"{workdir} it's a  b\n"       # the job survives both levels of quoting
    assert lines[-2:] == [f'echo "{nested.EXIT_LINE}$?"', "poweroff -f"]
    assert "lowerdir=/host,upperdir=/rw/upper" in init and "ro,cache=loose" in init   # the host stays read-only


def test_exit_status_is_read_from_the_console_among_kernel_noise():
    console = b"[ 1.0] boot\r\nnested: /dev/kvm is kvm_amd\r\n... lguest-harness-nested: exit 5\r\n[ 9.9] reboot: Power down"
    assert [int(n) for n in nested.EXIT_PATTERN.findall(console)] == [5]


def test_l1_is_an_svm_capable_amd_cpu_with_the_host_root_read_only(tmp_path):
    argv = nested.qemu_argv(tmp_path / "vmlinuz", tmp_path / "l1.cpio", cpus=2, mem_mb=4096)
    assert argv[argv.index("-cpu") + 1] == "EPYC" and argv[argv.index("-accel") + 1].startswith("tcg")
    virtfs = argv[argv.index("-virtfs") + 1]
    assert "path=/," in virtfs and "readonly=on" in virtfs and "kvm_amd.nested=1" in argv[argv.index("-append") + 1]
