#!/bin/sh
# Runs INSIDE the test VM of tests/test_vm_kernel.py (never on a real unit): the test puts
# it on the boot partition of its copy of the image and boots with systemd.run= naming it.
# The test disk (ext4, label linetap-tests, made on the host) holds gpio-sim.ko, the device
# packages and tests to run (src/), pytest and its dependencies (site/) and the pytest
# arguments (pytest-args, one a line). This loads configfs, gpio-sim and snd-aloop, runs
# pytest with the image's Python, writes results/ on the disk and reports on the serial
# console one "VMTEST ..." line per step; the machine powers off when it ends.

LABEL=linetap-tests
MNT=/run/linetap-tests
LIMIT_S=${VMTEST_LIMIT_S:-600}

say() { echo "VMTEST $*"; }
fail() { say "FAIL $*"; exit 1; }

say "START kernel=$(uname -r) python=$(/opt/linetap/venv/bin/python -c 'import sys; print(sys.version.split()[0])')"
waited=0
until [ -b "/dev/disk/by-label/$LABEL" ]; do
    waited=$((waited + 1))
    [ "$waited" -lt 120 ] || fail "no test disk /dev/disk/by-label/$LABEL"
    sleep 1
done
mkdir -p "$MNT"
mount "/dev/disk/by-label/$LABEL" "$MNT" || fail "cannot mount the test disk"
mkdir -p "$MNT/results"

# gpio-sim is made through configfs (a module in Debian's kernel); systemd mounts it when
# the module is there at boot, not when it comes later.
modprobe configfs || fail "modprobe configfs"
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config \
    || fail "cannot mount configfs"
insmod "$MNT/gpio-sim.ko" || fail "insmod gpio-sim.ko ($(dmesg | grep -i gpio.sim | tail -1))"
[ -d /sys/kernel/config/gpio-sim ] || fail "gpio-sim loaded but /sys/kernel/config/gpio-sim missing"
say "OK gpio-sim $(dmesg | grep -c 'gpio_sim: loading out-of-tree module') taint=$(cat /proc/sys/kernel/tainted)"
modprobe snd-aloop || fail "modprobe snd-aloop"
waited=0
until [ -e /proc/asound/Loopback ]; do
    waited=$((waited + 1))
    [ "$waited" -lt 30 ] || fail "snd-aloop loaded but no Loopback card"
    sleep 1
done
say "OK snd-aloop $(head -1 /proc/asound/cards)"

# One argument a line: the host wrote them, nothing here splits on spaces.
set --
while IFS= read -r arg; do
    [ -n "$arg" ] && set -- "$@" "$arg"
done <"$MNT/pytest-args"
cd "$MNT/src" || fail "no src/ on the test disk"
started=$(cut -d' ' -f1 /proc/uptime)
say "PYTEST $*"
PYTHONPATH="$MNT/src:$MNT/site" PYTHONDONTWRITEBYTECODE=1 \
    timeout -k 10 "$LIMIT_S" /opt/linetap/venv/bin/python -m pytest -p no:cacheprovider -v -ra \
    --junitxml="$MNT/results/junit.xml" "$@" >"$MNT/results/pytest.log" 2>&1
rc=$?
ended=$(cut -d' ' -f1 /proc/uptime)
# The summary on the console too, in case the disk cannot be read back.
tail -n 30 "$MNT/results/pytest.log" | sed 's/^/VMTEST | /'
dmesg >"$MNT/results/dmesg.log"
say "END pytest rc=$rc seconds=$(echo "$started $ended" | awk '{ printf "%.1f", $2 - $1 }')"
cd /
sync
umount "$MNT" || say "FAIL cannot unmount the test disk"
exit 0
