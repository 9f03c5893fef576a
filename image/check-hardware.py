#!/usr/bin/env python3
"""Check that the image's kernel drives the capture hardware the image claims, and build
the HAT overlays. customize.sh runs it on the build host against the arm64 root tree:

    image/check-hardware.py ROOT [--install DIR] [--require-module MODULE ...]

The rows of firmware/hardware.py the image drives (``in_image``) say what is needed:

- every kernel in ROOT/lib/modules has each row's modules (``modinfo -b ROOT -k VER``)
  and ROOT/boot/config-VER sets each row's CONFIG_ symbols (=y or =m);
- every overlay source image/overlays/NAME.dts compiles (``dtc -@``; warnings are shown)
  and belongs to a row; every row's overlay has a source;
- each overlay applies (``fdtoverlay``) to the Raspberry Pi device trees of that kernel
  its row names (ROOT/usr/lib/linux-image-VER/broadcom/), and in the result the sound
  card is there, enabled, named so ALSA gives it one of the row's card ids; its CPU and
  codec DAIs (and the bus the codec sits on) are enabled, driven by a module of that
  kernel, and the CPU DAI has DMA channels.

Output: what was verified, one line per kernel and device tree. Exit 1 with one line per
problem (naming the module, overlay or device tree and the fix) if anything is missing;
``--install DIR`` then copies nothing. Otherwise the compiled .dtbo files go to DIR
(the boot partition's overlays/ directory). ``--require-module`` adds a module to the
required ones (tests/test_hardware_image.py proves with it that a missing module fails).

Standard library only (the build host's python3), plus dtc and fdtoverlay
(device-tree-compiler) and modinfo (kmod).
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The hardware table comes from the source tree; the build runs as root, so leave no
# root-owned __pycache__ behind in it.
sys.dont_write_bytecode = True
sys.path.insert(0, str(HERE.parent))

from firmware.hardware import HARDWARE, CaptureHardware, alsa_card_id  # noqa: E402

SAY = "check-hardware:"
CARD_COMPATIBLES = ("simple-audio-card", "audio-graph-card")
# DAI nodes of a simple-audio-card, directly or in its dai-link subnodes.
CPU_NODES = ("simple-audio-card,cpu", "cpu")
CODEC_NODES = ("simple-audio-card,codec", "codec")
FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE, FDT_END_NODE, FDT_PROP, FDT_NOP, FDT_END = 1, 2, 3, 4, 9


# -- a flattened device tree, read --------------------------------------------------------


@dataclass
class Node:
    name: str
    parent: Node | None = None
    props: dict[str, bytes] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)

    @property
    def path(self) -> str:
        if self.parent is None:
            return "/"
        return f"{self.parent.path.rstrip('/')}/{self.name}"

    def text(self, prop: str) -> list[str]:
        """A string-list property (compatible, status, names), [] if absent."""
        raw = self.props.get(prop)
        return [] if raw is None else raw.rstrip(b"\0").decode(errors="replace").split("\0")

    def cells(self, prop: str) -> list[int]:
        raw = self.props.get(prop, b"")
        return list(struct.unpack(f">{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def child(self, *names: str) -> Node | None:
        return next((c for c in self.children if c.name in names), None)

    def enabled(self) -> bool:
        """Its status and every ancestor's is "okay" (absent means okay)."""
        node: Node | None = self
        while node is not None:
            if node.text("status")[:1] not in ([], ["okay"], ["ok"]):
                return False
            node = node.parent
        return True


