"""The sealed-recording format: what a device writes and the head office reads.

One package both ends import, and that imports nothing else of linetap (checked by the
import-linter contracts in pyproject.toml):

- :mod:`sealedrec.errors`: the root of every error linetap raises on purpose;
- :mod:`sealedrec.age`: age v1 files (X25519 recipients), reader and writer;
- :mod:`sealedrec.manifest`: canonical JSON, Ed25519 signatures, the per-device chain;
- :mod:`sealedrec.model`: the manifest as one typed, bounded model;
- :mod:`sealedrec.levels`: the manifest's level summary of the stored audio;
- :mod:`sealedrec.head`: the signed device head in telemetry, and its verification;
- :mod:`sealedrec.segments`: the segment container (a recovered call's journal);
- :mod:`sealedrec.keys`, :mod:`sealedrec.keyfiles`: device signing keys and key files;
- :mod:`sealedrec.verify`: the one verifier of a stored recording;
- :mod:`sealedrec.durable`: how every file reaches the disk (fsync, atomic rename).
"""
