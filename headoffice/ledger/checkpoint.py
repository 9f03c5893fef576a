"""Signed checkpoints of the audit ledger, its keys, and evidence bundles.

- The **ledger key** (Ed25519, C2SP signed-note format) signs checkpoints. Its private
  half belongs to the user that runs ``linetap-office audit checkpoint`` (a timer unit
  of its own), never to the receiver or the web; its public half (``ledger.vkey``, in
  the store root's ``keys/``) is what ``audit verify`` and third parties check against.
- A **checkpoint** is the C2SP tlog-checkpoint of the whole ledger (origin, size, root),
  signed, kept in the ``checkpoints`` table (and, as the office chooses, elsewhere).
- An **evidence bundle** (``audit proof REC``) lets someone who trusts only the ledger
  key and a device key check one recording without us: the blob, its signed manifest,
  the device's key and certificate, the recording's ingest leaf, its inclusion proof and
  the checkpoint it is proved against, and the standalone ``verify_bundle.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from headoffice.blobstore import BlobStore
from headoffice.index import Index
from headoffice.ledger import verify_bundle
from headoffice.ledger.merkle import RootAccumulator, inclusion_proof, leaf_hash
from headoffice.ledger.note import (
    Verifier,
    checkpoint_text,
    generate_signer_key,
    parse_checkpoint,
    parse_signer_key,
    parse_verifier_key,
    sign_note,
    verify_note,
)
from headoffice.ledger.store import CheckpointRow, Ledger, LedgerError
from headoffice.officeroot import CaLayout, read_device_record
from sealedrec.durable import write_new_file
from sealedrec.errors import LinetapError

VKEY_FILE = "ledger.vkey"
BUNDLE_README = """Evidence for recording {rec}: its ingest leaf {idx} in a signed checkpoint of
{size} leaves of the office's audit ledger.

Check it with Python 3 and the 'cryptography' package only (nothing of ours):

    python3 verify_bundle.py .

