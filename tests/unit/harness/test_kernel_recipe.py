import pytest

from harness import kernel


def test_fragment_has_what_a_test_guest_needs():
    opts = kernel.fragment_options()
    for name in ("CONFIG_64BIT", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_BLK_DEV_INITRD", "CONFIG_DEVTMPFS",
                 "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "CONFIG_VIRTIO_CONSOLE", "CONFIG_VIRTIO_BLK",
                 "CONFIG_VIRTIO_NET", "CONFIG_HW_RANDOM_VIRTIO", "CONFIG_EXT4_FS", "CONFIG_BINFMT_SCRIPT"):
        assert opts[name] == "y", name
    for name in ("CONFIG_JUMP_LABEL", "CONFIG_KPROBES", "CONFIG_FTRACE", "CONFIG_SMP", "CONFIG_ACPI",
                 "CONFIG_PARAVIRT", "CONFIG_RANDOMIZE_BASE", "CONFIG_RELOCATABLE", "CONFIG_MODULES",
                 "CONFIG_X86_5LEVEL", "CONFIG_LEGACY_PTYS", "CONFIG_RETPOLINE"):
        assert opts[name] == "n", name


def test_mismatches_name_each_unhonoured_option():
    wanted = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "y"}
    config = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n"
    assert kernel.config_mismatches(config, wanted) == [
        "CONFIG_B: wanted n, got y", "CONFIG_C: wanted y, got n"]
    assert kernel.config_mismatches("CONFIG_A=y\nCONFIG_C=y\n", wanted) == []


def test_cache_key_follows_source_and_patch(tmp_path):
    tar = tmp_path / "linux.tar.xz"
    tar.write_bytes(b"x")
    assert kernel.cache_key(tar, True) == kernel.cache_key(tar, True)
    assert kernel.cache_key(tar, True) != kernel.cache_key(tar, False)
    tar.write_bytes(b"xy")
    other = kernel.cache_key(tar, True)
    tar.write_bytes(b"x")
    assert kernel.cache_key(tar, True) != other


def test_patch_touches_only_gated_paths():
    patch = kernel.COMPAT_PATCH.read_text()
    assert patch.count("kvm_pvm_quirks") >= 5
    for path in ("arch/x86/mm/fault.c", "arch/x86/kernel/cpu/common.c", "arch/x86/kernel/alternative.c",
                 "arch/x86/kernel/fpu/core.c", "arch/x86/include/asm/proto.h"):
        assert f"+++ b/{path}" in patch


def test_config_command_prints_fragment(capsys):
    from harness.cli import main
    assert main(["kernel", "config"]) == 0
    assert "CONFIG_VIRTIO_MMIO=y" in capsys.readouterr().out


def test_merge_into_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(kernel.KernelBuildError, match="does not exist"):
        kernel._config_command(tmp_path)
