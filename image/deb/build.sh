#!/bin/bash
# Build the linetap Debian package for Raspberry Pi OS (trixie, arm64), offline, with
# dpkg-deb (no debhelper): `make deb`.
#
#   image/deb/build.sh [--version V] [--out DIR]
#
# The same appliance the SD-card image installs (image/customize.sh), minus the image's
# own parts (read-only root, grow-data, installer SSH access):
#   /usr/lib/linetap/          the device packages (DEVICE_PACKAGES below), sources only:
#                              postinst byte-compiles them (py3compile), prerm cleans up
#   /usr/bin/linetap           launcher: Debian's python3 on the private module directory
#   /usr/lib/systemd/system/   the device units of systemd/ (not systemd/office/), their
#                              /opt/linetap/venv/bin/linetap rewritten to /usr/bin/linetap
#   /usr/lib/sysusers.d/, /usr/lib/udev/rules.d/   the daemons' user, the GPIO rule
#   /etc/alsa/conf.d/          the ALSA config of image/rootfs/ (conffiles)
#   /usr/share/doc/linetap/    copyright, changelog, INSTALLER.md, examples/
#   /usr/share/man/man1/linetap.1.gz, /usr/share/lintian/overrides/linetap
# postinst (image/deb/postinst) makes the user, the /etc/linetap/linetap.toml link and
# /var/lib/linetap, and enables the units; nothing starts before provisioning.
#
# V defaults to pyproject.toml's version; output DIR/linetap_V_arm64.deb, DIR defaulting
# to image/build/deb. LINETAP_UNITS_DIR: the units directory (default systemd/).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
UNITS_DIR=${LINETAP_UNITS_DIR:-$PROJECT/systemd}
OUT=$PROJECT/image/build/deb
VERSION=
# What the appliance runs, as image/customize.sh's DEVICE_PACKAGES (tests/test_deb.py
# keeps the two equal); nothing of the head office or the demo (stage_modules.py checks).
DEVICE_PACKAGES=(firmware drivers buffers uploader sealedrec runtime)
# Debian's python3 packages, the versions image/customize.sh checks in the image
# (pyproject.toml's minimums; trixie has them, bookworm's pydantic, paho-mqtt and
# libgpiod are too old). numpy's Debian version has an epoch.
DEPENDS=(
    "python3 (>= 3.11~)"
    "python3-numpy (>= 1:1.24)"
    "python3-cryptography (>= 41)"
    "python3-pydantic (>= 2.5)"
    "python3-paho-mqtt (>= 2.0)"
    "python3-soundfile (>= 0.12)"
    "python3-alsaaudio (>= 0.10)"
    "python3-serial (>= 3.5)"
    "python3-libgpiod (>= 2.1)"
    # The units, and systemd-sysusers in postinst.
    "systemd"
)
LAUNCHER=/usr/bin/linetap
OLD_LAUNCHER=/opt/linetap/venv/bin/linetap
MODULE_DIR=/usr/lib/linetap

die() { echo "deb: $*" >&2; exit 1; }
say() { echo "deb: $*"; }

while [ $# -gt 0 ]; do
    case "$1" in
    --version) VERSION=${2:?--version needs a value, e.g. --version 0.1.1}; shift 2 ;;
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1'; usage: image/deb/build.sh [--version V] [--out DIR]" ;;
    esac
done

for tool in dpkg-deb python3 gzip; do
    command -v "$tool" >/dev/null || die "missing '$tool': apt-get install dpkg-dev python3 gzip (or: make sysdeps)"
done
if [ -z "$VERSION" ]; then
    VERSION=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
        "$PROJECT/pyproject.toml")
fi
# A Debian version without epoch or revision: the package is native to this project.
[[ $VERSION =~ ^[0-9][A-Za-z0-9.+~]*$ ]] \
    || die "version '$VERSION' is not a Debian version (digits first, then letters, digits, . + ~): fix --version or pyproject.toml's version"
