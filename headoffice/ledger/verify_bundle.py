#!/usr/bin/env python3
"""Check a linetap evidence bundle: python3 verify_bundle.py BUNDLE_DIR (exit 0 = all good).

Standalone, for auditors: it needs Python 3.11+ and ``cryptography``, nothing of linetap.
It repeats the RFC 6962 inclusion check and the C2SP signed-note verification on purpose,
so that an auditor can read all of it here and needs none of our code.

The bundle directory holds:

- ``checkpoint.note``: a C2SP tlog-checkpoint (origin, tree size, base64 root hash) in a
  C2SP signed note (https://c2sp.org/signed-note) signed with Ed25519;
- ``ledger.vkey``: the ledger's verifier key, ``name+hex8(key id)+base64(0x01 || key)``;
- ``leaf.json``: the ledger leaf's exact bytes (the ingest record of one recording);
- ``proof.json``: ``{"index": i, "tree_size": n, "hashes": [hex, ...]}``, the RFC 6962
  audit path of that leaf in the checkpoint's tree;
- ``manifest.json``, ``recording.age``: the device-signed manifest, the encrypted audio;
- ``device.pub``: the device's raw 32-byte Ed25519 public key, base64.

Checks, one output line each (``ok`` or ``FAIL`` with the reason):

1. checkpoint-signature: ``checkpoint.note`` has a valid signature by ``ledger.vkey``;
2. leaf-inclusion: SHA-256(0x00 || leaf) is at ``index`` in the checkpoint's tree;
3. manifest-hash: ``leaf.json``'s ``manifest_sha256`` is the SHA-256 of the manifest's
   canonical JSON (sorted keys, no spaces, UTF-8);
4. blob-hash: ``leaf.json``'s ``blob_sha256`` is the SHA-256 of ``recording.age``;
5. manifest-signature: the manifest's ``signature`` (``{"alg": "ed25519", "key_id",
   "value"}``) verifies with ``device.pub`` over the canonical JSON of the manifest
   without ``signature``, and ``key_id`` is that key's (SHA-256 of it, 16 hex digits).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class Failed(Exception):
    """A check failed; the message says what is wrong."""


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise Failed(f"{what} is not base64") from None


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise Failed(f"cannot read {path.name} as JSON: {e}") from None


def read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise Failed(f"cannot read {path.name}: {e.strerror}") from None


def open_signed_note(note: str, vkey: str) -> str:
    """The signed note's text if a signature by ``vkey`` verifies (C2SP signed-note)."""
    name, _, rest = vkey.strip().partition("+")
    hex_id, _, key_b64 = rest.partition("+")
    key = b64(key_b64, "ledger.vkey key")
    if not re.fullmatch(r"[0-9a-f]{8}", hex_id) or len(key) != 33 or key[0] != 0x01:
        raise Failed("ledger.vkey is not name+hex8+base64(0x01 || Ed25519 key)")
    key_id = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
    if key_id.hex() != hex_id:
        raise Failed(f"ledger.vkey's key id {hex_id} does not match its key ({key_id.hex()})")
    if any(ord(c) < 0x20 and c != "\n" for c in note) or not note.endswith("\n"):
        raise Failed("checkpoint.note has control characters or no final newline")
    cut = note.rfind("\n\n")
    if cut < 0:
        raise Failed("checkpoint.note has no blank line before its signatures")
    text, lines = note[: cut + 1], note[cut + 2 : -1].split("\n")
    mine = []
    for line in lines:
        if not line.startswith("\u2014 ") or line.count(" ") != 2:
            raise Failed(f"checkpoint.note: malformed signature line {line[:60]!r}")
        _, signer, sig_b64 = line.split(" ")
        sig = b64(sig_b64, "a checkpoint signature")
        if signer == name and sig[:4] == key_id:
            mine.append(sig[4:])
    if not mine:
        raise Failed(f"checkpoint.note has no signature by {name}+{hex_id}")
    public = Ed25519PublicKey.from_public_bytes(key[1:])
    for sig in mine:
        try:
            public.verify(sig, text.encode())
        except InvalidSignature:
            raise Failed(f"the signature by {name}+{hex_id} does not verify") from None
    return text


def parse_checkpoint(text: str) -> tuple[str, int, bytes]:
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not re.fullmatch(r"0|[1-9][0-9]*", lines[1]):
        raise Failed("the checkpoint text is not origin, decimal size, root hash")
    root = b64(lines[2], "the checkpoint's root hash")
    if len(root) != 32:
        raise Failed("the checkpoint's root hash is not 32 bytes")
    return lines[0], int(lines[1]), root


