"""Readable explanations for the exits that end a guest: never a bare errno.

An emulation failure (KVM_EXIT_INTERNAL_ERROR, suberror KVM_INTERNAL_ERROR_EMULATION)
becomes one paragraph: the instruction (named for the known kvm_pvm cases), its
bytes, RIP and the kernel symbol when a System.map is at hand, and the known remedy.
"""
from __future__ import annotations

from native.kvm import lib

from launcher import hostquirks
from launcher.symbols import SystemMap

EXIT_NAMES = {getattr(lib, n): n for n in dir(lib) if n.startswith("KVM_EXIT_") and not n.startswith("KVM_EXIT_IO_")}
SUBERROR_NAMES = {
    lib.KVM_INTERNAL_ERROR_EMULATION: "emulation failure",
    lib.KVM_INTERNAL_ERROR_SIMUL_EX: "exception while delivering an exception",
    lib.KVM_INTERNAL_ERROR_DELIVERY_EV: "event delivery failed",
}


def exit_name(reason: int) -> str:
    return EXIT_NAMES.get(reason, f"exit reason {reason}")


def where(rip: int, system_map: SystemMap | None) -> str:
    symbol = system_map.lookup(rip) if system_map else None
    return f"RIP {rip:#x}" + (f" ({symbol})" if symbol else " (no System.map beside the kernel to name it)")


def emulation_failure(insn: bytes, rip: int, system_map: SystemMap | None) -> str:
    name, known = hostquirks.decode(insn)
    shown = insn.hex(" ") if insn else "not reported by this KVM"
    what = f"`{name}`" if name else "an instruction"
    text = (f"The host's KVM could not emulate {what} in the guest at {where(rip, system_map)}; "
            f"instruction bytes: {shown}.")
    if known:
        return f"{text} Known remedy: {known.remedy}."
    return (f"{text} This instruction is not among the known kvm_pvm cases (xrstor, clac/stac, popcnt, "
            f"cmpxchg16b, int3, fwait); avoid it in the guest kernel (config or command line).")


def internal_error(suberror: int, data: list[int], rip: int, system_map: SystemMap | None) -> str:
    what = SUBERROR_NAMES.get(suberror, f"suberror {suberror}")
    words = " ".join(f"{d:#x}" for d in data) or "none"
    return f"KVM internal error ({what}) at {where(rip, system_map)}; data: {words}."