def read_fdt(data: bytes) -> Node:
    """The tree of a .dtb (v17 layout; only the structure and strings blocks)."""
    magic, _size, off_struct, off_strings = struct.unpack_from(">4I", data, 0)
    if magic != FDT_MAGIC:
        raise ValueError("not a flattened device tree (bad magic)")
    pos = off_struct
    root: Node | None = None
    node: Node | None = None
    while True:
        (token,) = struct.unpack_from(">I", data, pos)
        pos += 4
        if token == FDT_BEGIN_NODE:
            end = data.index(b"\0", pos)
            new = Node(data[pos:end].decode(), parent=node)
            if node is None:
                root = new
            else:
                node.children.append(new)
            node = new
            pos = (end + 4) & ~3
        elif token == FDT_END_NODE:
            assert node is not None
            node = node.parent
        elif token == FDT_PROP:
            length, name_off = struct.unpack_from(">2I", data, pos)
            pos += 8
            name_end = data.index(b"\0", off_strings + name_off)
            assert node is not None
            node.props[data[off_strings + name_off : name_end].decode()] = data[pos : pos + length]
            pos = (pos + length + 3) & ~3
        elif token == FDT_END:
            break
        elif token != FDT_NOP:
            raise ValueError(f"bad structure token {token} at offset {pos - 4}")
    if root is None:
        raise ValueError("empty device tree")
    return root


# -- the kernel ---------------------------------------------------------------------------


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def kernel_versions(root: Path) -> list[str]:
    for base in (root / "lib/modules", root / "usr/lib/modules"):
        if base.is_dir():
            return sorted(p.name for p in base.iterdir() if (p / "modules.dep").is_file())
    return []


def module_file(root: Path, version: str, name_or_alias: str) -> str | None:
    """The file of the module (or the module an alias names) in that kernel, or None."""
    done = run(["modinfo", "-b", str(root), "-k", version, "-F", "filename", name_or_alias])
    files = done.stdout.split()
    return files[0] if done.returncode == 0 and files else None


def config_symbols(root: Path, version: str) -> dict[str, str] | None:
    path = root / "boot" / f"config-{version}"
    if not path.is_file():
        return None
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, eq, value = line.partition("=")
        if eq and key.startswith("CONFIG_"):
            out[key] = value
    return out


def check_kernel(
    root: Path, version: str, rows: list[CaptureHardware], extra: list[str]
) -> list[str]:
    problems: list[str] = []
    needed = [(m, f"{row.name}, row {row.id}") for row in rows for m in row.modules]
    needed += [(m, "--require-module") for m in extra]
    for module, by in needed:
        if module_file(root, version, module) is None:
            problems.append(
                f"kernel {version}: no module {module} (needed by {by}): this kernel cannot"
                f" drive it; install a kernel that builds it, or take the row out of"
                f" firmware/hardware.py and image/README.md"
            )
    config = config_symbols(root, version)
    if config is None:
        problems.append(
            f"kernel {version}: no boot/config-{version} in {root}: the kernel package"
            f" (linux-image-arm64) is incomplete; rebuild the tree"
        )
        return problems
    for row in rows:
        for symbol in row.config_symbols:
            if config.get(symbol) not in ("y", "m"):
                problems.append(
                    f"kernel {version}: {symbol} is not set in boot/config-{version} (needed"
                    f" by {row.name}, row {row.id}): use a kernel built with it (=y or =m)"
                )
    if not problems:
        modules = sorted({m for m, _ in needed})
        symbols = sorted({s for row in rows for s in row.config_symbols})
        print(f"{SAY} kernel {version}: modules {', '.join(modules)}: present")
        print(f"{SAY} kernel {version}: {', '.join(symbols)}: set")
    return problems


# -- the overlays -------------------------------------------------------------------------


def compile_overlays(
    sources: Path, rows: list[CaptureHardware], out: Path
) -> tuple[dict[str, Path], list[str]]:
    """Every sources/NAME.dts compiled to out/NAME.dtbo; the problems."""
    problems: list[str] = []
    compiled: dict[str, Path] = {}
    by_overlay = {row.overlay for row in rows if row.overlay}
    found = sorted(sources.glob("*.dts"))
    for name in sorted(by_overlay - {src.stem for src in found}):
        problems.append(
            f"overlay {name}: no source {sources / name}.dts, though firmware/hardware.py"
            f" has a row for it: add the source or fix the row's overlay name"
        )
    for src in found:
        if src.stem not in by_overlay:
            problems.append(
                f"overlay {src.stem}: no row of firmware/hardware.py names it: add a row"
                f" (card id, modules, device trees) or remove {src}"
            )
            continue
        dtbo = out / f"{src.stem}.dtbo"
        done = run(["dtc", "-@", "-I", "dts", "-O", "dtb", "-o", str(dtbo), str(src)])
        for line in done.stderr.splitlines():
            print(f"{SAY} dtc {src.name}: {line}")
        if done.returncode != 0:
            errors = [ln for ln in done.stderr.splitlines() if "ERROR" in ln or "rror" in ln]
            first = (errors or done.stderr.splitlines() or ["no output"])[0].strip()
            problems.append(
                f"overlay {src.stem}: dtc cannot compile {src}: {first}; fix the source"
            )
            continue
        compiled[src.stem] = dtbo
        print(f"{SAY} overlay {src.stem}: compiles (dtc -@)")
    return compiled, problems


