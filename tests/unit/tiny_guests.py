"""Hand-assembled guests for the KVM exit-path tests (valid in 32- and 64-bit mode)."""
from tests.unit.loader.images import make_elf

__all__ = ["make_elf"]

MOV_DX_COM1 = bytes.fromhex("66baf803")   # mov dx, 0x3f8
HLT = b"\xf4"
RESET = bytes.fromhex("b0fee664")         # mov al, 0xfe; out 0x64, al
SPIN = bytes.fromhex("ebfe")              # jmp .
UD2 = bytes.fromhex("0f0b")               # #UD with a 1-entry IDT: triple fault
CLAC = bytes.fromhex("0f01ca")
IN_CMOS = bytes.fromhex("e471")           # in al, 0x71
IN_UNKNOWN = bytes.fromhex("e480")        # in al, 0x80


def say(text: bytes) -> bytes:
    return MOV_DX_COM1 + b"".join(bytes([0xB0, c, 0xEE]) for c in text)  # mov al, c; out dx, al


def out_al() -> bytes:
    """out dx, al with dx = COM1: echo whatever is in al to the console."""
    return MOV_DX_COM1 + b"\xee"


def elf(code: bytes, bits: int = 64) -> bytes:
    return make_elf(bits, [(0x100000, code, len(code))], entry=0x100000)