It checks: checkpoint.note is signed by the key in ledger.vkey (compare that key with the
one the office gave you, and the checkpoint with a copy kept outside the office); leaf.json
is included at its index in that tree (proof.json: RFC 6962 inclusion proof); the leaf
names the SHA-256 of manifest.json (canonical JSON) and of recording.age; the manifest is
signed by device.pub (the device's Ed25519 key; device.crt is its TLS certificate from the
office CA). recording.age is the recording as the device sealed it (age, to the office's
keys): this bundle proves what was stored, it does not decrypt it.
"""


class AuditError(LinetapError, ValueError):
    """An audit command cannot do what was asked; the message says what to do."""


@dataclass(frozen=True, slots=True)
class LedgerKeys:
    signer: Path  # private: the checkpoint user's, mode 0600
    verifier: Path  # public: keys/ledger.vkey in the store root


def keygen(name: str, signer: Path, root: Path) -> LedgerKeys:
    """Make the ledger key once: the private key at ``signer`` (0600, never replaced)
    and its verifier key at ``root/keys/ledger.vkey``."""
    if signer.exists():
        raise AuditError(f"{signer} exists: the ledger key is made once (keep it safe)")
    skey, vkey = generate_signer_key(name)
    signer.parent.mkdir(parents=True, exist_ok=True)
    write_new_file(signer, (skey + "\n").encode(), 0o600)
    verifier = CaLayout(root).root / "keys" / VKEY_FILE
    verifier.parent.mkdir(parents=True, exist_ok=True)
    if verifier.exists():
        verifier.unlink()
    write_new_file(verifier, (vkey + "\n").encode(), 0o644)
    return LedgerKeys(signer, verifier)


def load_verifier(root: Path) -> Verifier:
    path = CaLayout(root).root / "keys" / VKEY_FILE
    try:
        return parse_verifier_key(path.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        raise AuditError(
            f"{path}: no ledger verifier key; make the key with 'linetap-office audit keygen'"
        ) from None


def ledger_root(ledger: Ledger, size: int | None = None) -> tuple[int, bytes]:
    """(size, root) of the ledger's first ``size`` leaves (all when None); refuses a
    ledger with a gap or an edited leaf: nothing wrong is ever signed."""
    acc = RootAccumulator()
    for row in ledger.rows(0, size):
        if row.idx != acc.size:
            raise AuditError(f"leaf {acc.size} is missing: run 'linetap-office audit verify'")
        digest = leaf_hash(row.body)
        if digest.hex() != row.leaf_sha256:
            raise AuditError(f"leaf {row.idx} was edited: run 'linetap-office audit verify'")
        acc.append(digest)
    if size is not None and acc.size != size:
        raise AuditError(f"the ledger has {acc.size} leaves, not {size}")
    return acc.size, acc.root()


def make_checkpoint(ledger: Ledger, origin: str, signer_text: str) -> CheckpointRow:
    """Sign and keep a checkpoint of the whole ledger as it is now."""
    name, key = parse_signer_key(signer_text.strip())
    size, root = ledger_root(ledger)
    note = sign_note(checkpoint_text(origin, size, root), name, key)
    return ledger.add_checkpoint(size, root.hex(), note)


def proof_bundle(
    index: Index, store: BlobStore, root: Path, rec: str, out: Path, *, origin: str
) -> Path:
    """Write the evidence bundle of recording ``rec`` to the new directory ``out``."""
    ledger = Ledger(index)
    record = index.get(rec)
    if record is None:
        raise AuditError(f"recording {rec} is not in the index")
    leaf_row = next(iter(ledger.rows_about(rec, kind="ingest")), None)
    if leaf_row is None:
        raise AuditError(f"recording {rec} has no ingest leaf: run 'linetap-office audit verify'")
    verifier = load_verifier(root)
    checkpoint = _covering_checkpoint(ledger, leaf_row.idx, verifier, origin)
    size = parse_checkpoint(verify_note(checkpoint.note, verifier)).size
    hashes = [leaf_hash(r.body) for r in ledger.rows(0, size)]
    proof = inclusion_proof(hashes, leaf_row.idx, size)
    device = read_device_record(CaLayout(root).devices / f"{record.device_id}.json")
    out.mkdir(parents=True)
    files = {
        "checkpoint.note": checkpoint.note.encode(),
        "ledger.vkey": (verifier.vkey + "\n").encode(),
        "leaf.json": leaf_row.body,
        "proof.json": json.dumps(
            {"index": leaf_row.idx, "tree_size": size, "hashes": [h.hex() for h in proof]},
            indent=2,
        ).encode(),
        "manifest.json": json.dumps(record.manifest, indent=2, sort_keys=True).encode(),
        "device.pub": (device.signing_key + "\n").encode(),
    }
    for name, data in files.items():
        (out / name).write_bytes(data)
    cert = CaLayout(root).devices / f"{record.device_id}.crt"
    if cert.exists():
        shutil.copyfile(cert, out / "device.crt")
    if record.blob_sha256 is not None:
        with store.local_blob(record.path) as blob:
            shutil.copyfile(blob, out / "recording.age")
    shutil.copyfile(verify_bundle.__file__, out / "verify_bundle.py")
    (out / "README.txt").write_text(BUNDLE_README.format(rec=rec, idx=leaf_row.idx, size=size))
    os.chmod(out / "verify_bundle.py", 0o755)
    return out


def _covering_checkpoint(
    ledger: Ledger, idx: int, verifier: Verifier, origin: str
) -> CheckpointRow:
    for row in reversed(ledger.checkpoints()):
        if row.tree_size > idx:
            text = verify_note(row.note, verifier)
            if parse_checkpoint(text).origin == origin:
                return row
    raise AuditError(
        f"no signed checkpoint covers leaf {idx} yet: wait for the checkpoint timer, or run "
        "'linetap-office audit checkpoint'"
    )


__all__ = [
    "AuditError",
    "LedgerError",
    "LedgerKeys",
    "keygen",
    "ledger_root",
    "load_verifier",
    "make_checkpoint",
    "proof_bundle",
]
