#!/bin/bash
# mmdebstrap --customize-hook: turn the Debian arm64 tree in $1 into the linetap appliance.
# Runs on the build host; commands inside the tree run with `chroot` through qemu-user.
# PROJECT is the linetap source tree.
set -euo pipefail

ROOT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=${PROJECT:?PROJECT must name the linetap source tree}
UNITS=${LINETAP_UNITS_DIR:-$PROJECT/systemd}
VENV=/opt/linetap/venv
# What the appliance runs, and nothing of the head office or the demo (the build checks).
DEVICE_PACKAGES=(firmware drivers buffers uploader sealedrec runtime)
in_root() { chroot "$ROOT" "$@"; }
say() { echo "customize: $*"; }

say "image configuration (fstab, journald, network, grow-data) from image/rootfs/"
cp -a "$HERE/rootfs/." "$ROOT/"
mkdir -p "$ROOT/usr/share/doc/linetap"
cp "$HERE/README.md" "$ROOT/usr/share/doc/linetap/image-README.md"

say "linetap into $VENV (Debian's python3 packages through --system-site-packages)"
src=$ROOT/tmp/linetap-src
rm -rf "$src" && mkdir -p "$src"
tar -C "$PROJECT" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - \
    pyproject.toml README.md "${DEVICE_PACKAGES[@]}" | tar -C "$src" -xf -
in_root python3 -m venv --system-site-packages "$VENV"
# --no-index --no-deps: nothing comes from PyPI; the dependencies are Debian's packages.
# --no-build-isolation: the build backend is Debian's python3-setuptools.
in_root "$VENV/bin/pip" install --quiet --no-index --no-deps --no-build-isolation \
    --no-cache-dir --disable-pip-version-check /tmp/linetap-src
rm -rf "$src"
# Prove the runtime imports and versions here, not on the first device in the field.
in_root "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import alsaaudio, cryptography, gpiod, numpy, paho.mqtt, pydantic, serial, soundfile  # noqa
need = {"numpy": "1.24", "cryptography": "41", "pydantic": "2.5", "paho-mqtt": "2.0",
        "soundfile": "0.12", "pyalsaaudio": "0.10", "pyserial": "3.5", "gpiod": "2.1"}
def key(v): return tuple(int(p) for p in v.split(".")[:2] if p.isdigit())
for dist, minimum in need.items():
    have = md.version(dist)
    assert key(have) >= key(minimum), f"{dist} {have} < {minimum}"
    print(f"customize:   {dist} {have} (>= {minimum})")
import firmware.cli, firmware.app, uploader.daemon  # noqa
EOF
# pyproject's linetap-office script points at the head office, which is not here.
rm -f "$ROOT$VENV/bin/linetap-office"
in_root "$VENV/bin/python" - <"$HERE/check-device-only.py"
in_root "$VENV/bin/linetap" --version
# Every subcommand's module imports (a wheel holds only the packages pyproject finds).
for tool in check levels hooktest status provision analyze; do
    in_root "$VENV/bin/linetap" "$tool" --help >/dev/null
done
ln -sfn "$VENV/bin/linetap" "$ROOT/usr/local/bin/linetap"

