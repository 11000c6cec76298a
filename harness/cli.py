"""The `lguest-harness` command: one sub-command per module, imported only when used.

Each command module exposes HELP (one line), configure(parser) and run(args) -> int.
The launcher's own commands live in launcher/; the harness adds what sits on top
(kernel recipe, benchmarks) and registers the fake backend.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "bench": "harness.bench",
    "boot": "launcher.cli",
    "snapshot": "launcher.cli_snapshot",
    "restore": "launcher.cli_restore",
    "kernel": "harness.kernel",
    "demo": "harness.demo",
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("lguest-harness")
    except PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    from harness.backends import register
    register()      # `--backend fake`, `--backend qemu`: the launcher never imports the harness itself
    parser = argparse.ArgumentParser(
        prog="lguest-harness",
        description="Boot and test Linux guest kernels and virtio devices.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