[ -d "$UNITS_DIR" ] || die "$UNITS_DIR: no such directory; set LINETAP_UNITS_DIR to the systemd units (default systemd/)"

# Reproducible: file dates and the changelog's from the last commit, when there is one.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$PROJECT" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
COMMIT=$(git -C "$PROJECT" describe --always --dirty 2>/dev/null || echo "an unversioned tree")

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEB=$OUT/linetap_${VERSION}_arm64.deb
STAGE=$(mktemp -d "$OUT/.stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
umask 022
ROOT=$STAGE/root
mkdir -p "$ROOT/DEBIAN"

say "linetap $VERSION: modules into $MODULE_DIR"
python3 -I "$HERE/stage_modules.py" "$PROJECT" "$ROOT$MODULE_DIR" "${DEVICE_PACKAGES[@]}"
install -D -m 0755 "$HERE/launcher.py" "$ROOT$LAUNCHER"

say "systemd units from $UNITS_DIR (ExecStart= $OLD_LAUNCHER -> $LAUNCHER)"
units=() daemons=()
shopt -s nullglob
for f in "$UNITS_DIR"/*.service "$UNITS_DIR"/*.timer "$UNITS_DIR"/*.socket \
    "$UNITS_DIR"/*.target "$UNITS_DIR"/*.path; do
    name=$(basename "$f")
    dest=$ROOT/usr/lib/systemd/system/$name
    # Any /opt/linetap path but the launcher would name the image's venv, which this
    # package lacks.
    if left=$(sed "s|$OLD_LAUNCHER|$LAUNCHER|g" "$f" | grep -n '/opt/linetap'); then
        die "$f:$(head -1 <<<"$left"): names /opt/linetap, which the package does not have; use $LAUNCHER (or a path the package installs) there"
    fi
    install -D -m 0644 "$f" "$dest"
    # The man page and the guide exist where the package is installed (systemctl help).
    sed -i -e "s|$OLD_LAUNCHER|$LAUNCHER|g" \
        -e '/^Description=/a Documentation=man:linetap(1) file:/usr/share/doc/linetap/INSTALLER.md' "$dest"
    if grep -q '^\[Install\]' "$dest"; then
        units+=("$name")
        # Long-running ones get try-restart after an upgrade; a oneshot is not re-run.
        if ! grep -q '^Type=oneshot' "$dest"; then
            daemons+=("$name")
        fi
    fi
done
[ ${#units[@]} -gt 0 ] || die "no systemd units with [Install] in $UNITS_DIR/ (linetap-recorder.service, ...): the package would run nothing"
for f in "$UNITS_DIR"/sysusers.d/*.conf; do
    install -D -m 0644 "$f" "$ROOT/usr/lib/sysusers.d/linetap.conf"
done
for f in "$UNITS_DIR"/tmpfiles.d/*.conf; do
    install -D -m 0644 "$f" "$ROOT/usr/lib/tmpfiles.d/linetap.conf"
done
for f in "$UNITS_DIR"/udev/*.rules; do
    install -D -m 0644 "$f" "$ROOT/usr/lib/udev/rules.d/$(basename "$f")"
done
# The appliance's ALSA config (the linetap_usb PCM a USB audio interface is captured
# through, firmware/hardware.py's usb-audio row), where the image has it: conffiles,
# so a local edit survives upgrades and a purge removes them. The rest of image/rootfs/
# is the image's own (read-only root, network, SSH, grow-data, boot config).
for f in "$PROJECT"/image/rootfs/etc/alsa/conf.d/*.conf; do
    install -D -m 0644 "$f" "$ROOT/etc/alsa/conf.d/$(basename "$f")"
    echo "/etc/alsa/conf.d/$(basename "$f")" >>"$ROOT/DEBIAN/conffiles"
done
# The optional RPi.GPIO drop-in goes to /etc by hand (systemd/README.md): an example.
for f in "$UNITS_DIR"/*.conf; do
    install -D -m 0644 "$f" "$ROOT/usr/share/doc/linetap/examples/$(basename "$f")"
done
shopt -u nullglob
[ -f "$ROOT/usr/lib/sysusers.d/linetap.conf" ] \
    || die "$UNITS_DIR/sysusers.d/linetap.conf: missing; the units' user linetap would not exist"

say "documentation: copyright, changelog, INSTALLER.md, examples, linetap(1)"
doc=$ROOT/usr/share/doc/linetap
install -D -m 0644 "$HERE/copyright" "$doc/copyright"
install -m 0644 "$PROJECT/firmware/INSTALLER.md" "$doc/INSTALLER.md"
install -D -m 0644 "$PROJECT/firmware/linetap.example.toml" "$doc/examples/linetap.toml"
install -D -m 0644 "$HERE/lintian-overrides" "$ROOT/usr/share/lintian/overrides/linetap"
day_rfc=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
day=$(date -u +%Y-%m-%d -d "@$SOURCE_DATE_EPOCH")
sed -e "s|@VERSION@|$VERSION|" -e "s|@DATE@|$day_rfc|" -e "s|@COMMIT@|$COMMIT|" \
    "$HERE/changelog.in" | gzip -9n >"$doc/changelog.gz"
# The man page's command list is firmware/cli.py's, so it cannot fall behind.
commands=$(python3 -I -S - "$PROJECT" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from firmware.cli import COMMANDS
for command in COMMANDS:
    text = command.help.replace("\\", "\\e").replace("-", "\\-")
    print(f".TP\n.B {command.name.replace('-', chr(92) + '-')}\n{text}")
PY
)
mkdir -p "$ROOT/usr/share/man/man1"
python3 -I - "$HERE/linetap.1.in" "$VERSION" "$day" "$commands" <<'PY' | gzip -9n >"$ROOT/usr/share/man/man1/linetap.1.gz"
import sys
template, version, day, commands = sys.argv[1:]
text = open(template, encoding="utf-8").read()
sys.stdout.write(text.replace("@VERSION@", version).replace("@DATE@", day).replace("@COMMANDS@", commands))
PY

say "control and maintainer scripts (units: ${units[*]})"
for script in postinst prerm postrm; do
    sed -e "s|@UNITS@|${units[*]}|" -e "s|@DAEMONS@|${daemons[*]}|" "$HERE/$script" >"$ROOT/DEBIAN/$script"
    chmod 0755 "$ROOT/DEBIAN/$script"
done
# Normalised modes whatever the checkout's umask: 0644 files, 0755 directories and
# the launcher.
find "$ROOT" -path "$ROOT/DEBIAN" -prune -o -type d -exec chmod 0755 {} + -o -type f -exec chmod 0644 {} +
chmod 0755 "$ROOT$LAUNCHER"
# md5sums: every file but the conffiles (dpkg keeps their sums itself), as dh_md5sums.
(cd "$ROOT" && find . \( -path ./DEBIAN -o -path ./etc \) -prune -o -type f -printf '%P\0' \
    | LC_ALL=C sort -z | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$ROOT/DEBIAN/md5sums"
[ ! -f "$ROOT/DEBIAN/conffiles" ] || chmod 0644 "$ROOT/DEBIAN/conffiles"
size_kib=$(du -s -k --apparent-size --exclude=DEBIAN "$ROOT" | cut -f1)
printf -v depends '%s, ' "${DEPENDS[@]}"
depends=${depends%, }
sed -e "s|@VERSION@|$VERSION|" -e "s|@INSTALLED_SIZE@|$size_kib|" -e "s|@DEPENDS@|$depends|" \
    "$HERE/control.in" >"$ROOT/DEBIAN/control"
find "$ROOT" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

say "dpkg-deb: $DEB"
rm -f "$DEB"
dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$STAGE/linetap.deb" >/dev/null
mv "$STAGE/linetap.deb" "$DEB"
say "$DEB: $(($(stat -c %s "$DEB") / 1024)) KiB, installed $size_kib KiB"
