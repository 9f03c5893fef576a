"""The auditors' standalone evidence-bundle checker, run as a subprocess on built bundles."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headoffice.ledger import verify_bundle
from headoffice.ledger.merkle import inclusion_proof, leaf_hash, root
from headoffice.ledger.note import checkpoint_text, sign_note, verifier_key
from sealedrec.manifest import canonical_json, sign_manifest

SCRIPT = Path(verify_bundle.__file__)
ORIGIN = "office.example/ledger"
INDEX, SIZE = 5, 11


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def build_bundle(path: Path, ledger_key: Ed25519PrivateKey | None = None) -> Path:
    ledger_key = ledger_key or Ed25519PrivateKey.generate()
    device = Ed25519PrivateKey.generate()
    blob = b"age-encryption.org/v1\n" + bytes(range(256)) * 4
    manifest = sign_manifest(
        {
            "v": 1,
            "recording_id": "rec-0001",
            "device_id": "dev-7",
            "seq": 3,
            "started_utc": "2026-11-25T10:00:00.000+00:00",
            "note": "Größe ✓",
            "blob_sha256": hashlib.sha256(blob).hexdigest(),
        },
        device,
    )
    leaf = canonical_json(
        {
            "kind": "ingest",
            "device_id": "dev-7",
            "seq": 3,
            "recording_id": "rec-0001",
            "manifest_sha256": hashlib.sha256(canonical_json(manifest)).hexdigest(),
            "blob_sha256": hashlib.sha256(blob).hexdigest(),
            "at": "2026-11-25T10:05:00+00:00",
        }
    )
    leaves = [leaf_hash(f"other leaf {i}".encode()) for i in range(SIZE)]
    leaves[INDEX] = leaf_hash(leaf)
    text = checkpoint_text(ORIGIN, SIZE, root(leaves))
    path.mkdir(exist_ok=True)
    (path / "checkpoint.note").write_text(sign_note(text, ORIGIN, ledger_key), encoding="utf-8")
    (path / "ledger.vkey").write_text(verifier_key(ORIGIN, _raw(ledger_key)) + "\n")
    (path / "leaf.json").write_bytes(leaf)
    proof = {
        "index": INDEX,
        "tree_size": SIZE,
        "hashes": [h.hex() for h in inclusion_proof(leaves, INDEX, SIZE)],
    }
    (path / "proof.json").write_text(json.dumps(proof))
    # Pretty-printed on purpose: the checker hashes the manifest's canonical form.
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    (path / "recording.age").write_bytes(blob)
    (path / "device.pub").write_text(base64.b64encode(_raw(device)).decode() + "\n")
    return path


def run(bundle: Path, script: Path = SCRIPT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(script), str(bundle)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=bundle.parent,
    )


def test_script_imports_only_the_standard_library_and_cryptography() -> None:
    tree = ast.parse(SCRIPT.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            names = [node.module or ""]
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top == "cryptography", name
    assert len(SCRIPT.read_text().splitlines()) < 250


def test_good_bundle_passes_from_a_copy_outside_the_repo(tmp_path: Path) -> None:
    bundle = build_bundle(tmp_path / "bundle")
    copy = shutil.copy(SCRIPT, tmp_path / "verify_bundle.py")
    result = run(bundle, Path(copy))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for check in [
        "checkpoint-signature",
        "leaf-inclusion",
        "manifest-hash",
        "blob-hash",
        "manifest-signature",
    ]:
        assert any(line.startswith(f"ok   {check}:") for line in lines), result.stdout
    assert f"origin {ORIGIN}, tree size {SIZE}" in result.stdout
    assert lines[-1] == "bundle verified"


def _edit_json(name: str, change: Callable[[dict[str, object]], None]) -> Callable[[Path], None]:
    def edit(bundle: Path) -> None:
        obj = json.loads((bundle / name).read_text())
        change(obj)
        (bundle / name).write_text(json.dumps(obj))

    return edit


def _replace(name: str, old: bytes, new: bytes) -> Callable[[Path], None]:
    def edit(bundle: Path) -> None:
        data = (bundle / name).read_bytes()
        assert old in data
        (bundle / name).write_bytes(data.replace(old, new, 1))

    return edit


def _flip_proof_hash(bundle: Path) -> None:
    proof = json.loads((bundle / "proof.json").read_text())
    h = proof["hashes"][1]
    proof["hashes"][1] = ("0" if h[0] != "0" else "1") + h[1:]
    (bundle / "proof.json").write_text(json.dumps(proof))


def _resign_with_other_key(bundle: Path) -> None:
    build_bundle(bundle / "other", Ed25519PrivateKey.generate())
    shutil.copy(bundle / "other" / "checkpoint.note", bundle / "checkpoint.note")


def _flip_blob_byte(bundle: Path) -> None:
    data = bytearray((bundle / "recording.age").read_bytes())
    data[100] ^= 0x01
    (bundle / "recording.age").write_bytes(bytes(data))


TAMPERINGS: dict[str, tuple[Callable[[Path], object], list[str]]] = {
    "leaf": (_replace("leaf.json", b'"seq":3', b'"seq":4'), ["leaf-inclusion"]),
    "leaf-index": (_edit_json("proof.json", lambda p: p.update(index=4)), ["leaf-inclusion"]),
    "proof-hash": (_flip_proof_hash, ["leaf-inclusion"]),
    "proof-size": (_edit_json("proof.json", lambda p: p.update(tree_size=12)), ["leaf-inclusion"]),
    "checkpoint-text": (
        _replace("checkpoint.note", f"\n{SIZE}\n".encode(), f"\n{SIZE + 1}\n".encode()),
        ["checkpoint-signature", "leaf-inclusion"],
    ),
    "checkpoint-other-key": (_resign_with_other_key, ["checkpoint-signature", "leaf-inclusion"]),
    "manifest": (
        _edit_json("manifest.json", lambda m: m.update(seq=4)),
        ["manifest-hash", "manifest-signature"],
    ),
    "manifest-signature-value": (
        _edit_json(
            "manifest.json",
            lambda m: m.update(
                signature={**m["signature"], "value": base64.b64encode(b"\0" * 64).decode()}  # type: ignore[dict-item]
            ),
        ),
        ["manifest-hash", "manifest-signature"],
    ),
    "blob": (_flip_blob_byte, ["blob-hash"]),
    "device-key": (
        lambda b: (b / "device.pub").write_text(base64.b64encode(b"\1" * 32).decode()),
        ["manifest-signature"],
    ),
    "missing-proof": (lambda b: (b / "proof.json").unlink(), ["leaf-inclusion"]),
    "garbage-proof": (lambda b: (b / "proof.json").write_text("[1, 2]"), ["leaf-inclusion"]),
}


@pytest.mark.parametrize("case", sorted(TAMPERINGS))
def test_each_tampering_fails_the_right_check(tmp_path: Path, case: str) -> None:
    bundle = build_bundle(tmp_path / "bundle")
    tamper, failing = TAMPERINGS[case]
    tamper(bundle)
    result = run(bundle)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr == ""
    failed = [
        line.split(":")[0][5:] for line in result.stdout.splitlines() if line.startswith("FAIL")
    ]
    assert failed == failing, result.stdout
    assert result.stdout.splitlines()[-1] == "bundle NOT verified"


def test_usage_error(tmp_path: Path) -> None:
    result = run(tmp_path / "nowhere")
    assert result.returncode == 1
    assert "usage:" in result.stderr
