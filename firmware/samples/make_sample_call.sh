#!/bin/sh
# Regenerates sample_call.flac: a one-line, 8 kHz call made with espeak-ng and sox.
# 0-2 s line noise, 2.0 s "Hello?" (before the off-hook at 2.5 s: pre-roll keeps it),
# then a short conversation, hang-up at 12.5 s, 15 s in all.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say() { espeak-ng -v "$2" -s 150 --stdout "$1" | sox -t wav - -r 8000 -c 1 -b 16 "$tmp/$3.wav"; }
say "Hello?" en-us a
say "Good morning, this is linetap support. How can I help you today?" en-gb b
say "Hi. The recorder in our branch shows a slow blinking light." en-us c
say "That means the caller opted out. Nothing is wrong. Thank you for calling." en-gb d
sox -n -r 8000 -c 1 -b 16 "$tmp/noise.wav" synth 15 whitenoise vol 0.003
# Place each phrase at its time by padding, then mix over the noise floor.
sox "$tmp/a.wav" "$tmp/a2.wav" pad 2.0
sox "$tmp/b.wav" "$tmp/b2.wav" pad 3.0
sox "$tmp/c.wav" "$tmp/c2.wav" pad 7.0
sox "$tmp/d.wav" "$tmp/d2.wav" pad 9.6
# -v 1 on each input: sox -m would otherwise scale every input by 1/n.
sox -m -v 1 "$tmp/noise.wav" -v 1 "$tmp/a2.wav" -v 1 "$tmp/b2.wav" -v 1 "$tmp/c2.wav" -v 1 "$tmp/d2.wav" \
    -b 16 sample_call.flac trim 0 15
soxi sample_call.flac
