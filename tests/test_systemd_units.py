"""The systemd units in systemd/ (recorder, uploader, first boot) and systemd/office/ (the
head office receiver, plain and as a template, the audit checkpoint and the web review),
checked with systemd's tools.

* ``systemd-analyze verify`` runs on the units inside a throwaway root (--root): the
  host's own system units copied in (sysinit.target, network-online.target, ...) and a
  stub for each command the units run, so verify does not fail merely because
  /opt/linetap/venv is not installed here. Any line it prints counts as a failure (it
  reports unknown keys and bad values as warnings with exit status 0).
* ``systemd-analyze security --offline=true`` rates every unit, and the recorder with the
  optional RPi.GPIO drop-in, at an overall exposure of at most 2.0; a failure lists the
  settings it marked.
* The units name only what the project has: the ``linetap`` subcommands and options
  (parsed by the real argument parser), the config's default data and runtime
  directories, the provisioning marker and boot files of ``linetap provision``; the
  office units the ``linetap-office serve`` / ``web`` options, the default office config
  path and store root.
* The office units: systemd marks only the settings left off on purpose (network, no
  chroot), so removing any hardening line systemd rates fails the test; each line is
  removed in turn to show that.
* The system call filter, evaluated the way systemd merges the lines with systemd's own
  group definitions, lets the daemons read the kernel clock state (firmware/clock.py).
* ``systemd-sysusers`` creates the user and groups in a throwaway root, Debian-like (no
  gpio group) and Raspberry Pi OS-like (gpio exists already).

What these tools cannot show (the daemons working inside the sandbox) was checked by
booting the units under systemd-nspawn: systemd/README.md.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware.cli import build_parser
from firmware.config import StorageConfig
from firmware.tools import provision
from headoffice.cli import build_parser as build_office_parser
from headoffice.config import DEFAULT_CONFIG, OfficeConfig

REPO = Path(__file__).resolve().parent.parent
UNITS_DIR = REPO / "systemd"
RECORDER = "linetap-recorder.service"
UPLOADER = "linetap-uploader.service"
FIRSTBOOT = "linetap-firstboot.service"
UNITS = (RECORDER, UPLOADER, FIRSTBOOT)
RPIGPIO_DROPIN = UNITS_DIR / "linetap-recorder-rpigpio.conf"
SYSUSERS = UNITS_DIR / "sysusers.d" / "linetap.conf"
UDEV_RULES = UNITS_DIR / "udev" / "60-linetap-gpio.rules"
VENV_LINETAP = "/opt/linetap/venv/bin/linetap"
OFFICE_DIR = UNITS_DIR / "office"
OFFICE_SERVE = "linetap-office-serve.service"
OFFICE_TEMPLATE = "linetap-office-serve@.service"
OFFICE_INSTANCE = "linetap-office-serve@office-receiver-2.service"
OFFICE_CHECKPOINT = "linetap-office-checkpoint.service"
OFFICE_RETENTION = "linetap-office-retention.service"
OFFICE_WEB = "linetap-office-web.service"
OFFICE_UNITS = (OFFICE_SERVE, OFFICE_TEMPLATE, OFFICE_CHECKPOINT, OFFICE_WEB, OFFICE_RETENTION)
OFFICE_SYSUSERS = OFFICE_DIR / "sysusers.d" / "linetap-office.conf"
VENV_OFFICE = "/opt/linetap-office/venv/bin/linetap-office"
# What systemd-analyze security may mark on the office units: the receiver needs the
# network (MQTT to a broker anywhere, PostgreSQL, DNS), the web server listens on it, and
# both run in the host's root.
# char-rtc:r is what ProtectClock=yes itself allows (PrivateDevices=yes hides it anyway).
OFFICE_ACCEPTED_MARKS = {
    "RootDirectory=/RootImage=",
    "RestrictAddressFamilies=~AF_UNIX",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "PrivateNetwork=",
    "IPAddressDeny=",
    "DeviceAllow=",
}
# Sandbox lines of the office units that removing cannot change systemd-analyze's marks:
# not rated (each still narrows what the process can do), or systemd's default for a
# system service anyway (written out, as in the device units).
OFFICE_UNRATED = {
    "PrivateMounts",
    "SystemCallErrorNumber",
    "DevicePolicy",
    "AmbientCapabilities",
    "KeyringMode",
}
MAX_EXPOSURE = 2.0
# Host directories holding systemd's own units (Debian 12: /lib is a link to /usr/lib).
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
EXEC_KEYS = ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop", "ExecStopPost")
# The clock-state query of firmware/clock.py: glibc's adjtimex() is the clock_adjtime
# system call (clock_adjtime64 on 32-bit ARM); adjtimex is the direct one.
CLOCK_QUERY_SYSCALLS = ("adjtimex", "clock_adjtime")

ANALYZE = shutil.which("systemd-analyze")
SYSUSERS_BIN = shutil.which("systemd-sysusers")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian package: systemd)"
)
needs_sysusers = pytest.mark.skipif(
    SYSUSERS_BIN is None, reason="systemd-sysusers not installed (Debian package: systemd)"
)


# -- reading unit files ------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    value: str
    line: int


def parse_unit(path: Path) -> list[Setting]:
    """The assignments of a unit file in order (keys repeat in units, so not a dict)."""
    settings: list[Setting] = []
    section = ""
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending, start = pending + line[:-1] + " ", start or number
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not a KEY=VALUE line: {raw!r}"
        settings.append(Setting(section, key.strip(), value.strip(), start or number))
        start = 0
    return settings


def values(settings: Iterable[Setting], key: str) -> list[str]:
    return [s.value for s in settings if s.key == key]


def one(settings: list[Setting], key: str) -> str:
    found = values(settings, key)
    assert len(found) == 1, f"{key}= set {len(found)} times, expected once: {found}"
    return found[0]


def unit(name: str) -> list[Setting]:
    return parse_unit((OFFICE_DIR if name in OFFICE_UNITS else UNITS_DIR) / name)


def commands(settings: Iterable[Setting]) -> list[list[str]]:
    """argv of every Exec*= line, without systemd's prefixes (-, @, +, !, :)."""
    out: list[list[str]] = []
    for s in settings:
        if s.key in EXEC_KEYS and s.value:
            out.append(shlex.split(s.value.lstrip("-@+!:")))
    return out


