"""The files ``upload.tls`` needs (CA, device certificate, device TLS key), checked before
anyone connects: the uploader refuses to start without them and ``linetap check`` skips
its broker probe. Each problem names the key and the fix."""

from __future__ import annotations

import os

from firmware.config import UploadConfig


def tls_file_problems(settings: UploadConfig) -> list[str]:
    """One line per missing TLS file when upload.tls is on (empty when all is well)."""
    if not settings.tls:
        return []
    problems: list[str] = []
    files = (
        (
            "ca_file",
            settings.ca_file,
            "a copy of the head office's CA certificate (ca.crt from 'linetap-office init')",
        ),
        (
            "cert_file",
            settings.cert_file,
            "this device's certificate from 'linetap-office enroll-device'",
        ),
        (
            "key_file",
            settings.key_file,
            "the TLS key 'linetap keys csr' made on this device",
        ),
    )
    for key, path, what in files:
        fix = f"set it to {what} (or upload.tls = false for a plain test broker)"
        if path is None:
            problems.append(f"upload.{key}: required when upload.tls = true; {fix}")
        elif not path.is_file():
            state = "is not a file" if path.exists() else "does not exist"
            problems.append(f"upload.{key}: {path} {state}; {fix}")
        elif not os.access(path, os.R_OK):
            problems.append(
                f"upload.{key}: {path} is not readable by this user; "
                "fix its owner/mode (the key 0600, owned by the linetap user)"
            )
    return problems
