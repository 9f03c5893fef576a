#!/bin/bash
# Test-only (never shipped): gpio-sim.ko for the image's kernel, so the gpiod contract
# suite can drive real /dev/gpiochip* lines in the test VM.
#
#   tests/vm/build-gpio-sim.sh KERNEL_VERSION [REFERENCE_MODULE]
#
# Debian's arm64 kernel builds neither gpio-sim nor gpio-mockup (CONFIG_GPIO_SIM unset), and
# nothing it builds selects CONFIG_IRQ_SIM, the interrupt simulator gpio-sim needs. So the
# module is built out of tree from two files of Debian's linux-source-6.12 -
# drivers/gpio/gpio-sim.c and kernel/irq/irq_sim.c, linked into one gpio-sim.ko - against
# linux-headers-KERNEL_VERSION, with the gcc those headers name, in a throw-away Debian trixie
# arm64 root (mmdebstrap, qemu-user). CONFIG_CONFIGFS_FS=m: configfs.ko must be loaded first.
# One change to irq_sim.c: it calls handle_simple_irq(irq_to_desc(irq)), and irq_to_desc is
# not exported to modules (modpost: "irq_to_desc" undefined); generic_handle_irq(irq), which
# is exported, looks up the same descriptor and runs its handler, handle_simple_irq, which
# irq_sim's own map() installed.
# The kernel does not enforce module signatures (CONFIG_MODULE_SIG_FORCE unset, no lockdown
# without EFI secure boot), so the unsigned module loads and only taints the kernel.
#
# The vermagic of the result must equal that of configfs.ko from linux-image-KERNEL_VERSION
# (which the headers depend on) and of REFERENCE_MODULE (a module of the image's own
# kernel), else the kernel would refuse it. Cached as
# image/build/gpio-sim/KERNEL_VERSION/gpio-sim.ko; the path is the last line printed.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
BUILD=${LINETAP_IMAGE_BUILD:-$PROJECT/image/build}
MIRROR=${LINETAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${LINETAP_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=trixie
SOURCE_PACKAGE=linux-source-6.12

die() { echo "build-gpio-sim: $*" >&2; exit 1; }

if [ $# -lt 1 ] || [ $# -gt 2 ]; then die "usage: $0 KERNEL_VERSION [REFERENCE_MODULE]"; fi
KVER=$1
REFERENCE=${2:-}
[[ $KVER =~ ^6\.12\.[0-9]+\+deb13-arm64$ ]] \
    || die "kernel '$KVER' is not a Debian trixie 6.12 arm64 kernel (NNN in 6.12.NNN+deb13-arm64); this script builds against $SOURCE_PACKAGE only"
UPSTREAM=${KVER%%+*}  # 6.12.NNN: linux-source must be the same upstream release
OUT=$BUILD/gpio-sim/$KVER
MODULE=$OUT/gpio-sim.ko
CACHE=$BUILD/gpio-sim/debs

check_vermagic() {
    local got want
    got=$(modinfo -F vermagic "$MODULE")
    [[ $got == "$KVER "* ]] || die "$MODULE: vermagic '$got' is not for kernel $KVER"
    for reference in "$OUT/configfs.ko.xz" ${REFERENCE:+"$REFERENCE"}; do
        want=$(modinfo -F vermagic "$reference")
        [ "$got" = "$want" ] \
            || die "$MODULE: vermagic '$got' differs from '$want' of $reference; delete $OUT and rebuild"
    done
}

if [ -f "$MODULE" ]; then
    check_vermagic
    echo "build-gpio-sim: cached, vermagic $(modinfo -F vermagic "$MODULE")" >&2
    echo "$MODULE"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root chroots into the arm64 build root)"
arch-test arm64 >/dev/null 2>&1 \
    || die "this machine cannot run arm64 binaries (qemu-user binfmt): see image/check-host.sh"

started=$(date +%s)
work=$(mktemp -d "${TMPDIR:-/tmp}/gpio-sim-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$CACHE" "$work/debs"

# Kbuild: one module, gpio-sim.ko, of both objects (irq_sim.c's exported functions are
# then the module's own; the kernel has no copy of them to clash with).
cat >"$work/Kbuild" <<'EOF'
obj-m := gpio-sim.o
gpio-sim-y := gpio-sim-core.o irq_sim.o
EOF

# Host-side hooks run with the root as $1; "chroot $1" runs arm64 code under qemu-user.
# The source tarball is unpacked by the host's tar (xz under qemu-user takes minutes).
extract='set -e
    tarball=$(ls "$1"/usr/src/'"$SOURCE_PACKAGE"'.tar.*)
    mkdir -p "$1/build"
    tar -C "$1/build" -xf "$tarball" --strip-components=1 --wildcards \
        "*/drivers/gpio/gpio-sim.c" "*/kernel/irq/irq_sim.c"
    mv "$1/build/drivers/gpio/gpio-sim.c" "$1/build/gpio-sim-core.c"
    sed "s/handle_simple_irq(irq_to_desc(irqnum))/generic_handle_irq(irqnum)/" \
        "$1/build/kernel/irq/irq_sim.c" >"$1/build/irq_sim.c"
    if grep -q irq_to_desc "$1/build/irq_sim.c" || ! grep -q generic_handle_irq "$1/build/irq_sim.c"; then
        echo "build-gpio-sim: irq_sim.c changed upstream: the irq_to_desc call was not replaced" >&2
        exit 1
    fi
    cp "'"$work"'/Kbuild" "$1/build/Kbuild"
    cp "$1/lib/modules/'"$KVER"'/kernel/fs/configfs/configfs.ko.xz" "'"$work"'/"'
versions='set -e
    chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" \
        linux-headers-'"$KVER"' '"$SOURCE_PACKAGE"' | tee "'"$work"'/versions"'
compile='set -e
    chroot "$1" make -C /usr/src/linux-headers-'"$KVER"' M=/build -j2 modules >&2
    cp "$1/build/gpio-sim.ko" "'"$work"'/gpio-sim.ko"'

echo "build-gpio-sim: building gpio-sim.ko for $KVER in a trixie arm64 root (a few minutes)" >&2
mmdebstrap \
    --mode=root --arch=arm64 --variant=minbase \
    --include="linux-headers-$KVER,$SOURCE_PACKAGE,make,xz-utils" \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata \
    --skip=essential/unlink \
    --essential-hook='chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs && ln -s /bin/true "$1/usr/sbin/update-initramfs"' \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives" && find "'"$CACHE"'" -name "*.deb" -exec cp -l -t "$1/var/cache/apt/archives/" {} +' \
    --customize-hook='find "$1/var/cache/apt/archives" -name "*.deb" -exec cp -l -t "'"$work/debs"'" {} +' \
    --customize-hook="$versions" \
    --customize-hook="$extract" \
    --customize-hook="$compile" \
    "$SUITE" /dev/null \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main" >&2 \
    || built=false
# Keep the downloaded .debs (linux-source alone is 150 MB) for the next try, built or not.
if [ -n "$(ls "$work/debs")" ]; then
    rm -rf "$CACHE" && mv "$work/debs" "$CACHE"
fi
${built:-true} \
    || die "mmdebstrap failed (above): linux-headers-$KVER no longer in the archive, or the module did not build"

source_version=$(awk -v p="$SOURCE_PACKAGE" '$1 == p {print $2}' "$work/versions")
[[ $source_version == "$UPSTREAM"-* ]] \
    || die "$SOURCE_PACKAGE is $source_version in the archive, not upstream $UPSTREAM like the kernel $KVER; gpio-sim.c must come from the kernel's own release"
mkdir -p "$OUT"
cp "$work/versions" "$work/configfs.ko.xz" "$OUT/"
cp "$work/gpio-sim.ko" "$MODULE.new" && mv "$MODULE.new" "$MODULE"
check_vermagic
echo "build-gpio-sim: built in $(($(date +%s) - started)) s from $(tr '\n' ' ' <"$work/versions"), vermagic $(modinfo -F vermagic "$MODULE")" >&2
echo "$MODULE"