say "systemd units from systemd/"
units=()
shopt -s nullglob
for f in "$UNITS"/*.service "$UNITS"/*.timer "$UNITS"/*.socket \
    "$UNITS"/*.target "$UNITS"/*.path; do
    install -m 0644 "$f" "$ROOT/usr/lib/systemd/system/"
    grep -q '^\[Install\]' "$f" && units+=("$(basename "$f")")
done
for f in "$UNITS"/*sysusers*.conf "$UNITS"/*.sysusers \
    "$UNITS"/sysusers.d/*.conf; do
    install -D -m 0644 "$f" "$ROOT/usr/lib/sysusers.d/linetap.conf"
done
for f in "$UNITS"/*tmpfiles*.conf "$UNITS"/*.tmpfiles \
    "$UNITS"/tmpfiles.d/*.conf; do
    install -D -m 0644 "$f" "$ROOT/usr/lib/tmpfiles.d/linetap.conf"
done
for f in "$UNITS"/*.rules "$UNITS"/udev/*.rules; do
    install -D -m 0644 "$f" "$ROOT/usr/lib/udev/rules.d/$(basename "$f")"
done
shopt -u nullglob
# Users and groups go into /etc/passwd now: at run time /etc is read-only.
in_root systemd-sysusers

say "installer access: user 'installer', SSH only with a key from the boot partition"
# No password ('*': not locked, so sshd's key login works; no password login exists).
in_root useradd --create-home --shell /bin/bash --groups audio,gpio,systemd-journal installer
in_root usermod --password '*' installer
chmod 0440 "$ROOT/etc/sudoers.d/linetap-installer"
in_root visudo -c -q -f /etc/sudoers.d/linetap-installer
# Each unit makes its own host key at first boot (linetap-installer-access), on its data
# partition: keys made here would be the same on every unit flashed from this image.
rm -f "$ROOT"/etc/ssh/ssh_host_*
# Prove the sshd config (with a throwaway host key): keys only, the installer only.
in_root ssh-keygen -q -t ed25519 -N '' -f /tmp/check_host_key
mkdir -p "$ROOT/run/sshd"
effective=$(in_root sshd -T -o HostKey=/tmp/check_host_key \
    -C user=installer,host=laptop,addr=192.0.2.1)
rm -f "$ROOT"/tmp/check_host_key*
for want in 'passwordauthentication no' 'permitrootlogin no' 'allowusers installer' \
    'authorizedkeysfile /run/linetap-installer/authorized_keys'; do
    grep -qx "$want" <<<"$effective" || { echo "customize: sshd config lacks '$want'" >&2; exit 1; }
done
units+=(linetap-grow-data.service linetap-installer-access.service ssh.service
    systemd-networkd.service systemd-resolved.service
    systemd-timesyncd.service)
say "enabling ${units[*]}"
in_root systemctl enable "${units[@]}"
# Timers that write to the read-only root or make no sense on an appliance.
in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service

say "config: /etc/linetap/linetap.toml -> the data partition (written by first boot)"
mkdir -p "$ROOT/etc/linetap"
ln -sfn /var/lib/linetap/config/linetap.toml "$ROOT/etc/linetap/linetap.toml"

say "boot partition: config.txt and cmdline.txt by Debian's raspi-firmware hook"
cat >>"$ROOT/etc/default/raspi-firmware" <<'EOF'

# linetap image: root by label (SD card, USB or virtual disk alike), serial console on
# the Pi 3/4 header UART (ttyS1) and HDMI; no CMA reservation (headless; Pi 4 dislikes it).
ROOTPART="LABEL=linetap-root"
CONSOLES="tty0 ttyS1,115200"
CMA=0
EOF
# build.sh diverted update-initramfs while packages installed: build the initrd once
# now; its post-update hook (raspi-firmware) copies kernel, initrd and device trees to
# /boot/firmware and writes config.txt and cmdline.txt.
rm "$ROOT/usr/sbin/update-initramfs"
in_root dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
in_root update-initramfs -c -k all
# The hook writes "rw"; the appliance's root is read-only (fstab agrees).
sed -i 's/ rw / ro /' "$ROOT/boot/firmware/cmdline.txt"
grep -q ' ro ' "$ROOT/boot/firmware/cmdline.txt" || { echo "customize: cmdline.txt lacks ro" >&2; exit 1; }
say "cmdline.txt: $(cat "$ROOT/boot/firmware/cmdline.txt")"
say "capture hardware: the kernel's sound modules and the HAT overlays (check-hardware.py)"
# After the hook: it copies device trees and writes config.txt (with the commented
# dtoverlay= lines of /etc/default/raspi-firmware-custom) but leaves overlays/ alone.
# The build fails here if the kernel lacks a module the hardware table needs or an
# overlay does not compile or apply.
python3 "$HERE/check-hardware.py" --install "$ROOT/boot/firmware/overlays" "$ROOT"
grep -q '^#dtoverlay=linetap-' "$ROOT/boot/firmware/config.txt" \
    || { echo "customize: config.txt lacks the commented dtoverlay= lines" >&2; exit 1; }
# The example device config field techs edit before first boot (the project's own).
example=$(in_root "$VENV/bin/python" -c \
    'import firmware, pathlib; print(pathlib.Path(firmware.__file__).parent / "linetap.example.toml")')
cp "$ROOT$example" "$ROOT/boot/firmware/linetap.toml"
# The boot partition's copies are the ones that boot; drop the root filesystem's.
rm -f "$ROOT"/boot/initrd.img-* "$ROOT"/initrd.img "$ROOT"/initrd.img.old

say "read-only root: empty machine-id (systemd makes a transient one each boot)"
: >"$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
mkdir -p "$ROOT/var/lib/linetap"
chmod 0755 "$ROOT/var/lib/linetap"
# Build-only packages: the venv is installed; setuptools is not needed at run time.
in_root apt-get purge -y -qq python3-setuptools >/dev/null
in_root apt-get autoremove -y -qq --purge >/dev/null
du -shx "$ROOT" | sed 's/^/customize: root tree /'
