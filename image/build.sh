#!/bin/bash
# Build the linetap Raspberry Pi (3/4/5, arm64) SD-card image from Debian's archive only.
#
#   image/build.sh            (or: make image) -- as root, with qemu-user binfmt for arm64
#
# 1. mmdebstrap: Debian trixie arm64 root filesystem (kernel, Raspberry Pi boot firmware,
#    systemd, Debian's python3 packages), maintainer scripts run in the chroot through
#    qemu-user; customize.sh installs linetap into /opt/linetap/venv, the units, the
#    read-only-root configuration and the boot partition's example linetap.toml.
# 2. genimage: boot (FAT), root (ext4, mounted read-only) and data (ext4, /var/lib/linetap)
#    partitions made from directories with mkdosfs/mtools and mke2fs -d: no loop
#    devices, no mounts.
# 3. xz: the compressed image Raspberry Pi Imager and `xzcat | dd` take.
#
# Output: image/build/linetap.img and image/build/linetap.img.xz. Downloaded .debs are
# kept in image/build/debs/ so that a rebuild downloads only what changed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(dirname "$HERE")
BUILD=${LINETAP_IMAGE_BUILD:-$HERE/build}
SUITE=trixie
MIRROR=${LINETAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${LINETAP_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Initial size of the data partition; linetap-grow-data.service grows it to fill the card.
DATA_SIZE=${LINETAP_DATA_SIZE:-256M}
BOOT_SIZE=256M

PACKAGES=(
    # boot: Debian's generic arm64 kernel (Pi 3/4/5 device trees, also qemu's virt
    # machine), its initramfs, and the Raspberry Pi boot firmware (non-free-firmware)
    linux-image-arm64 initramfs-tools zstd raspi-firmware
    # system: systemd as init, networking, time sync
    systemd systemd-sysv udev systemd-timesyncd systemd-resolved iproute2 kmod
    ca-certificates
    # linetap's runtime dependencies, from Debian (pyproject.toml's versions: trixie has
    # them; bookworm's pydantic 1.10, paho-mqtt 1.6 and libgpiod 1.6 are too old)
    python3 python3-venv python3-setuptools python3-numpy python3-cryptography
    python3-pydantic python3-paho-mqtt python3-soundfile python3-alsaaudio
    python3-serial python3-libgpiod
    # field tools: sound card and GPIO listing, growing the data partition
    alsa-utils gpiod cloud-guest-utils fdisk e2fsprogs
    # installer access: SSH with a key from the boot partition, the tools run with sudo
    openssh-server sudo
)

START=$(date +%s)
step() { printf '\n[image %4ds] %s\n' "$(($(date +%s) - START))" "$*"; }
die() { echo "image: $*" >&2; exit 1; }

"$HERE/check-host.sh" || exit 1
UNITS=${LINETAP_UNITS_DIR:-$PROJECT/systemd}
compgen -G "$UNITS/*.service" >/dev/null \
    || die "no systemd units in $UNITS/ (linetap-recorder.service, ...): the image would not start linetap"

ROOTFS=$BUILD/rootfs
CACHE=$BUILD/debs
mkdir -p "$BUILD" "$CACHE"

step "1/3 mmdebstrap: Debian $SUITE arm64 root filesystem in $ROOTFS (cached .debs: $(find "$CACHE" -name '*.deb' | wc -l))"
rm -rf "$ROOTFS" "$BUILD/debs.new"
mkdir -p "$BUILD/debs.new"
# mmdebstrap draws a progress bar only on a terminal: say how far dpkg got every 30 s
# (about 200 packages; customize.sh's steps follow, under qemu-user too).
(
    while sleep 30; do
        n=$(grep -c '^Status: install ok installed' "$ROOTFS/var/lib/dpkg/status" 2>/dev/null || true)
        printf '[image %4ds]   ... still building the root filesystem (%d packages configured)\n' \
            "$(($(date +%s) - START))" "${n:-0}"
    done
) &
heartbeat=$!
trap 'kill "$heartbeat" 2>/dev/null || true' EXIT
# update-initramfs is diverted to `true` while packages install (every kernel module or
# udev trigger would rebuild the initrd, minutes each under qemu-user); customize.sh
# restores it and builds the initrd once. Cached .debs are hard-linked into the chroot's
# apt cache before apt runs (apt reuses them after checking their hashes); afterwards
# the chroot's set replaces the cache.
mmdebstrap \
    --mode=root --arch=arm64 --variant=minbase \
    --components=main,non-free-firmware \
    --include="$(IFS=,; echo "${PACKAGES[*]}")" \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
    --skip=essential/unlink \
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives" && find "'"$CACHE"'" -name "*.deb" -exec cp -l -t "$1/var/cache/apt/archives/" {} +' \
    --customize-hook="PROJECT='$PROJECT' LINETAP_UNITS_DIR='$UNITS' '$HERE/customize.sh' \"\$1\"" \
    --customize-hook='find "$1/var/cache/apt/archives" -name "*.deb" -exec cp -l -t "'"$BUILD/debs.new"'" {} +' \
    "$SUITE" "$ROOTFS" \
    "deb $MIRROR $SUITE main non-free-firmware" \
    "deb $MIRROR $SUITE-updates main non-free-firmware" \
    "deb $SECURITY_MIRROR $SUITE-security main non-free-firmware"
kill "$heartbeat" 2>/dev/null || true
rm -rf "$CACHE" && mv "$BUILD/debs.new" "$CACHE"

step "2/3 genimage: boot (FAT), root (ext4, read-only), data (ext4) partitions"
# The root partition: what the tree holds plus room for ext4's own metadata.
kib() { du -s -k -x "$1" | cut -f1; }
root_kib=$(($(kib "$ROOTFS") - $(kib "$ROOTFS/boot/firmware") - $(kib "$ROOTFS/var/lib/linetap")))
ROOT_SIZE=$(((root_kib * 115 / 100 + 65536) / 1024))M
rm -rf "$BUILD/genimage-tmp" "$BUILD/linetap.img" "$BUILD/linetap.img.xz"
BOOT_SIZE=$BOOT_SIZE ROOT_SIZE=$ROOT_SIZE DATA_SIZE=$DATA_SIZE \
    genimage --config "$HERE/genimage.cfg" \
    --rootpath "$ROOTFS" --tmppath "$BUILD/genimage-tmp" \
    --inputpath "$BUILD" --outputpath "$BUILD"
rm -rf "$BUILD/genimage-tmp" "$BUILD"/boot.vfat "$BUILD"/root.ext4 "$BUILD"/data.ext4

step "3/3 xz: compressing for Raspberry Pi Imager / dd"
xz --threads=0 -6 --keep --force "$BUILD/linetap.img"

raw=$(stat -c %s "$BUILD/linetap.img")
packed=$(stat -c %s "$BUILD/linetap.img.xz")
step "done in $(($(date +%s) - START)) s"
printf 'image: %s  %d MiB raw (partitions: boot %s, root %s, data %s, grown to the card at first boot)\n' \
    "$BUILD/linetap.img" $((raw / 1048576)) "$BOOT_SIZE" "$ROOT_SIZE" "$DATA_SIZE"
printf 'image: %s  %d MiB compressed (flash this one: image/README.md)\n' \
    "$BUILD/linetap.img.xz" $((packed / 1048576))