def _dai(tree: Node, phandles: dict[int, Node], link: Node, role: tuple[str, ...]) -> Node | None:
    holder = link.child(*role)
    if holder is None:
        return None
    cells = holder.cells("sound-dai")
    return phandles.get(cells[0]) if cells else None


def _links(card: Node) -> list[Node]:
    """The card node itself (one link) or its dai-link subnodes."""
    links = [c for c in card.children if c.name.split("@")[0].endswith("dai-link")]
    return links or [card]


def _driven(root: Path, version: str, node: Node, problems: list[str], what: str) -> str | None:
    """The module that drives ``node`` (by its compatible), or a problem."""
    base = node.name.split("@")[0]
    for compatible in node.text("compatible"):
        module = module_file(root, version, f"of:N{base}T(null)C{compatible}")
        if module is not None:
            return Path(module).name.split(".ko")[0]
    problems.append(
        f"{what} {node.path} (compatible {', '.join(node.text('compatible')) or 'none'}):"
        f" no module of kernel {version} drives it; fix the compatible or the kernel"
    )
    return None


def check_merged(
    tree: Node, row: CaptureHardware, root: Path, version: str
) -> tuple[list[str], str]:
    """Problems of a device tree with the row's overlay applied; what was verified."""
    problems: list[str] = []
    phandles = {n.cells("phandle")[0]: n for n in tree.walk() if "phandle" in n.props}
    cards = [
        n
        for n in tree.walk()
        if any(c in CARD_COMPATIBLES for c in n.text("compatible"))
        and alsa_card_id(_card_name(n)) in row.card_ids
    ]
    if not cards:
        return [
            f"no sound card whose ALSA id is one of {', '.join(row.card_ids)}"
            f" (row {row.id}): set simple-audio-card,name in the overlay accordingly"
        ], ""
    card = cards[0]
    name = _card_name(card)
    if not card.enabled():
        problems.append(f'sound card {card.path} is disabled: set status = "okay"')
    _driven(root, version, card, problems, "sound card")
    found = [f"card {name!r} (ALSA id {alsa_card_id(name)}) at {card.path}"]
    for link in _links(card):
        for role, names in (("CPU DAI", CPU_NODES), ("codec DAI", CODEC_NODES)):
            dai = _dai(tree, phandles, link, names)
            if dai is None:
                problems.append(f"{link.path}: no {role} (sound-dai) the tree resolves")
                continue
            if not dai.enabled():
                problems.append(
                    f"{role} {dai.path} is disabled (it or a parent has status"
                    f" {dai.text('status') or 'disabled'}): the overlay must enable it"
                )
            module = _driven(root, version, dai, problems, role)
            if role == "CPU DAI" and "dmas" not in dai.props:
                problems.append(
                    f"CPU DAI {dai.path} has no dmas: its driver moves no audio; give it"
                    f" dmas and dma-names in the overlay"
                )
            text = f"{role} {dai.path} ({', '.join(dai.text('compatible')[:1])}) -> {module}"
            if "dmas" in dai.props:
                text += f", DMA {'+'.join(dai.text('dma-names'))}"
            bus = dai.parent
            if (
                bus is not None
                and bus.parent is not None
                and "simple-bus" not in bus.text("compatible")
            ):
                text += f", on {bus.path} -> {_driven(root, version, bus, problems, 'bus')}"
            for cell in dai.cells("clocks")[:1]:
                clock = phandles.get(cell)
                if clock is None:
                    problems.append(f"{role} {dai.path}: its clock is not in the tree")
                elif "clock-frequency" in clock.props:
                    text += f", clock {clock.path} {clock.cells('clock-frequency')[0]} Hz"
            found.append(text)
    return problems, "; ".join(found)


