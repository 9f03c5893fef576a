"""Telephone DSP that runs on every line's audio stream (8 or 16 kHz int16 mono)."""
