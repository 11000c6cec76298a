"""Loader errors: one leaf per rule a kernel or initrd image can break."""
from launcher.errors import LoaderError


class KernelUnreadable(LoaderError):
    """The kernel file could not be read."""


class NotAKernel(LoaderError):
    """The file is neither an ELF vmlinux nor a bzImage."""


class KernelKindUnsupported(LoaderError):
    """The backend does not boot this kind of kernel (e.g. a 32-bit one where only 64-bit boots)."""


class ElfMalformed(LoaderError):
    """The ELF headers could not be parsed at all."""


class ElfWrongClass(LoaderError):
    """Only ELFCLASS32 with EM_386 and ELFCLASS64 with EM_X86_64 are loaded."""


class ElfNotExecutable(LoaderError):
    """e_type must be ET_EXEC: a vmlinux is linked at fixed addresses."""


class ElfBadPhentsize(LoaderError):
    """e_phentsize must equal sizeof(Elf32_Phdr) or sizeof(Elf64_Phdr)."""


class ElfBadPhnum(LoaderError):
    """e_phnum must be between 1 and 65536 / e_phentsize."""


class ElfNoLoadSegment(LoaderError):
    """A kernel needs at least one PT_LOAD segment."""


class SegmentOutsideFile(LoaderError):
    """A PT_LOAD segment's file bytes (p_offset + p_filesz) lie past the end of the file."""


class SegmentOutsideMemory(LoaderError):
    """A PT_LOAD segment (p_paddr + p_memsz) does not fit in guest memory."""


class SegmentSizeInverted(LoaderError):
    """p_filesz is larger than p_memsz."""


class EntryOutsideMemory(LoaderError):
    """e_entry / code32_start is not inside guest memory."""


class BzImageNoMagic(LoaderError):
    """A bzImage carries "HdrS" at offset 0x202."""


class BzImageTruncated(LoaderError):
    """The setup sectors or the payload run past the end of the file."""


class BzImageTooOld(LoaderError):
    """Extracting the payload needs boot protocol 2.08 (payload_offset/payload_length)."""


class PayloadUnknownFormat(LoaderError):
    """The compressed payload's magic bytes match no supported compressor."""


class PayloadCorrupt(LoaderError):
    """The compressed payload did not decompress cleanly."""


class PayloadTooLarge(LoaderError):
    """The decompressed payload exceeds the size limit (a decompression bomb guard)."""


class InitrdUnreadable(LoaderError):
    """The initrd file could not be read."""


class InitrdTooLarge(LoaderError):
    """The initrd does not fit between the kernel's end and the top of guest RAM."""


class CmdlineInvalid(LoaderError):
    """The kernel command line contains a NUL byte or an empty/invalid item."""


class CmdlineTooLong(LoaderError):
    """The kernel command line plus its NUL terminator exceeds the boot protocol's cmdline_size."""


class BootParamsInvalid(LoaderError):
    """A boot_params field value does not fit its field or the e820 table is too long."""
