"""KTAP / TAP parsing: kselftest and KUnit output turned into per-subtest results.

Nested KTAP subtests are indented (4 spaces, or 2 in older KUnit); a parent's own
result line follows its children, so children are held until their parent closes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_RESULT = re.compile(r"^(?P<ok>ok|not ok)\s+(?P<num>\d+)\s*(?:-\s*)?(?P<name>[^#]*?)\s*(?:#\s*(?P<directive>.*))?$")
_PLAN = re.compile(r"^1\.\.(\d+)")
_VERSION = re.compile(r"^(K?TAP) version (\d+)")


@dataclass(frozen=True)
class Case:
    number: int
    name: str
    status: str          # "pass", "fail", "skip" or "todo"
    directive: str = ""
    diagnostics: tuple[str, ...] = ()
    children: tuple["Case", ...] = ()

    def flatten(self, prefix: str = "") -> list["Case"]:
        """This case and its subtests, names joined with '/'."""
        name = f"{prefix}{self.name}"
        own = [Case(self.number, name, self.status, self.directive, self.diagnostics)]
        return own + [c for child in self.children for c in child.flatten(name + "/")]


@dataclass
class KtapResult:
    cases: list[Case] = field(default_factory=list)
    planned: int | None = None
    version: str = ""

    @property
    def failed(self) -> list[Case]:
        return [c for c in self.all_cases() if c.status == "fail"]

    @property
    def passed(self) -> bool:
        complete = self.planned is None or self.planned == len(self.cases)
        return complete and not self.failed and bool(self.cases)

    def all_cases(self) -> list[Case]:
        return [c for case in self.cases for c in case.flatten()]


def _status(ok: str, directive: str) -> str:
    word = directive.split(None, 1)[0].upper() if directive else ""
    if word == "SKIP":
        return "skip"
    if word == "TODO":
        return "todo"
    return "pass" if ok == "ok" else "fail"


def _depth(line: str) -> int:
    stripped = len(line) - len(line.lstrip(" \t"))
    return stripped // 2  # both 2- and 4-space indents nest; only the order matters


def parse(text: str) -> KtapResult:
    """Parse TAP 13 / KTAP 1 text (extra lines such as kernel messages are ignored)."""
    result = KtapResult()
    pending: dict[int, list[Case]] = {}     # depth -> finished cases waiting for their parent
    diagnostics: dict[int, list[str]] = {}
    top_depth = None
    for raw in text.replace("\r", "").split("\n"):
        line = raw.strip()
        depth = _depth(raw)
        if (m := _VERSION.match(line)) and top_depth is None:
            result.version, top_depth = f"{m.group(1)} {m.group(2)}", depth
        elif (m := _PLAN.match(line)) and depth == (top_depth or 0) and result.planned is None:
            result.planned, top_depth = int(m.group(1)), depth
        elif m := _RESULT.match(line):
            top = depth if top_depth is None else top_depth
            top_depth = top
            directive = (m.group("directive") or "").strip()
            children = tuple(c for d in sorted(pending) if d > depth for c in pending.pop(d))
            case = Case(int(m.group("num")), m.group("name").strip() or f"test {m.group('num')}",
                        _status(m.group("ok"), directive), directive,
                        tuple(diagnostics.pop(depth, [])), children)
            (result.cases if depth <= top else pending.setdefault(depth, [])).append(case)
        elif line.startswith("#"):
            diagnostics.setdefault(depth, []).append(line.lstrip("# "))
    return result