# -- a throwaway root for systemd-analyze ------------------------------------------------


def make_root(tmp_path: Path, *, rpigpio: bool = False) -> Path:
    """systemd's units and ours under ``tmp_path/root``, with stubs for our commands."""
    root = tmp_path / "root"
    host_units = next((d for d in SYSTEM_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if host_units is None:
        pytest.skip("systemd's own units (sysinit.target) not found in /usr/lib/systemd/system")
    shutil.copytree(host_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    for name in (*UNITS, *OFFICE_UNITS):
        shutil.copy((OFFICE_DIR if name in OFFICE_UNITS else UNITS_DIR) / name, etc / name)
        for argv in commands(unit(name)):
            stub = root / argv[0].lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    if rpigpio:
        dropin = etc / f"{RECORDER}.d"
        dropin.mkdir()
        shutil.copy(RPIGPIO_DROPIN, dropin / "rpigpio.conf")
    return root


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, "--no-pager", *args], capture_output=True, text=True, timeout=120, check=False
    )


def verify(root: Path, names: Iterable[str]) -> subprocess.CompletedProcess[str]:
    return analyze("verify", "--man=no", "--generators=no", f"--root={root}", *names)


# -- verify ------------------------------------------------------------------------------


@needs_analyze
def test_units_verify_clean(tmp_path: Path) -> None:
    root = make_root(tmp_path, rpigpio=True)
    done = verify(root, [*UNITS, OFFICE_SERVE, OFFICE_INSTANCE, OFFICE_WEB])
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not output, f"systemd-analyze verify:\n{output}"


@needs_analyze
def test_verify_harness_reports_mistakes(tmp_path: Path) -> None:
    """The check above would see a typo: verify prints it (with exit status 0)."""
    root = make_root(tmp_path)
    path = root / "etc/systemd/system" / RECORDER
    text = path.read_text()
    assert "\nProtectSystem=strict\n" in text and "\nRestart=always\n" in text
    path.write_text(
        text.replace("\nProtectSystem=strict\n", "\nProtectSystm=strict\n").replace(
            "\nRestart=always\n", "\nRestart=allways\n"
        )
    )
    done = verify(root, [RECORDER])
    output = done.stdout + done.stderr
    assert "Unknown key" in output and "ProtectSystm" in output, output
    assert "allways" in output, output


# -- exposure ----------------------------------------------------------------------------

_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def exposure(root: Path, name: str) -> tuple[float, list[str]]:
    """systemd's overall exposure figure and the lines of the settings it marked."""
    done = analyze("security", "--offline=true", f"--root={root}", name)
    match = _OVERALL.search(done.stdout)
    assert match, f"no exposure figure for {name}:\n{done.stdout}{done.stderr}"
    marked = [line.rstrip() for line in done.stdout.splitlines() if line.startswith("✗")]
    return float(match.group(1)), marked


@needs_analyze
@pytest.mark.parametrize(
    ("name", "rpigpio"),
    [
        (RECORDER, False),
        (UPLOADER, False),
        (FIRSTBOOT, False),
        (RECORDER, True),
        (OFFICE_SERVE, False),
        (OFFICE_INSTANCE, False),
        (OFFICE_CHECKPOINT, False),
        (OFFICE_WEB, False),
        (OFFICE_RETENTION, False),
    ],
    ids=[
        "recorder",
        "uploader",
        "firstboot",
        "recorder+rpigpio",
        "office",
        "office@",
        "checkpoint",
        "web",
        "retention",
    ],
)
def test_exposure_at_most_2(tmp_path: Path, name: str, rpigpio: bool) -> None:
    level, marked = exposure(make_root(tmp_path, rpigpio=rpigpio), name)
    assert level <= MAX_EXPOSURE, (
        f"{name}: exposure {level} > {MAX_EXPOSURE}; settings marked:\n" + "\n".join(marked)
    )


@needs_analyze
def test_exposure_figure_responds_to_the_unit(tmp_path: Path) -> None:
    """The figure parsed above is the unit's own: without its sandbox the uploader is
    rated far above the limit."""
    root = make_root(tmp_path)
    path = root / "etc/systemd/system" / UPLOADER
    kept = [
        line
        for line in path.read_text().splitlines()
        if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capability"))
    ]
    path.write_text("\n".join(kept) + "\n")
    level, _ = exposure(root, UPLOADER)
    assert level > MAX_EXPOSURE + 2


def marked_settings(marked: list[str]) -> set[str]:
    """The setting names of systemd-analyze's ✗ lines (``✗ PrivateNetwork=   Service …``)."""
    return {line.split()[1] for line in marked}


def sandbox_lines(text: str) -> list[str]:
    """The assignment lines of the office unit's sandbox block (after its marker comment)."""
    block = text.split("# --- Sandbox.", 1)[1].split("[Install]", 1)[0]
    return [line for line in block.splitlines()[1:] if line and not line.startswith("#")]


@needs_analyze
@pytest.mark.parametrize("name", [OFFICE_SERVE, OFFICE_INSTANCE, OFFICE_WEB])
def test_office_marks_only_what_it_needs(tmp_path: Path, name: str) -> None:
    """Below 2.0 is not enough: the office units leave off only what the receiver needs."""
    _, marked = exposure(make_root(tmp_path), name)
    extra = marked_settings(marked) - OFFICE_ACCEPTED_MARKS
    assert not extra, f"{name}: weaker than intended:\n" + "\n".join(marked)


@needs_analyze
@pytest.mark.parametrize("name", [OFFICE_SERVE, OFFICE_WEB])
def test_office_every_hardening_line_counts(tmp_path: Path, name: str) -> None:
    """Removing any one rated sandbox line of an office unit makes systemd mark a setting
    the test above does not accept: the check sees every line, not just the total."""
    root = make_root(tmp_path)
    path = root / "etc/systemd/system" / name
    original = path.read_text()
    lines = sandbox_lines(original)
    assert len(lines) > 20, lines
    unnoticed = []
    for line in lines:
        if line.partition("=")[0] in OFFICE_UNRATED:
            continue
        assert original.count(f"\n{line}\n") == 1, line
        path.write_text(original.replace(f"\n{line}\n", "\n"))
        _, marked = exposure(root, name)
        if not marked_settings(marked) - OFFICE_ACCEPTED_MARKS:
            unnoticed.append(line)
    path.write_text(original)
    assert not unnoticed, f"removing these goes unnoticed: {unnoticed}"


def test_office_template_matches_the_unit() -> None:
    """linetap-office-serve@.service is the plain unit plus --client %i: nothing drifts."""
    plain, template = unit(OFFICE_SERVE), unit(OFFICE_TEMPLATE)
    differ = {"Description", "ExecStart"}

    def rest(settings: list[Setting]) -> list[tuple[str, str, str]]:
        return [(s.section, s.key, s.value) for s in settings if s.key not in differ]

    assert rest(plain) == rest(template)
    assert one(template, "ExecStart") == one(plain, "ExecStart") + " --client %i"
    assert one(template, "Description") == one(plain, "Description") + " %i"


# -- what the units name exists ----------------------------------------------------------


def test_office_command_config_and_directories() -> None:
    """ExecStart is `linetap-office serve` (`web` for the web unit) with the default office
    config; the state directory is the config's default root, 0700; config errors (exit 2)
    end restarts."""
    parser = build_office_parser()
    for name in (OFFICE_SERVE, OFFICE_TEMPLATE, OFFICE_WEB):
        settings = unit(name)
        [argv] = commands(settings)
        assert argv[0] == VENV_OFFICE, argv
        args = parser.parse_args([a.replace("%i", "office-receiver-2") for a in argv[1:]])
        assert args.config == DEFAULT_CONFIG, argv
        if name == OFFICE_WEB:
            # Where to listen comes from office.toml's [web], not the unit.
            assert args.command == "web" and args.listen is None and args.port is None, argv
        else:
            assert args.command == "serve", argv
            assert (args.client is not None) == (name == OFFICE_TEMPLATE), argv
        assert Path("/var/lib") / one(settings, "StateDirectory") == OfficeConfig().root
        assert one(settings, "StateDirectoryMode") == "0700"
        assert Path("/etc") / one(settings, "ConfigurationDirectory") == DEFAULT_CONFIG.parent
        assert one(settings, "Restart") == "always"
        assert one(settings, "StartLimitIntervalSec") == "0"
        assert one(settings, "RestartPreventExitStatus") == "2"
        assert one(settings, "User") == one(settings, "Group") == "linetap-office"
        assert one(settings, "CapabilityBoundingSet") == ""


def test_commands_are_the_projects() -> None:
    """Every Exec line runs a linetap subcommand the CLI accepts, with those options, or
    a system tool that exists (the image is Debian, as this machine)."""
    parser = build_parser()
    seen: dict[str, str] = {}
    for name in UNITS:
        for argv in commands(unit(name)):
            if argv[0] != VENV_LINETAP:
                assert Path(argv[0]).is_file(), f"{name}: {argv[0]} does not exist"
                continue
            try:
                args = parser.parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{name}: `linetap {' '.join(argv[1:])}` is not a valid command line")
            seen[name] = args.command
            if args.command == "provision":
                assert args.first_boot, f"{name}: provision without --first-boot"
                assert args.boot_dir == provision.DEFAULT_BOOT_DIR, args.boot_dir
    assert seen == {RECORDER: "record", UPLOADER: "upload", FIRSTBOOT: "provision"}


def test_state_and_runtime_dirs_are_the_configs() -> None:
    """StateDirectory/RuntimeDirectory give the config's default data_dir and runtime_dir,
    and the two daemons share both (same user, runtime dir kept when either stops)."""
    defaults = StorageConfig()
    daemons = {name: unit(name) for name in (RECORDER, UPLOADER)}
    for name, settings in daemons.items():
        assert Path("/var/lib") / one(settings, "StateDirectory") == defaults.data_dir, name
        assert Path("/run") / one(settings, "RuntimeDirectory") == defaults.runtime_dir, name
        assert one(settings, "RuntimeDirectoryPreserve") == "yes", (
            f"{name}: stopping it would delete {defaults.runtime_dir} under the other daemon"
        )
        assert one(settings, "Type") == "notify", name
        assert one(settings, "NotifyAccess") == "main", name
        assert one(settings, "Restart") == "always", name
        assert one(settings, "WatchdogSec"), name
    for key in ("User", "Group", "RuntimeDirectoryMode", "StateDirectoryMode"):
        assert len({one(s, key) for s in daemons.values()}) == 1, f"{key} differs"


def test_provisioning_conditions_match_linetap_provision() -> None:
    """The daemons wait for the marker `linetap provision` writes last; first boot runs
    when there is a boot config or a certificate to install on the boot partition."""
    marker = StorageConfig().data_dir / provision.MARKER
    for name in (RECORDER, UPLOADER):
        settings = unit(name)
        assert values(settings, "ConditionPathExists") == [str(marker)], name
        assert FIRSTBOOT in " ".join(values(settings, "After")), name
        assert FIRSTBOOT in " ".join(values(settings, "Wants")), name
    boot = provision.DEFAULT_BOOT_DIR
    firstboot = unit(FIRSTBOOT)
    assert sorted(values(firstboot, "ConditionPathExists")) == sorted(
        [f"|{boot / provision.BOOT_CONFIG}", f"|{boot / provision.CERT_DIR / 'device.crt'}"]
    )
    before = " ".join(values(firstboot, "Before")).split()
    assert RECORDER in before and UPLOADER in before
    assert one(firstboot, "Type") == "oneshot"
    assert one(firstboot, "RemainAfterExit") == "yes"


# -- the clock query gets through the system call filter ---------------------------------


def syscall_groups() -> dict[str, list[str]]:
    """systemd's @groups: members are system calls or other @groups."""
    done = analyze("syscall-filter")
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in done.stdout.splitlines():
        line = raw.strip()
        if not line:
            continue
        if not raw.startswith(" ") and line.startswith("@"):
            current = groups.setdefault(line, [])
        elif current is not None and not line.startswith("#"):
            current.append(line)
    assert "@system-service" in groups and "@clock" in groups, done.stdout[:500]
    return groups


def expand(item: str, groups: dict[str, list[str]]) -> set[str]:
    if not item.startswith("@"):
        return {item}
    return set().union(*(expand(member, groups) for member in groups[item]))


def allowed_syscalls(settings: list[Setting], groups: dict[str, list[str]]) -> set[str]:
    """systemd.exec(5): the first SystemCallFilter= line sets an allow list (or a deny
    list with ~); later lines add to it or, with the other polarity, remove from it."""
    lines = values(settings, "SystemCallFilter")
    assert lines and not lines[0].startswith("~"), "expected an allow list first"
    allowed: set[str] = set()
    for line in lines:
        deny = line.startswith("~")
        names = {n for item in line.lstrip("~").split() for n in expand(item, groups)}
        allowed = allowed - names if deny else allowed | names
    return allowed


@needs_analyze
@pytest.mark.parametrize("name", [RECORDER, UPLOADER])
def test_clock_state_query_allowed(name: str) -> None:
    """firmware/clock.py asks the kernel for the clock-sync state (manifest, telemetry):
    the filter must let the read-only query through, and ProtectClock=yes would block it
    (systemd.exec(5): it filters the whole @clock group, reads included)."""
    settings = unit(name)
    groups = syscall_groups()
    allowed = allowed_syscalls(settings, groups)
    missing = [s for s in CLOCK_QUERY_SYSCALLS if s not in allowed]
    assert not missing, f"{name}: SystemCallFilter blocks {missing}"
    assert values(settings, "ProtectClock") in ([], ["no"]), name
    # The rest of the privileged set stays out: setting the clock, mounts, reboot, ...
    for blocked in ("settimeofday", "clock_settime", "mount", "reboot", "setuid", "setrlimit"):
        assert blocked not in allowed, f"{name}: {blocked} allowed"


# -- users and groups --------------------------------------------------------------------


def run_sysusers(
    tmp_path: Path, group_file: str, conf: Path = SYSUSERS, user: str = "linetap"
) -> tuple[dict[str, list[str]], list[str]]:
    """systemd-sysusers with our file in a throwaway root; (groups: members, passwd line)."""
    assert SYSUSERS_BIN is not None
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib/sysusers.d").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text(group_file)
    shutil.copy(conf, root / "usr/lib/sysusers.d" / conf.name)
    done = subprocess.run(
        [SYSUSERS_BIN, f"--root={root}"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    groups: dict[str, list[str]] = {}
    for line in (root / "etc/group").read_text().splitlines():
        name, _, gid, members = line.split(":")
        assert name not in groups, f"group {name} twice in /etc/group"
        groups[name] = [gid, *filter(None, members.split(","))]
    users = [u for u in (root / "etc/passwd").read_text().splitlines() if u.startswith(f"{user}:")]
    assert len(users) == 1, users
    return groups, users[0].split(":")


@needs_sysusers
@pytest.mark.parametrize(
    ("distro", "group_file", "gpio_gid"),
    [
        ("debian", "root:x:0:\naudio:x:29:\n", None),
        ("raspios", "root:x:0:\naudio:x:29:\ngpio:x:997:pi\n", "997"),
    ],
)
def test_sysusers_user_and_groups(
    tmp_path: Path, distro: str, group_file: str, gpio_gid: str | None
) -> None:
    groups, user = run_sysusers(tmp_path, group_file)
    assert user[5] == str(StorageConfig().data_dir) and user[6] == "/usr/sbin/nologin", user
    assert groups["linetap"][0] == user[3], "linetap's primary group"
    wanted = one(unit(RECORDER), "SupplementaryGroups").split()
    for group in wanted:
        assert "linetap" in groups[group][1:], f"{distro}: linetap not in {group}: {groups}"
    assert groups["audio"][0] == "29", "the existing audio group is kept"
    if gpio_gid is not None:
        assert groups["gpio"][0] == gpio_gid, "an existing gpio group is kept"
        assert "pi" in groups["gpio"][1:]


@needs_sysusers
def test_sysusers_office_user(tmp_path: Path) -> None:
    groups, user = run_sysusers(
        tmp_path, "root:x:0:\n", conf=OFFICE_SYSUSERS, user="linetap-office"
    )
    assert user[5] == str(OfficeConfig().root) and user[6] == "/usr/sbin/nologin", user
    assert groups["linetap-office"][0] == user[3], "its own primary group"
    assert int(user[2]) < 1000, "a system user"
    assert one(unit(OFFICE_SERVE), "User") == one(unit(OFFICE_WEB), "User") == user[0]


def test_udev_rule_gives_gpio_devices_to_the_recorders_group() -> None:
    """/dev/gpiochip* (libgpiod) and /dev/gpiomem (RPi.GPIO) go to a group the recorder
    runs with; every rule line is KEY==match or KEY=assignment pairs."""
    recorder_groups = one(unit(RECORDER), "SupplementaryGroups").split()
    pair = re.compile(r'^[A-Z_]+(?:\{[^}]*\})?(==|!=|=|\+=|:=)"[^"]*"$')
    rules = [
        line
        for line in UDEV_RULES.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    kernels: list[str] = []
    for rule in rules:
        fields = [f.strip() for f in rule.split(",")]
        assert all(pair.match(f) for f in fields), f"malformed udev rule: {rule}"
        group = next(f.split('"')[1] for f in fields if f.startswith("GROUP="))
        assert group in recorder_groups, f"{rule}: group {group} is not the recorder's"
        kernels += [f.split('"')[1] for f in fields if f.startswith("KERNEL==")]
    assert "gpiochip[0-9]*" in kernels and "gpiomem" in kernels


@pytest.mark.parametrize(
    "name", ["linetap-recorder.service", "linetap-uploader.service", "linetap-firstboot.service"]
)
def test_device_units_name_their_config(name: str) -> None:
    """The kernel command line is on the boot partition anyone can edit with the card in
    hand: `systemd.setenv=LINETAP_CONFIG=…` there must not choose the device's settings,
    so each unit passes the installed config path itself."""
    text = (UNITS_DIR / name).read_text()
    [start] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert start.endswith(" --config /etc/linetap/linetap.toml"), start


def test_office_checkpoint_unit_alone_gets_the_ledger_key() -> None:
    """The ledger key reaches the checkpoint unit as a credential and no other unit names
    it (a receiver or web process that could read it could re-sign a rewritten log); its
    command parses as `audit checkpoint` with the default office config."""
    [argv] = commands(unit(OFFICE_CHECKPOINT))
    args = build_office_parser().parse_args(argv[1:])
    assert (args.command, args.audit_command, args.config) == (
        "audit",
        "checkpoint",
        DEFAULT_CONFIG,
    )
    checkpoint = (OFFICE_DIR / OFFICE_CHECKPOINT).read_text()
    assert "LoadCredential=ledger-key:/etc/linetap-office/ledger.key" in checkpoint
    assert "audit checkpoint --config /etc/linetap-office/office.toml" in checkpoint
    for other in (OFFICE_SERVE, OFFICE_TEMPLATE, OFFICE_WEB):
        assert "ledger" not in (OFFICE_DIR / other).read_text()
    timer = (OFFICE_DIR / "linetap-office-checkpoint.timer").read_text()
    assert "OnUnitActiveSec=1h" in timer and "Persistent=true" in timer


def test_office_retention_unit_runs_the_purge_daily() -> None:
    """The retention unit's command parses as `retention run` with the default office
    config, keeps the checkpoint unit's sandbox line for line, and its timer is daily and
    catches up after downtime; it is given no key."""
    [argv] = commands(unit(OFFICE_RETENTION))
    args = build_office_parser().parse_args(argv[1:])
    assert (args.command, args.retention_command, args.config) == (
        "retention",
        "run",
        DEFAULT_CONFIG,
    )
    text = (OFFICE_DIR / OFFICE_RETENTION).read_text()
    assert sandbox_lines(text) == sandbox_lines((OFFICE_DIR / OFFICE_CHECKPOINT).read_text())
    assert "LoadCredential" not in text
    timer = (OFFICE_DIR / "linetap-office-retention.timer").read_text()
    assert "OnCalendar=*-*-* 02:30:00" in timer and "Persistent=true" in timer


def test_office_web_unit_is_sandboxed_like_the_receiver() -> None:
    """The web unit keeps the receiver's sandbox line for line (the same user, store and
    rules; only the command and the ordering differ), and names no devices: it listens on
    IPv4/IPv6 and talks to journald/PostgreSQL over AF_UNIX, nothing else."""

    def sandbox(name: str) -> list[str]:
        return sandbox_lines((OFFICE_DIR / name).read_text())

    assert sandbox(OFFICE_WEB) == sandbox(OFFICE_SERVE)
    web = unit(OFFICE_WEB)
    assert one(web, "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one(web, "PrivateDevices") == "yes" and one(web, "DevicePolicy") == "closed"
    assert not values(web, "DeviceAllow") and not values(web, "SupplementaryGroups")
    assert one(web, "Restart") == "always" and one(web, "RestartPreventExitStatus") == "2"
