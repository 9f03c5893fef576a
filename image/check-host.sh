#!/bin/bash
# Preconditions of `make image` / `make image-test`: root, the build tools, and qemu-user
# binfmt for arm64 (the image's maintainer scripts run as arm64 binaries in the chroot).
# One line per missing thing, with the command that fixes it; exit 1 if anything is missing.
#
#   image/check-host.sh          # what `make image` needs
#   image/check-host.sh --test   # plus what the qemu smoke test needs
#   image/check-host.sh --deb    # only what `make deb-test` needs (tests/test_deb.py)
set -u

want_test=false
want_deb=false
[ "${1:-}" = "--test" ] && want_test=true
[ "${1:-}" = "--deb" ] && want_deb=true
# The .deb's chroot test: an arm64 root by mmdebstrap and qemu-user, age to decrypt the
# recording made there, lintian; none of the image's partition and firmware tools.
deb_test_tools=" mmdebstrap qemu-aarch64-static update-binfmts arch-test age age-keygen lintian dpkg-deb "
problems=0
missing_debs=""

problem() {
    echo "image: $*" >&2
    problems=$((problems + 1))
}

need_tool() {  # need_tool COMMAND DEBIAN-PACKAGE
    if $want_deb && [[ $deb_test_tools != *" $1 "* ]]; then
        return 0
    fi
    if ! command -v "$1" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$1" ] && ! [ -x "/sbin/$1" ]; then
        problem "missing '$1' (Debian package $2)"
        case " $missing_debs " in *" $2 "*) ;; *) missing_debs="$missing_debs $2" ;; esac
    fi
}

if [ "$(id -u)" != 0 ]; then
    problem "must run as root (mmdebstrap chroots into the arm64 root filesystem; genimage keeps file owners): sudo make image"
fi

need_tool mmdebstrap mmdebstrap
need_tool genimage genimage
need_tool mcopy mtools
need_tool mkdosfs dosfstools
need_tool mke2fs e2fsprogs
need_tool debugfs e2fsprogs
need_tool qemu-aarch64-static qemu-user-static
need_tool update-binfmts binfmt-support
need_tool xz xz-utils
need_tool arch-test arch-test
# check-hardware.py: the HAT overlays compiled and applied, the kernel's modules looked up
need_tool python3 python3
need_tool dtc device-tree-compiler
need_tool fdtoverlay device-tree-compiler
need_tool modinfo kmod
if $want_test; then
    need_tool qemu-system-aarch64 qemu-system-arm
    need_tool age age
    need_tool age-keygen age
    # tests/test_powercut.py: the card's write log (qemu-img, qemu-io), the office's
    # broker reached from the guest (mosquitto, socat), e2fsck on the data read back
    need_tool qemu-img qemu-utils
    need_tool qemu-io qemu-utils
    need_tool socat socat
    need_tool mosquitto mosquitto
    need_tool e2fsck e2fsprogs
fi
if $want_deb; then
    need_tool age age
    need_tool age-keygen age
    need_tool lintian lintian
    need_tool dpkg-deb dpkg
fi

# qemu-user binfmt: the kernel must hand arm64 ELF files to qemu-aarch64.
binfmt=/proc/sys/fs/binfmt_misc
if ! [ -e "$binfmt/status" ]; then
    problem "binfmt_misc is not mounted at $binfmt: mount -t binfmt_misc binfmt_misc $binfmt (in a container: run it on the host, or start the container with --privileged)"
elif [ "$(cat "$binfmt/status")" != enabled ]; then
    problem "binfmt_misc is disabled: echo 1 > $binfmt/status"
elif ! [ -e "$binfmt/qemu-aarch64" ]; then
    problem "no qemu-aarch64 binfmt handler: apt-get install qemu-user-static binfmt-support && update-binfmts --enable qemu-aarch64"
elif ! grep -q '^enabled' "$binfmt/qemu-aarch64"; then
    problem "the qemu-aarch64 binfmt handler is disabled: update-binfmts --enable qemu-aarch64"
elif ! grep -q '^flags:.*F' "$binfmt/qemu-aarch64"; then
    problem "the qemu-aarch64 binfmt handler lacks the F (fix binary) flag, so it cannot work inside a chroot: use Debian's qemu-user-static (its handler has flags PF)"
elif command -v arch-test >/dev/null 2>&1 && ! arch-test arm64 >/dev/null 2>&1; then
    problem "arch-test arm64 fails: this machine cannot run arm64 binaries through qemu-user (see 'arch-test -n arm64')"
fi

if [ -n "$missing_debs" ]; then
    echo "image: install the missing tools with: apt-get install$missing_debs" >&2
fi
if [ "$problems" -gt 0 ]; then
    echo "image: $problems precondition(s) missing; see image/README.md, 'Building the image'" >&2
    exit 1
fi
exit 0
