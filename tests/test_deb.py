"""The Debian package for Raspberry Pi OS (image/deb/, `make deb`).

Fast (default suite): image/deb/build.sh builds the .deb into a temporary directory;
the tests read it back with dpkg-deb: the device packages and nothing of the head
office, sources only (postinst byte-compiles), the launcher, the units rewritten to
/usr/bin/linetap and still conditioned on provisioning, the control fields against
image/customize.sh's version checks, the maintainer scripts, the man page against
firmware/cli.py's commands, and lintian. Planted defects: a unit that still names
/opt/linetap, and a version dpkg would not take, fail the build with one clear line.

Slow (`make deb-test`, as root with qemu-user binfmt for arm64): a Debian trixie arm64
root from mmdebstrap, with the package's Depends and Recommends already installed by
`apt-get satisfy` from the archive, is cached as a tarball under image/build/deb-test/
(keyed by those fields; delete it to refresh). In a copy of it: `apt-get install` of the
.deb, provisioning from /boot/firmware with the first-boot unit's own command lines,
`linetap check --json`, `linetap replay` of the bundled sample into the outbox (the
recording verified and decrypted here), an upgrade to a V+1 build, and a purge that
keeps /var/lib/linetap.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile

from firmware.cli import COMMANDS
from sealedrec.keys import public_key_from_b64
from sealedrec.verify import read_manifest, verify_entry

REPO = Path(__file__).resolve().parent.parent
DEB_DIR = REPO / "image" / "deb"
BUILD_SH = DEB_DIR / "build.sh"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
LAUNCHER = "usr/bin/linetap"
MODULE_DIR = "usr/lib/linetap"
UNIT_DIR = "usr/lib/systemd/system"
MARKER = "/var/lib/linetap/provisioned.json"
# image/customize.sh's version checks (pip distribution names) and Debian's packages.
DEBIAN_NAME = {
    "numpy": "python3-numpy",
    "cryptography": "python3-cryptography",
    "pydantic": "python3-pydantic",
    "paho-mqtt": "python3-paho-mqtt",
    "soundfile": "python3-soundfile",
    "pyalsaaudio": "python3-alsaaudio",
    "pyserial": "python3-serial",
    "gpiod": "python3-libgpiod",
}


@dataclass(frozen=True)
class Built:
    deb: Path
    tree: Path  # dpkg-deb -R: the files and DEBIAN/
    seconds: float


def build(out: Path, *options: str, units: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("SOURCE_DATE_EPOCH", None)
    if units is not None:
        env["LINETAP_UNITS_DIR"] = str(units)
    return subprocess.run(
        [str(BUILD_SH), "--out", str(out), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def build_ok(out: Path, *options: str) -> Path:
    done = build(out, *options)
    assert done.returncode == 0, done.stderr
    [deb] = out.glob("linetap_*_arm64.deb")
    return deb


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    out = tmp_path_factory.mktemp("deb")
    started = time.monotonic()
    deb = build_ok(out)
    seconds = time.monotonic() - started
    assert deb.name == f"linetap_{VERSION}_arm64.deb"
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=60)
    return Built(deb, tree, seconds)


def control(built: Built) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in (built.tree / "DEBIAN" / "control").read_text().splitlines():
        if not line.startswith(" "):
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def relations(field: str) -> dict[str, str]:
    """``name (>= v), ...`` -> {name: "(>= v)" or ""} (no alternatives in this package)."""
    found = {}
    for item in field.split(","):
        m = re.fullmatch(r"\s*([a-z0-9.+-]+)\s*(\(.*\))?\s*", item)
        assert m, item
        found[m.group(1)] = m.group(2) or ""
    return found


def shell_array(script: Path, name: str) -> list[str]:
    """A one-line bash array ``NAME=(a b c)`` of a build script."""
    [line] = [ln for ln in script.read_text().splitlines() if ln.startswith(f"{name}=(")]
    return shlex.split(line.removeprefix(f"{name}=(").removesuffix(")"))


def device_units() -> list[str]:
    return sorted(p.name for p in (REPO / "systemd").glob("*.service"))


def files_of(built: Built) -> list[str]:
    return sorted(
        str(p.relative_to(built.tree))
        for p in built.tree.rglob("*")
        if p.is_file() and p.parts[len(built.tree.parts)] != "DEBIAN"
    )


# -- fast: the package's contents --------------------------------------------------------


def test_deb_holds_the_device_packages_as_sources_and_nothing_of_the_office(built: Built):
    packages = shell_array(BUILD_SH, "DEVICE_PACKAGES")
    assert packages == shell_array(REPO / "image" / "customize.sh", "DEVICE_PACKAGES")
    files = files_of(built)
    assert not [f for f in files if "headoffice" in f or "/demo/" in f]
    assert not [f for f in files if f.endswith(".pyc") or "__pycache__" in f]
    lib = built.tree / MODULE_DIR
    assert sorted(p.name for p in lib.iterdir()) == sorted(packages)
    # Every module of the tree (a wheel's worth) and the package data pyproject names.
    expected = {
        str(p.relative_to(REPO))
        for name in packages
        for p in (REPO / name).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    shipped = {str(p.relative_to(lib)) for p in lib.rglob("*") if p.is_file()}
    assert expected <= shipped
    data = {"firmware/linetap.example.toml", "firmware/samples/sample_call.flac"}
    assert shipped - expected == data | {"firmware/samples/sample_call.events"}
    launcher = built.tree / LAUNCHER
    assert launcher.stat().st_mode & 0o777 == 0o755
    assert launcher.read_text().startswith("#!/usr/bin/python3 -I\n")
    # The shipped tree alone imports every command's module (-I: not this checkout;
    # -B: no byte-code written into the tree the other tests read).
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import firmware.cli as c;"
        " c.build_parser(); print(c.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-B", "-c", probe, str(lib)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == str(lib / "firmware" / "cli.py")


def test_units_run_usr_bin_linetap_and_wait_for_provisioning(built: Built):
    units = built.tree / UNIT_DIR
    assert sorted(p.name for p in units.iterdir()) == device_units()
    for unit in units.iterdir():
        text = unit.read_text()
        for line in re.findall(r"^Exec\w*=(.*)$", text, re.M):
            assert not line.startswith("/opt/"), (unit.name, line)
        assert re.search(r"^ExecStart=/usr/bin/linetap ", text, re.M), unit.name
        assert "Documentation=man:linetap(1)" in text
    everything = "\n".join(
        p.read_text(errors="replace") for p in built.tree.rglob("*") if p.is_file()
    )
    assert "/opt/linetap" not in everything
    # Nothing starts before provisioning: the daemons wait for the marker, first boot
    # for something on the boot partition.
    for daemon in ("linetap-recorder.service", "linetap-uploader.service"):
        assert f"ConditionPathExists={MARKER}" in (units / daemon).read_text()
    firstboot = (units / "linetap-firstboot.service").read_text()
    assert "ConditionPathExists=|/boot/firmware/linetap.toml" in firstboot
    assert (built.tree / "usr/lib/sysusers.d/linetap.conf").read_bytes() == (
        REPO / "systemd/sysusers.d/linetap.conf"
    ).read_bytes()
    rules = built.tree / "usr/lib/udev/rules.d/60-linetap-gpio.rules"
    assert rules.read_bytes() == (REPO / "systemd/udev/60-linetap-gpio.rules").read_bytes()


def test_control_depends_on_debians_python3_packages_as_the_image(built: Built):
    fields = control(built)
    assert fields["Package"] == "linetap" and fields["Version"] == VERSION
    assert fields["Architecture"] == "arm64"
    depends = relations(fields["Depends"])
    # The image's own minimums (customize.sh's `need`), one Debian package each.
    script = (REPO / "image" / "customize.sh").read_text()
    need = re.search(r"^need = (\{.*?\})$", script, re.M | re.S)
    assert need, "customize.sh has no `need = {...}` version table"
    image_minimums: dict[str, str] = json.loads(need.group(1).replace("\n", " "))
    for dist, minimum in image_minimums.items():
        have = depends.pop(DEBIAN_NAME[dist])
        assert re.fullmatch(rf"\(>= (1:)?{re.escape(minimum)}\)", have), (dist, have)
    assert depends == {"python3": "(>= 3.11~)", "systemd": ""}
    assert relations(fields["Recommends"]) == {"alsa-utils": "", "gpiod": ""}
    assert int(fields["Installed-Size"]) > 500


def test_maintainer_scripts_make_the_user_link_and_units_and_start_nothing(built: Built):
    debian = built.tree / "DEBIAN"
    # The conffiles are the image's ALSA config (the linetap_usb PCM), nothing else in
    # /etc: /etc/linetap/linetap.toml is a link postinst makes and purge removes.
    alsa = sorted((REPO / "image/rootfs").glob("etc/alsa/conf.d/*.conf"))
    etc = sorted(p for p in (built.tree / "etc").rglob("*") if p.is_file())
    assert [p.relative_to(built.tree) for p in etc] == [
        p.relative_to(REPO / "image/rootfs") for p in alsa
    ]
    for shipped, source in zip(etc, alsa, strict=True):
        assert shipped.read_bytes() == source.read_bytes()
    conffiles = (debian / "conffiles").read_text().splitlines() if alsa else []
    assert conffiles == [f"/{p.relative_to(built.tree)}" for p in etc]
    scripts = {name: (debian / name).read_text() for name in ("postinst", "prerm", "postrm")}
    for name, text in scripts.items():
        assert (debian / name).stat().st_mode & 0o777 == 0o755
        assert "@" not in text, f"{name}: a placeholder was not filled in"
        subprocess.run(["sh", "-n", str(debian / name)], check=True, timeout=30)
        assert f'UNITS="{" ".join(device_units())}"' in text
    postinst = scripts["postinst"]
    for step in (
        "systemd-sysusers linetap.conf",
        "udevadm control --reload-rules",
        'ln -s "$CONFIG_TARGET" "$CONFIG_LINK"',
        "CONFIG_TARGET=/var/lib/linetap/config/linetap.toml",
        "py3compile -p linetap /usr/lib/linetap",
        'deb-systemd-helper enable "$unit"',
    ):
        assert step in postinst, step
    assert not re.search(r"(invoke|systemctl)[^\n]* (re)?start ", postinst)
    assert "py3clean -p linetap" in scripts["prerm"]
    assert 'rm -f "$CONFIG_LINK"' in scripts["postrm"]
    assert "rm -rf /var/lib/linetap" not in scripts["postrm"]
    md5: dict[str, str] = {}
    for line in (debian / "md5sums").read_text().splitlines():
        digest, name = line.split("  ", 1)
        md5[name] = digest
    assert sorted(md5) == [f for f in files_of(built) if not f.startswith("etc/")]
    for name, digest in md5.items():
        assert hashlib.md5((built.tree / name).read_bytes()).hexdigest() == digest


def test_man_page_lists_every_command(built: Built):
    page = gzip.decompress((built.tree / "usr/share/man/man1/linetap.1.gz").read_bytes()).decode()
    listed = re.findall(r"^\.B (\S+)\n", page.split(".SH COMMANDS", 1)[1], re.M)
    assert [name.replace("\\-", "-") for name in listed[: len(COMMANDS)]] == [
        c.name for c in COMMANDS
    ]
    assert f'"linetap {VERSION}"' in page


def test_lintian_finds_nothing(built: Built):
    started = time.monotonic()
    done = subprocess.run(
        ["lintian", "--fail-on", "error,warning", "--pedantic", "--info", str(built.deb)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # --pedantic --info: nothing either, but the one override (with its reason).
    tags = [line for line in done.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
    assert tags == [], "\n".join(tags)
    print(f"lintian: {time.monotonic() - started:.1f} s; build {built.seconds:.1f} s")


# -- fast: planted defects -----------------------------------------------------------------


def test_a_unit_still_naming_opt_linetap_fails_the_build(tmp_path: Path):
    units, bad = tmp_path / "systemd", "ExecStartPre=/opt/linetap/venv/bin/python -V"
    shutil.copytree(REPO / "systemd", units, ignore=shutil.ignore_patterns("office"))
    unit = units / "linetap-uploader.service"
    unit.write_text(unit.read_text().replace("[Service]\n", f"[Service]\n{bad}\n"))
    line = unit.read_text().splitlines().index(bad) + 1
    done = build(tmp_path / "out", units=units)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"deb: {unit}:{line}:{bad}: names /opt/linetap, which the package")
    assert not list((tmp_path / "out").iterdir())  # no .deb, no staging left over


def test_a_version_dpkg_would_refuse_fails_the_build(tmp_path: Path):
    done = build(tmp_path, "--version", "1.0_rc1")
    assert done.returncode == 1
    assert "version '1.0_rc1' is not a Debian version" in done.stderr
    assert not list(tmp_path.iterdir())


# -- slow: install, check, replay, upgrade and purge in a Debian trixie arm64 root ----------

SUITE = "trixie"
MIRROR = os.environ.get("LINETAP_DEBIAN_MIRROR", "http://deb.debian.org/debian")
WORK = REPO / "image" / "build" / "deb-test"  # git-ignored; logs and figures stay there
ENV = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8", "DEBIAN_FRONTEND=noninteractive")
APT = ("apt-get", "-y", "-q", "-o", "Dpkg::Options::=--force-unsafe-io")
# /proc, /sys and /dev for the maintainer scripts, in a mount namespace of the command's
# own: nothing stays mounted on the host, whatever happens.
ENTER = (
    'mount -t proc proc "$0/proc" && mount -t sysfs sysfs "$0/sys"'
    ' && mount --rbind /dev "$0/dev" && exec chroot "$0" env -i ' + " ".join(ENV) + ' "$@"'
)
SAMPLES = f"/{MODULE_DIR}/firmware/samples"
DEVICE_ID = "deb-chroot"
CONFIG_LINK, CONFIG_TARGET = "etc/linetap/linetap.toml", "/var/lib/linetap/config/linetap.toml"
ALSA_CONF = REPO / "image/rootfs/etc/alsa/conf.d/60-linetap-usb.conf"


def chroot_run(root: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            ENTER,
            str(root),
            *cmd,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )


def in_root(root: Path, *cmd: str) -> str:
    """Run ``cmd`` in the chroot ``root``: its stdout and stderr; it must succeed."""
    done = chroot_run(root, *cmd)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{shlex.join(cmd)}: exit {done.returncode}\n{out[-4000:]}"
    return out


def cached_root(deb: Path) -> tuple[Path, float | None]:
    """The trixie arm64 root tarball with the .deb's Depends and Recommends installed from
    the archive (`apt-get satisfy`); built when missing, which takes ~20 min under
    qemu-user. (tarball, seconds the build took or None)."""
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Depends", "Recommends"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    wanted = ", ".join(line.split(":", 1)[1].strip() for line in fields.splitlines())
    key = hashlib.sha256(f"{SUITE} {MIRROR} {wanted}".encode()).hexdigest()[:12]
    tarball = WORK / f"{SUITE}-arm64-{key}.tar"
    if tarball.exists():
        return tarball, None
    for old in WORK.glob(f"{SUITE}-arm64-*.tar*"):
        old.unlink()
    partial = tarball.with_suffix(".partial")
    hook = f'chroot "$1" env {" ".join(ENV)} {shlex.join(APT)} satisfy {shlex.quote(wanted)}'
    started = time.monotonic()
    with (WORK / "cache-build.log").open("w") as log:
        done = subprocess.run(
            ["mmdebstrap", "--mode=root", "--arch=arm64", "--variant=apt", "--format=tar",
             "--skip=cleanup/apt/lists", f"--customize-hook={hook}",
             SUITE, str(partial), f"deb {MIRROR} {SUITE} main"],
            stdout=log, stderr=subprocess.STDOUT, timeout=3 * 3600, check=False,
        )  # fmt: skip
    assert done.returncode == 0, f"mmdebstrap failed; see {WORK / 'cache-build.log'}"
    partial.rename(tarball)
    return tarball, time.monotonic() - started


def next_version(version: str) -> str:
    """0.1.0 -> 0.1.1: the last dotted number plus one."""
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last) + 1}" if head else str(int(last) + 1)


def boot_config(recipient: str) -> str:
    """A field tech's /boot/firmware/linetap.toml with the simulated backends: the
    bundled sample call as the line, its events script on the pins."""
    return f"""\
