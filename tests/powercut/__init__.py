"""The power-cut test's guest side (guest.sh, line.events) and its host-side helpers:
boots.py runs one boot of the VM and cuts its power by plan, verdict.py reads the card
back and judges what survived (tests/test_powercut.py)."""
