#!/bin/sh
# Runs INSIDE the image booted under qemu by tests/test_image.py (never on a real unit):
# the test copies it to the boot partition of its own copy of the image and boots with
#   systemd.run="/bin/sh /boot/firmware/smoke-check.sh" systemd.wants=multi-user.target
#   systemd.run_success_action=poweroff systemd.run_failure_action=poweroff
# It waits for first boot, both services and a sealed recording, and reports on the
# serial console one "SMOKE ..." line per check; the machine powers off when it ends.
# Times are seconds since the kernel started (systemd's monotonic clock).

LIMIT=${SMOKE_LIMIT_S:-600}
failures=0

say() { echo "SMOKE $*"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
entered_s() {  # when UNIT last became active, in seconds since boot (0: never)
    us=$(systemctl show -P ActiveEnterTimestampMonotonic "$1")
    echo "${us:-0}" | awk '{ printf "%.1f", $1 / 1e6 }'
}
reached_active() { [ "$(systemctl show -P ActiveEnterTimestampMonotonic "$1")" != 0 ]; }
finished_ok() {  # a oneshot with RemainAfterExit: active and Result=success
    [ "$(systemctl show -P ActiveState "$1")" = active ] \
        && [ "$(systemctl show -P Result "$1")" = success ]
}
sealed_manifest() { ls /var/lib/linetap/outbox/*/*/manifest.json 2>/dev/null | head -1; }
has_sealed() { [ -n "$(sealed_manifest)" ]; }

wait_for() {  # wait_for NAME COMMAND...: poll once a second until COMMAND succeeds
    name=$1
    shift
    waited=0
    until "$@"; do
        if [ "$(systemctl show -P ActiveState "${unit:-none}")" = failed ]; then
            say "FAIL $name: ${unit} failed"
            failures=$((failures + 1))
            return 1
        fi
        waited=$((waited + 1))
        if [ "$waited" -ge "$LIMIT" ]; then
            say "FAIL $name: not within ${LIMIT} s"
            failures=$((failures + 1))
            return 1
        fi
        sleep 1
    done
    return 0
}

say "START uptime=$(uptime_s)"
unit=linetap-grow-data.service
wait_for grow-data finished_ok "$unit" \
    && say "OK grow-data at=$(entered_s "$unit") $(df -k --output=size /var/lib/linetap | tail -1 | tr -d ' ')KiB"
unit=linetap-firstboot.service
wait_for firstboot finished_ok "$unit" \
    && say "OK firstboot at=$(entered_s "$unit")"
if [ -e /var/lib/linetap/provisioned.json ]; then
    say "OK provisioned.json"
else
    say "FAIL provisioned.json missing"
    failures=$((failures + 1))
fi
for unit in linetap-recorder.service linetap-uploader.service; do
    wait_for "$unit" reached_active "$unit" \
        && say "OK active $unit at=$(entered_s "$unit")"
done
unit=linetap-recorder.service
if wait_for sealed has_sealed; then
    say "OK sealed $(sealed_manifest) uptime=$(uptime_s)"
fi
# Installer access: the test put a key pair on the boot partition; log in as the
# installer over SSH (to this guest) and run the tools as the installer guide says.
if [ -e /boot/firmware/smoke-installer.key ]; then
    unit=ssh.service
    if wait_for ssh reached_active "$unit"; then
        ssh_as() {  # ssh_as USER COMMAND...: with the installer's key, to this guest
            user=$1
            shift
            ssh -i /boot/firmware/smoke-installer.key -o BatchMode=yes \
                -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/run/smoke-known-hosts \
                "$user@127.0.0.1" "$@"
        }
        # Exit 1 is an answer too: "not all well" (here: no broker in the guest).
        ssh_as installer sudo linetap status --json >/run/smoke-status.json 2>/run/smoke-status.err
        rc=$?
        if [ "$rc" -le 1 ] \
            && python3 -c 'import json, sys; json.load(open(sys.argv[1]))' /run/smoke-status.json; then
            say "OK installer status rc=$rc"
        else
            say "FAIL installer: sudo linetap status --json over SSH: rc=$rc $(head -c 300 /run/smoke-status.err)"
            failures=$((failures + 1))
        fi
        ssh_as installer sudo linetap check --json --skip broker >/run/smoke-check.json
        rc=$?
        worst=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(len(d["checks"]), d["status"])' /run/smoke-check.json 2>&1)
        if [ "$rc" -le 1 ] && [ -n "$worst" ] && ! echo "$worst" | grep -q Error; then
            say "OK installer check rc=$rc checks=$worst"
            # What a tech would be told to fix on this guest (no broker, clock, HAT...).
            python3 -c 'import json, sys
for c in json.load(open(sys.argv[1]))["checks"]:
    if c["status"] not in ("PASS", "INFO"):
        print("SMOKE CHECK", c["status"], c["id"], c["message"][:160])' /run/smoke-check.json
        else
            say "FAIL installer: sudo linetap check over SSH: rc=$rc $worst"
            failures=$((failures + 1))
        fi
        if ssh_as root true 2>/dev/null; then
            say "FAIL installer: root logged in over SSH"
            failures=$((failures + 1))
        else
            say "OK root refused"
        fi
    fi
fi
for unit in linetap-recorder.service linetap-uploader.service; do
    say "STATE $unit $(systemctl show -P ActiveState "$unit") $(systemctl show -P SubState "$unit") NRestarts=$(systemctl show -P NRestarts "$unit")"
done
say "ROOT $(findmnt -no OPTIONS /)"
say "FAILED-UNITS $(systemctl list-units --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')"
echo "----- journal of the linetap units -----"
journalctl --no-pager -o short-monotonic -u 'linetap-*' | tail -n 80
echo "----- end of journal -----"
sync
say "END failures=$failures uptime=$(uptime_s)"
[ "$failures" -eq 0 ]
