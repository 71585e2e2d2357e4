"""Compile every kernel with NVRTC (no GPU needed) and report registers and spills per entry.

`python -m finc_cli.inverse.kernel_report` prints the table (`make kernels`); the CI test
asserts on the same rows. NVRTC passes `-Xptxas -v` on to ptxas and returns its lines in the
program log: "Function properties for <mangled>", "N bytes stack frame, N bytes spill stores,
N bytes spill loads", "Used N registers, used N barriers[, N bytes smem][, ... cmem[..]]".
"""

from __future__ import annotations

import re
import sys
from typing import Iterable, Optional, Sequence

from finc_cli.inverse import kernel_source

__all__ = [
    "ARCHS",
    "COMPILE_OPTIONS",
    "compile_program",
    "DEFAULT_BUDGET",
    "file_report",
    "kernel_report",
    "KernelCompileError",
    "main",
    "nvrtc_version",
    "parse_ptxas_log",
    "REGISTER_BUDGET",
    "render_markdown",
    "SHAPES",
]

ARCHS = ("sm_80", "sm_90")
# (k, C') instantiated for the report: the model's k = 3 at C' = 3 and 12, the k = 1 edge and
# larger kernels for register pressure (k = 7 at C' = 12 compiles for 20 s, too slow for CI).
SHAPES = ((3, 3), (3, 12), (1, 1), (5, 6), (7, 3))
# Register budget per thread: the fused kernels are bounded for 1024-thread blocks, the
# per-anti-diagonal ones for 4 blocks of 256 per multiprocessor; both give ptxas 64 at most, so
# more would mean the bounds changed. Spills must stay at zero.
REGISTER_BUDGET = {kind: 64 for kind in kernel_source.INVERSE_KINDS}
DEFAULT_BUDGET = 128  # other .cu files
# What cupy_backend passes, plus what CuPy's RawModule adds itself (-ftz=true, the default
# execution space), so the report describes the code that runs; -Xptxas -v asks for the numbers.
COMPILE_OPTIONS = ("-std=c++17", "-ftz=true", "--device-as-default-execution-space", "-Xptxas", "-v")


class KernelCompileError(RuntimeError):
    """NVRTC rejected a source; the message holds the compiler's log."""


def _nvrtc():
    from cupy.cuda import nvrtc  # the NVRTC binding loads without a GPU or a driver

    return nvrtc


def nvrtc_version() -> tuple[int, int]:
    return tuple(_nvrtc().getVersion())


def compile_program(
    source: str, filename: str, arch: str, name_expressions: Sequence[str] = (), options: Iterable[str] = ()
) -> tuple[bytes, str, dict[str, str]]:
    """Compile to a CUBIN for `arch`; returns (cubin, log, mangled name -> name expression)."""
    nvrtc = _nvrtc()
    program = nvrtc.createProgram(source, filename, [], [])
    try:
        for name in name_expressions:
            nvrtc.addNameExpression(program, name)
        opts = [f"--gpu-architecture={arch}", *COMPILE_OPTIONS, *options]
        try:
            nvrtc.compileProgram(program, opts)
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(program).rstrip("\x00")
            raise KernelCompileError(f"{filename} for {arch} failed ({exc}):\n{log}") from None
        log = nvrtc.getProgramLog(program).rstrip("\x00")
        lowered = {nvrtc.getLoweredName(program, name): name for name in name_expressions}
        return nvrtc.getCUBIN(program), log, lowered
    finally:
        nvrtc.destroyProgram(program)


_PROPERTIES = re.compile(r"Function properties for (\S+)")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def parse_ptxas_log(log: str) -> dict[str, dict]:
    """Per mangled function: registers, spill stores/loads, stack frame, barriers, static smem."""
    out: dict[str, dict] = {}
    current: Optional[str] = None
    for line in log.splitlines():
        if m := _PROPERTIES.search(line):
            current = m.group(1)
            out.setdefault(current, {})
        elif current and (m := _STACK.search(line)):
            out[current].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current and (m := _USED.search(line)):
            out[current].update(
                registers=int(m.group(1)), barriers=int(m.group(2) or 0), static_smem=int(m.group(3) or 0)
            )
    return out


def _kind_of(name: str) -> str:
    for kind in kernel_source.INVERSE_KINDS:
        function = "finc_paper_step" if kind == "paper_step" else f"finc_inverse_{kind}"
        if name.startswith(function + "<"):
            return kind
    return ""


def file_report(filename: str, arch: str, shapes: Sequence[tuple[int, int]] = SHAPES) -> list[dict]:
    """Rows for one .cu file on one architecture; finc_inverse.cu is instantiated per dtype and shape."""
    source = kernel_source.load_source(filename)
    names: list[str] = []
    if filename == kernel_source.INVERSE_SOURCE:
        for c_type in ("float", "double"):
            for k, cg in shapes:
                names += kernel_source.entry_names(c_type, k, cg)
    _, log, lowered = compile_program(source, filename, arch, names)
    rows = []
    for mangled, info in parse_ptxas_log(log).items():
        name = lowered.get(mangled, mangled)
        kind = _kind_of(name)
        rows.append(
            dict(
                file=filename,
                arch=arch,
                kernel=name,
                kind=kind,
                budget=REGISTER_BUDGET.get(kind, DEFAULT_BUDGET),
                **info,
            )
        )
    return sorted(rows, key=lambda r: r["kernel"])


def kernel_report(archs: Sequence[str] = ARCHS, shapes: Sequence[tuple[int, int]] = SHAPES) -> list[dict]:
    """One row per (file, architecture, entry): registers, spills, stack, barriers, budget."""
    rows = []
    for path in kernel_source.kernel_files():
        for arch in archs:
            rows += file_report(path.name, arch, shapes)
    return rows


def render_markdown(rows: Sequence[dict]) -> str:
    lines = [
        "| arch | kernel | registers | budget | spill st/ld (B) | stack (B) | barriers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | `{r['kernel']}` | {r.get('registers', '?')} | {r['budget']} | "
            f"{r.get('spill_stores', '?')}/{r.get('spill_loads', '?')} | {r.get('stack', '?')} | "
            f"{r.get('barriers', '?')} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    archs = tuple(argv) if argv else ARCHS
    try:
        rows = kernel_report(archs)
    except KernelCompileError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"NVRTC {'.'.join(map(str, nvrtc_version()))}")
    print(render_markdown(rows))
    bad = [r for r in rows if r.get("spill_stores") or r.get("spill_loads") or r.get("registers", 0) > r["budget"]]
    for r in bad:
        print(f"over budget or spilling: {r['arch']} {r['kernel']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