def _card_name(card: Node) -> str:
    for prop in ("label", "simple-audio-card,name"):
        if card.text(prop):
            return card.text(prop)[0]
    return ""


def apply_overlays(
    root: Path, version: str, compiled: dict[str, Path], rows: list[CaptureHardware], work: Path
) -> list[str]:
    problems: list[str] = []
    trees = root / "usr/lib" / f"linux-image-{version}" / "broadcom"
    if not trees.is_dir():
        return [f"kernel {version}: no device trees in {trees}: the kernel package is incomplete"]
    pis = sorted(trees.glob("bcm2*-rpi-*.dtb"))
    for row in rows:
        dtbo = compiled.get(row.overlay or "")
        if dtbo is None:
            continue
        targets = [d for d in pis if any(fnmatch.fnmatchcase(d.name, p) for p in row.dtbs)]
        if not targets:
            problems.append(
                f"overlay {row.overlay}: no device tree in {trees} matches {', '.join(row.dtbs)}"
                f" (row {row.id}): fix the row's dtbs"
            )
        for dtb in pis:
            merged = work / f"{row.overlay}+{dtb.name}"
            done = run(["fdtoverlay", "-i", str(dtb), "-o", str(merged), str(dtbo)])
            # fdtoverlay: "Failed to apply '<overlay>': FDT_ERR_NOTFOUND"; the code is the news.
            reason = done.stderr.strip().rpartition(": ")[2] or f"exit {done.returncode}"
            if dtb not in targets:
                verdict = "applies" if done.returncode == 0 else f"does not apply ({reason})"
                print(f"{SAY} note: overlay {row.overlay} {verdict} on {dtb.name} (not a target)")
                continue
            if done.returncode != 0:
                problems.append(
                    f"overlay {row.overlay} does not apply on {dtb.name} ({reason}): a label or"
                    f" path it targets is not in that tree; fix the overlay's targets"
                )
                continue
            found, verified = check_merged(read_fdt(merged.read_bytes()), row, root, version)
            problems += [f"overlay {row.overlay} on {dtb.name}: {p}" for p in found]
            if not found:
                print(f"{SAY} overlay {row.overlay} on {dtb.name}: applies; {verified}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("root", type=Path, help="the arm64 root tree (with Debian's kernel)")
    parser.add_argument("--overlays", type=Path, default=HERE / "overlays", help="*.dts here")
    parser.add_argument("--install", type=Path, help="copy the .dtbo files here if all is well")
    parser.add_argument("--require-module", action="append", default=[], metavar="MODULE")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    rows = [row for row in HARDWARE if row.in_image]
    problems: list[str] = []
    versions = kernel_versions(root)
    if not versions:
        problems.append(
            f"no kernel in {root}/lib/modules (none with modules.dep): install"
            f" linux-image-arm64 in the tree (depmod runs in its postinst)"
        )
    for version in versions:
        problems += check_kernel(root, version, rows, args.require_module)
    with tempfile.TemporaryDirectory(prefix="check-hardware.") as tmp:
        work = Path(tmp)
        compiled, found = compile_overlays(args.overlays, rows, work)
        problems += found
        for version in versions:
            problems += apply_overlays(root, version, compiled, rows, work)
        if problems:
            for problem in problems:
                print(f"{SAY} {problem}", file=sys.stderr)
            print(
                f"{SAY} {len(problems)} problem(s): the image would not drive its capture hardware",
                file=sys.stderr,
            )
            return 1
        if args.install is not None:
            args.install.mkdir(parents=True, exist_ok=True)
            for name, dtbo in sorted(compiled.items()):
                shutil.copyfile(dtbo, args.install / dtbo.name)
                print(f"{SAY} installed {name}.dtbo in {args.install}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
