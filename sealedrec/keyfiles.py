"""Private key files on the device: made once, owner-only, read back with the same checks.

The device signing key (``sealedrec.keys``) and the TLS client key (``sealedrec.tlskeys``)
are different kinds of key with the same rules on disk; the rules live here once.
"""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from sealedrec.durable import write_new_file
from sealedrec.errors import LinetapError


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    """Unencrypted PKCS#8 PEM: the file's mode protects it (and the daemons start unattended)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_private_key(path: Path, key: PrivateKeyTypes) -> None:
    """Write ``key`` to a new file at ``path``, mode 0600, durably (its directory 0700 if
    made). Raises :class:`FileExistsError` rather than replace a key."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_new_file(path, private_key_pem(key), 0o600)


def read_private_key(
    path: Path,
    *,
    setting: str,
    error: type[LinetapError],
    if_missing: str = "",
    remedy: str = "",
) -> PrivateKeyTypes:
    """The private key at ``path``, which must be readable by its owner only and an
    unencrypted PEM key. Failures raise ``error`` with a message that starts with the
    config ``setting`` and the path; ``if_missing`` is the fix shown when the file does not
    exist, ``remedy`` the one shown when it is not a usable key."""
    where = f"{setting} {path}"
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{where}: not found" + (f"; {if_missing}" if if_missing else "")) from None
    except OSError as exc:
        raise error(f"{where}: cannot read ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise error(
            f"{where}: readable by others (mode {stat.S_IMODE(mode):o}); run 'chmod 600 {path}'"
        )
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:  # TypeError: a passphrase-protected key
        raise error(
            f"{where}: not an unencrypted PEM private key ({exc})"
            + (f"; {remedy}" if remedy else "")
        ) from None