def rfc6962_inclusion(leaf: bytes, index: int, size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: recompute the root from the leaf hash and its audit path."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and hmac.compare_digest(r, root)


Checkpoint = tuple[str, int, bytes]


def check_checkpoint(bundle: Path, found: dict[str, Checkpoint]) -> str:
    note = read(bundle / "checkpoint.note").decode("utf-8", "replace")
    text = open_signed_note(note, read(bundle / "ledger.vkey").decode("utf-8", "replace"))
    origin, size, root = found["checkpoint"] = parse_checkpoint(text)
    return f"origin {origin}, tree size {size}, root {root.hex()}"


def check_inclusion(bundle: Path, found: dict[str, Checkpoint]) -> str:
    if "checkpoint" not in found:
        raise Failed("no verified checkpoint to check against")
    origin, size, root = found["checkpoint"]
    proof = load_json(bundle / "proof.json")
    if not isinstance(proof, dict):
        raise Failed("proof.json is not a JSON object")
    index, tree_size = proof.get("index"), proof.get("tree_size")
    if type(index) is not int:
        raise Failed(f"proof.json's index {index!r} is not an integer")
    if tree_size != size:
        raise Failed(f"proof.json is for tree size {tree_size!r}, the checkpoint's is {size}")
    try:
        path = [bytes.fromhex(h) for h in proof["hashes"]]
    except (KeyError, TypeError, ValueError):
        raise Failed("proof.json's hashes are not a list of hex strings") from None
    if any(len(p) != 32 for p in path):
        raise Failed("proof.json has a hash that is not 32 bytes")
    leaf = hashlib.sha256(b"\x00" + read(bundle / "leaf.json")).digest()
    if not rfc6962_inclusion(leaf, index, size, path, root):
        raise Failed(f"leaf.json is not at index {index} of the tree with the checkpoint's root")
    return f"leaf {index} of {size} in {origin}"


def check_named_hash(bundle: Path, field: str, data: bytes, what: str) -> str:
    leaf = load_json(bundle / "leaf.json")
    named = leaf.get(field) if isinstance(leaf, dict) else None
    actual = hashlib.sha256(data).hexdigest()
    if named != actual:
        raise Failed(f"leaf.json's {field} is {named!r}, the {what} hashes to {actual}")
    return actual


def check_manifest_signature(bundle: Path) -> str:
    manifest = load_json(bundle / "manifest.json")
    sig = manifest.get("signature") if isinstance(manifest, dict) else None
    if not isinstance(sig, dict) or sig.get("alg") != "ed25519":
        raise Failed("manifest.json has no ed25519 signature block")
    raw = b64(read(bundle / "device.pub").decode("ascii", "replace"), "device.pub")
    if len(raw) != 32:
        raise Failed("device.pub is not a raw 32-byte Ed25519 key")
    kid = hashlib.sha256(raw).hexdigest()[:16]
    if sig.get("key_id") != kid:
        raise Failed(f"manifest is signed by key {sig.get('key_id')!r}, device.pub is {kid}")
    body = {k: v for k, v in manifest.items() if k != "signature"}
    try:
        value = b64(str(sig.get("value", "")), "the manifest signature")
        Ed25519PublicKey.from_public_bytes(raw).verify(value, canonical(body))
    except InvalidSignature:
        raise Failed("the manifest signature does not verify with device.pub") from None
    return f"signed by device key {kid}"


def check_bundle(bundle: Path) -> list[tuple[str, bool, str]]:
    """Run every check; each result is ``(check name, passed, what was found or wrong)``."""
    found: dict[str, Checkpoint] = {}
    checks: list[tuple[str, Callable[[], str]]] = [
        ("checkpoint-signature", lambda: check_checkpoint(bundle, found)),
        ("leaf-inclusion", lambda: check_inclusion(bundle, found)),
        (
            "manifest-hash",
            lambda: check_named_hash(
                bundle,
                "manifest_sha256",
                canonical(load_json(bundle / "manifest.json")),
                "manifest",
            ),
        ),
        (
            "blob-hash",
            lambda: check_named_hash(bundle, "blob_sha256", read(bundle / "recording.age"), "blob"),
        ),
        ("manifest-signature", lambda: check_manifest_signature(bundle)),
    ]
    results: list[tuple[str, bool, str]] = []
    for name, check in checks:
        try:
            results.append((name, True, check()))
        except Failed as e:
            results.append((name, False, str(e)))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            results.append((name, False, f"malformed input: {type(e).__name__}: {e}"))
    return results


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not Path(argv[1]).is_dir():
        print(f"usage: {argv[0]} BUNDLE_DIR", file=sys.stderr)
        return 1
    results = check_bundle(Path(argv[1]))
    for name, passed, detail in results:
        print(f"{'ok  ' if passed else 'FAIL'} {name}: {detail}")
    ok = all(passed for _, passed, _ in results)
    print("bundle verified" if ok else "bundle NOT verified")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