device_id = "{DEVICE_ID}"
[audio]
backend = "file"
file = "{SAMPLES}/sample_call.flac"
sample_rate = 8000
channels = 1
[gpio]
backend = "sim"
script = "{SAMPLES}/sample_call.events"
status_led_pin = 5
[storage]
format = "sealed"
[sealing]
recipients = ["{recipient}"]
[upload]
host = "127.0.0.1"
port = 1883
tls = false
[[lines]]
name = "line1"
channel = 0
hook_pin = 17
led_pin = 22
opt_out_pin = 27
"""


def check_json(root: Path) -> dict[str, str]:
    """`linetap check --json` on the installed config: {check id: status}. The clock (this
    host's NTP state) and the broker (whatever listens on this host's port 1883) say
    nothing about the package."""
    out = in_root(root, "linetap", "check", "--json", "--skip", "clock", "--skip", "broker")
    report = json.loads(out[out.index("{") :])
    assert report["config"] == "/etc/linetap/linetap.toml" and report["exit_code"] == 0, report
    return {c["id"]: c["status"] for c in report["checks"]}


def sealed_entry(root: Path, identity: Path) -> Path:
    """The one recording in the outbox: signature and hashes verify against the key
    provisioning made, and it decrypts (age, not linetap) to the call's audio."""
    manifests = list((root / "var/lib/linetap/outbox").glob("*/*/manifest.json"))
    assert len(manifests) == 1, f"not one recording in the outbox: {manifests}"
    manifest = manifests[0]
    provisioned = json.loads((root / MARKER.lstrip("/")).read_text())
    report = verify_entry(manifest.parent, public_key_from_b64(provisioned["signing_key"]))
    assert report.ok, report.problems
    meta = read_manifest(manifest.parent)
    assert meta["device_id"] == DEVICE_ID and meta["line"] == "line1"
    plain = subprocess.run(
        ["age", "-d", "-i", str(identity), str(manifest.parent / "recording.age")],
        capture_output=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    pcm, rate = soundfile.read(io.BytesIO(plain), dtype="int16")
    assert rate == 8000 and len(pcm) == meta["audio_frames"]
    digest = hashlib.sha256(np.asarray(pcm, dtype="<i2").tobytes()).hexdigest()
    assert digest == meta["audio_pcm_sha256"]
    return manifest.parent


def enabled(root: Path) -> list[str]:
    return in_root(root, "systemctl", "is-enabled", *device_units()).split()


def install(root: Path, deb: Path, log: Path) -> int:
    """`apt-get install ./deb` and what postinst must have made; the number of modules."""
    out = in_root(root, *APT, "install", f"/tmp/{deb.name}")
    log.write_text(out)
    assert "linetap: nothing runs until provisioned" in out
    passwd = (root / "etc/passwd").read_text()
    assert re.search(r"^linetap:x:\d+:\d+:[^:]*:/var/lib/linetap:/usr/sbin/nologin$", passwd, re.M)
    assert {"audio", "gpio"} <= set(in_root(root, "id", "-nG", "linetap").split())
    assert os.readlink(root / CONFIG_LINK) == CONFIG_TARGET
    data = root / "var/lib/linetap"
    assert data.stat().st_mode & 0o777 == 0o700 and not list(data.iterdir())
    assert enabled(root) == ["enabled"] * 3
    sources = list((root / MODULE_DIR).rglob("*.py"))
    assert len(list((root / MODULE_DIR).rglob("*.pyc"))) == len(sources) > 100
    if ALSA_CONF.exists():  # the root's alsa-lib knows the package's PCM (no card here)
        opened = chroot_run(
            root, "arecord", "-D", "linetap_usb:CARD=absent", "-d", "1", "/dev/null"
        )
        assert "Cannot get card index for absent" in opened.stderr, opened.stderr
    return len(sources)


def provision(root: Path, work: Path) -> Path:
    """Provisioning as linetap-firstboot.service does it, with the unit's own command
    lines, from a linetap.toml on /boot/firmware; the office's age identity."""
    identity = work / "office.key"
    identity.unlink(missing_ok=True)
    subprocess.run(["age-keygen", "-o", str(identity)], capture_output=True, check=True)
    recipient = subprocess.run(
        ["age-keygen", "-y", str(identity)], capture_output=True, text=True, check=True
    ).stdout.strip()
    boot = root / "boot/firmware"
    boot.mkdir(parents=True)
    (boot / "linetap.toml").write_text(boot_config(recipient))
    unit = (root / UNIT_DIR / "linetap-firstboot.service").read_text()
    for command in re.findall(r"^ExecStart(?:Post)?=(.*)$", unit, re.M):
        in_root(root, *shlex.split(command))
    assert (root / CONFIG_TARGET.lstrip("/")).is_file() and (root / MARKER.lstrip("/")).is_file()
    assert (boot / "linetap.toml.applied").is_file()
    assert (boot / "linetap-request" / f"{DEVICE_ID}.csr").is_file()
    return identity


def replay(root: Path, identity: Path) -> tuple[Path, float]:
    """The daemons' user replays the sample call into the outbox, as the recorder would."""
    out = in_root(
        root, "runuser", "-u", "linetap", "--", "linetap", "replay", "--json",
        "--audio", f"{SAMPLES}/sample_call.flac", "--events", f"{SAMPLES}/sample_call.events",
        "--out", "/var/lib/linetap",
    )  # fmt: skip
    [recording] = json.loads(out[out.index("{") :])["recordings"]
    entry = sealed_entry(root, identity)
    assert recording["seq"] == 1 and entry.name.startswith("000000000001-")
    return entry, recording["duration_ms"] / 1000


def purge(root: Path, log: Path) -> None:
    """`apt-get purge`: the package's files and conffiles, /etc/linetap and the units'
    state go."""
    out = in_root(root, *APT, "purge", "linetap")
    log.write_text(out)
    assert "linetap: purged; /var/lib/linetap kept" in out
    for gone in (
        CONFIG_LINK,
        "etc/linetap",
        MODULE_DIR,
        LAUNCHER,
        "usr/lib/sysusers.d/linetap.conf",
        f"etc/alsa/conf.d/{ALSA_CONF.name}",
    ):
        assert not (root / gone).exists() and not (root / gone).is_symlink(), gone
    left = [*(root / "etc/systemd").rglob("linetap*"), *(root / UNIT_DIR).glob("linetap*")]
    left += (root / "var/lib/systemd/deb-systemd-helper-enabled").rglob("*linetap*")
    assert left == []
    known = chroot_run(root, "dpkg-query", "-W", "linetap")
    assert known.returncode == 1, known.stdout  # no "config-files" state left either


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("the chroot test runs as root (mmdebstrap, chroot, mounts)")
    pre = subprocess.run(
        [str(REPO / "image/check-host.sh"), "--deb"], capture_output=True, text=True, check=False
    )
    if pre.returncode != 0:
        pytest.skip("deb-test preconditions missing: " + " | ".join(pre.stderr.splitlines()))
    run = WORK / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    yield run
    shutil.rmtree(run / "root", ignore_errors=True)  # ~600 MB; the logs stay


@pytest.mark.slow
def test_deb_installs_upgrades_and_purges_in_a_trixie_arm64_root(work: Path):
    figures: dict[str, object] = {}
    clock = [time.monotonic()]

    def lap(name: str) -> None:
        figures[f"{name}_s"] = round(time.monotonic() - clock[0], 1)
        clock[0] = time.monotonic()

    deb = build_ok(work / "v1")
    upgrade = build_ok(work / "v2", "--version", next_version(VERSION))
    figures["deb_bytes"] = deb.stat().st_size
    tarball, cache_s = cached_root(deb)
    figures["cache_build_s"] = cache_s and round(cache_s, 1)
    lap("build_and_cache")
    root = work / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True, timeout=600)
    for package in (deb, upgrade):
        shutil.copy(package, root / "tmp")
    lap("extract")
    modules = install(root, deb, work / "install.log")
    lap("install")
    identity = provision(root, work)
    lap("provision")
    figures["check"] = statuses = check_json(root)
    expected = {"config": "WARN", "audio": "PASS", "signal.line1": "PASS",
                "hook.line1": "PASS", "storage.free": "PASS", "storage.write": "PASS",
                "keys.device": "PASS", "recipients": "PASS", "tls": "WARN",
                "clock": "SKIP", "broker": "SKIP"}  # fmt: skip
    assert {k: statuses.get(k) for k in expected} == expected, statuses
    lap("check")
    entry, figures["call_s"] = replay(root, identity)
    lap("replay")

    # V+1 over it: the recording, the config link and the enablement survive.
    (work / "upgrade.log").write_text(in_root(root, *APT, "install", f"/tmp/{upgrade.name}"))
    status = in_root(root, "dpkg-query", "-W", "-f", "${Version} ${Status}", "linetap")
    assert status == f"{next_version(VERSION)} install ok installed"
    assert enabled(root) == ["enabled"] * 3
    assert os.readlink(root / CONFIG_LINK) == CONFIG_TARGET
    assert len(list((root / MODULE_DIR).rglob("*.pyc"))) == modules
    assert sealed_entry(root, identity) == entry
    assert check_json(root)["keys.device"] == "PASS"
    lap("upgrade")

    purge(root, work / "purge.log")
    # Kept on purpose: the recording not yet acknowledged, the keys, the config.
    assert sealed_entry(root, identity) == entry
    data = root / "var/lib/linetap"
    assert (data / "keys/device.key").is_file() and (data / "config/linetap.toml").is_file()
    lap("purge")

    # Installed again over the kept data: provisioned already, the units enabled again.
    out = in_root(root, *APT, "install", f"/tmp/{upgrade.name}")
    assert "linetap: /var/lib/linetap is provisioned already" in out
    assert enabled(root) == ["enabled"] * 3 and check_json(root)["keys.device"] == "PASS"
    lap("reinstall")
    (work / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("deb chroot figures:", json.dumps(figures, indent=2))
