#!/bin/bash
# Runs INSIDE a test copy of the image booted by tests/test_powercut.py (never on a real
# unit): systemd.run= starts it from the test's own disk, which systemd.mount-extra=
# mounts read-only at /run/powercut. It only reports, on the serial console, one line
# each, and the test cuts the power (SIGKILLs qemu) when its plan says so:
#
#   PC START g=<s>                    the script runs (g: guest wall clock, $EPOCHREALTIME)
#   PC HB g=<s> f=<frames> p=<pid>    the recorder's status file changed: it had captured
#                                     <frames> when it was written (read every 50 ms)
#   PC J <journal line>               the linetap units' journal, as it happens
#
# With /run/powercut/final (the last boot, no cut) it waits for the recorder to have
# played the line's file once, stops it, waits until every recording is sealed and
# acknowledged by the office, and exits: the machine powers off.
# No `sleep` in the status loop: under TCG every fork costs the recorder CPU time.

STATUS=/run/linetap/recorder.json
LIMIT_S=${PC_LIMIT_S:-900}
# Straight to the serial console: through the journal, lines reach it ~0.5 s late.
exec >/dev/console 2>&1

echo "PC START g=$EPOCHREALTIME"
# A planted bug (LINETAP_POWERCUT_MUTANT): its module must be the one the venv imports.
if [ -e /run/powercut/mutant.list ]; then
    while read -r source target; do
        if cmp -s "$source" "$target"; then
            echo "PC MUTANT active $target"
        else
            echo "PC MUTANT missing $target"
        fi
    done </run/powercut/mutant.list
fi

journalctl --follow --lines=all --output=short-monotonic --no-hostname \
    --unit=linetap-grow-data.service --unit=linetap-firstboot.service \
    --unit=linetap-recorder.service --unit=linetap-uploader.service |
    while IFS= read -r line; do echo "PC J $line"; done &

heartbeat() {
    mkfifo /run/pc-tick
    exec 3<>/run/pc-tick # never written: a `read -t` on it is a sleep without a fork
    local last="" line="" frames pid
    while :; do
        line=""
        if { IFS= read -r line <"$STATUS" || [ -n "$line" ]; } 2>/dev/null \
            && [[ $line =~ \"frames\":\ ([0-9]+) ]]; then
            frames=${BASH_REMATCH[1]}
            [[ $line =~ \"pid\":\ ([0-9]+) ]] && pid=${BASH_REMATCH[1]}
            if [ "$pid:$frames" != "$last" ]; then
                echo "PC HB g=$EPOCHREALTIME f=$frames p=$pid"
                last="$pid:$frames"
            fi
        fi
        read -r -t 0.05 -u 3 _
    done
}
heartbeat &

if ! [ -e /run/powercut/final ]; then
    wait # until the power is cut
    exit 0
fi

waited=0
tick() {
    sleep 1
    waited=$((waited + 1))
    if [ "$waited" -ge "$LIMIT_S" ]; then
        echo "PC FAIL $1 not within ${LIMIT_S} s"
        exit 1
    fi
}
# The recorder logs "recorder stopped" when the file has played to its end; systemd
# would start it again 5 s later (Restart=always) and replay the calls.
until journalctl --unit=linetap-recorder.service --output=cat | grep -q "recorder stopped"; do
    tick "the recorder playing the line's file to its end"
done
systemctl stop linetap-recorder.service
echo "PC PLAYED g=$EPOCHREALTIME"
data=/var/lib/linetap
pending() { # journal dirs and outbox entries not yet acknowledged by the office
    find "$data/journal" "$data/outbox/tmp" "$data/outbox/sealed" "$data/outbox/uploading" \
        -mindepth 1 -maxdepth 1 2>/dev/null | grep -q .
}
while pending; do
    tick "every recording sealed and acknowledged"
done
systemctl stop linetap-uploader.service
sync
echo "PC END g=$EPOCHREALTIME"
