"""Host quirks: kvm_pvm detection, the options it needs, and naming rejected instructions."""
import subprocess

import pytest

from launcher import hostquirks
from launcher.hostquirks import HostKind
from launcher.hypervisor import kvm_exits
from launcher.symbols import SystemMap


def test_detection_follows_the_module_directory(tmp_path):
    assert hostquirks.detect_host(tmp_path) is HostKind.KVM_PVM
    assert hostquirks.detect_host(tmp_path / "absent") is HostKind.KVM


def glibc_cpu_features(env: dict) -> dict:
    """What the host's glibc loader (same 2.36 as the guest's busybox) makes of its CPU under env."""
    out = subprocess.run(["/lib64/ld-linux-x86-64.so.2", "--list-diagnostics"], env=env,
                         capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if line.startswith("x86.cpu_features"))


def test_the_tunables_clear_avx_in_this_glibc():
    # glibc silently ignores names it does not know: check which bits really went.
    option = next(o for o in hostquirks.PVM_OPTIONS if o.key == "GLIBC_TUNABLES")
    tuned = glibc_cpu_features({"GLIBC_TUNABLES": option.value})
    assert tuned["x86.cpu_features.preferred.AVX_Fast_Unaligned_Load"] == "0x0"
    leaf7_ebx = int(tuned["x86.cpu_features.features[0x1].active[0x1]"], 16)
    leaf1_ecx = int(tuned["x86.cpu_features.features[0x0].active[0x2]"], 16)
    assert leaf1_ecx & (1 << 28 | 1 << 12) == 0                           # AVX, FMA
    assert leaf7_ebx & (1 << 5 | 1 << 16 | 1 << 17 | 1 << 28 | 1 << 30 | 1 << 31) == 0   # AVX2, AVX-512


def test_pvm_options_are_exactly_the_measured_set():
    rendered = [o.render() for o in hostquirks.kernel_options(HostKind.KVM_PVM, 2000000)]
    assert rendered == ["tsc_early_khz=2000000", "noxsave", "clearcpuid=smap,popcnt", "rodata=off", "kvm_pvm_quirks",
                        "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,"
                        "-AVX512CD,-FMA,-AVX_Fast_Unaligned_Load"]
    assert [o.render() for o in hostquirks.kernel_options(HostKind.KVM, None)] == []


@pytest.mark.parametrize("hexbytes,name,remedy", [
    ("0fae2f", "xrstor", "noxsave"),
    ("480fae2f", "xrstor", "noxsave"),
    ("0f01ca", "clac", "clearcpuid=smap"),
    ("0f01cb", "stac", "clearcpuid=smap"),
    ("f3480fb8c7", "popcnt", "clearcpuid=popcnt"),
    ("f0480fc70e", "lock cmpxchg16b", "SLOB"),
    ("cc", "int3", "JUMP_LABEL"),
    ("9b", "fwait", "compatibility patch"),
    ("0fc71f", "xrstors", "noxsave"),
])
def test_known_instructions(hexbytes, name, remedy):
    found, known = hostquirks.decode(bytes.fromhex(hexbytes) + bytes(4))
    assert found == name and remedy in known.remedy


@pytest.mark.parametrize("hexbytes", ["90", "0fb8c7", "0fc70e", "0faee8", ""])
def test_other_instructions_are_not_guessed(hexbytes):
    # popcnt needs F3, cmpxchg16b needs REX.W, 0f ae e8 is lfence (register form)
    assert hostquirks.decode(bytes.fromhex(hexbytes)) == (None, None)


def test_emulation_failure_paragraph_with_symbol():
    smap = SystemMap.parse("ffffffff81000000 T _text\nffffffff81020000 T fpu__drop\nffffffff81030000 t other\n")
    text = kvm_exits.emulation_failure(bytes.fromhex("9b0f0b"), 0xFFFFFFFF81020010, smap)
    assert "`fwait`" in text and "fpu__drop+0x10" in text and "9b 0f 0b" in text and "Known remedy" in text
    assert "\n" not in text


def test_emulation_failure_unknown_instruction_without_map():
    text = kvm_exits.emulation_failure(b"\x90", 0x1000, None)
    assert "no System.map" in text and "not among the known kvm_pvm cases" in text


def test_system_map_beside_a_kernel(tmp_path):
    (tmp_path / "System.map-6.1.0").write_text("ffffffff81000000 T startup_64\n")
    smap = SystemMap.beside(tmp_path / "vmlinuz-6.1.0")
    assert smap.lookup(0xFFFFFFFF81000004) == "startup_64+0x4"
    assert smap.lookup(0x1000) is None
    assert SystemMap.beside(tmp_path / "elsewhere" / "vmlinux") is None


def test_several_vcpus_on_kvm_pvm_get_a_warning_and_nowhere_else():
    from launcher.hostquirks import HostKind, smp_warning
    assert "--cpus 1" in smp_warning(HostKind.KVM_PVM, 2)
    assert smp_warning(HostKind.KVM_PVM, 1) is None and smp_warning(HostKind.KVM, 4) is None
