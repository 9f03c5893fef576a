"""C2SP signed notes (Ed25519) and tlog-checkpoint texts."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from headoffice.ledger.merkle import EMPTY_ROOT, leaf_hash, root
from headoffice.ledger.note import (
    BadSignatureError,
    Checkpoint,
    CheckpointError,
    MalformedNoteError,
    NoSignatureError,
    NoteKeyError,
    Verifier,
    check_key_name,
    checkpoint_text,
    generate_signer_key,
    key_id,
    parse_checkpoint,
    parse_signer_key,
    parse_verifier_key,
    sign_note,
    signer_key,
    verifier_key,
    verify_note,
)

# Test vectors from golang.org/x/mod sumdb/note/note_test.go (TestNewVerifier, TestNewSigner,
# TestSign, TestOpen): the same keys and note must come out byte for byte.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"

ORIGIN = "office.example/ledger"


def _verifier(key: Ed25519PrivateKey, name: str = ORIGIN) -> Verifier:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return parse_verifier_key(verifier_key(name, raw))


def test_sumdb_vectors_key_id_and_signature() -> None:
    name, key = parse_signer_key(PETER_SKEY)
    verifier = parse_verifier_key(PETER_VKEY)
    assert (name, verifier.name, verifier.key_id) == ("PeterNeumann", "PeterNeumann", 0xC74F20A3)
    # key id = SHA-256(name || 0x0A || 0x01 || public key)[:4], computed by hand here.
    by_hand = hashlib.sha256(b"PeterNeumann\n\x01" + verifier.public_key).digest()[:4]
    assert by_hand.hex() == "c74f20a3" == f"{key_id('PeterNeumann', verifier.public_key):08x}"
    assert signer_key(name, key) == PETER_SKEY
    assert verifier.vkey == PETER_VKEY
    note = sign_note(TEXT, name, key)
    assert note == TEXT + "\n" + PETER_SIG
    assert verify_note(note, verifier) == TEXT
    enoch = parse_verifier_key(ENOCH_VKEY)
    both = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert verify_note(both, verifier) == TEXT == verify_note(both, enoch)
    assert verify_note(both.encode(), enoch) == TEXT


def test_round_trip_with_generated_key() -> None:
    skey, vkey = generate_signer_key(ORIGIN)
    name, key = parse_signer_key(skey)
    text = checkpoint_text(ORIGIN, 3, root([leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]))
    note = sign_note(text, name, key)
    assert verify_note(note, parse_verifier_key(vkey + "\n")) == text
    # Text may hold empty lines; the last blank line separates the signatures.
    multi = "first\n\nthird\n"
    assert verify_note(sign_note(multi, name, key), parse_verifier_key(vkey)) == multi


def test_other_key_with_the_same_name_is_not_a_signature() -> None:
    mine, impostor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    note = sign_note("hello\n", ORIGIN, impostor)
    with pytest.raises(NoSignatureError, match=f"no signature by key {ORIGIN}\\+"):
        verify_note(note, _verifier(mine))
    # Same name *and* key id but another key: the signature is checked and fails.
    real = _verifier(mine)
    forged_line = note.split("\n")[-2]
    sig = base64.b64decode(forged_line.split(" ")[2])
    forged = (
        "hello\n\n— "
        + ORIGIN
        + " "
        + base64.b64encode(real.key_id.to_bytes(4, "big") + sig[4:]).decode()
        + "\n"
    )
    with pytest.raises(BadSignatureError, match="does not verify"):
        verify_note(forged, real)


def test_altered_text_or_signature_fails() -> None:
    key = Ed25519PrivateKey.generate()
    verifier = _verifier(key)
    note = sign_note(checkpoint_text(ORIGIN, 10, EMPTY_ROOT), ORIGIN, key)
    with pytest.raises(BadSignatureError, match=f"key {ORIGIN}\\+{verifier.key_id:08x}"):
        verify_note(note.replace("\n10\n", "\n11\n"), verifier)
    line = note.split("\n")[-2]
    b64 = line.split(" ")[2]
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1
    bad = note.replace(b64, base64.b64encode(bytes(raw)).decode())
    with pytest.raises(BadSignatureError):
        verify_note(bad, verifier)
    # A valid signature next to a bad one by the same key still rejects the note.
    with pytest.raises(BadSignatureError):
        verify_note(note + bad.split("\n\n")[-1], verifier)


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        (TEXT, "no blank line|no signature lines"),
        (TEXT + "\n", "no signature lines"),
        (TEXT + "\n" + PETER_SIG[:-1], "does not end in a newline"),
        ("\x01" + TEXT + "\n" + PETER_SIG, "control character"),
        (
            TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter Neumann"),
            "not '— name signature'",
        ),
        (TEXT + "\n" + PETER_SIG + "Unexpected line.\n", "does not start with an em dash"),
        (TEXT + "\n" + PETER_SIG.replace("x08go", "x08g!"), "is not base64"),
        (TEXT + "\n— PeterNeumann AAAA\n", "too short"),
        (TEXT + "\n" + PETER_SIG * 101, "101 signatures"),
    ],
)
def test_malformed_notes(note: str, reason: str) -> None:
    with pytest.raises(MalformedNoteError, match=reason):
        verify_note(note, parse_verifier_key(PETER_VKEY))


def test_invalid_utf8_is_malformed() -> None:
    with pytest.raises(MalformedNoteError, match="UTF-8"):
        verify_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), parse_verifier_key(PETER_VKEY))


def test_key_names_and_key_texts() -> None:
    assert check_key_name("example.com/log42") == "example.com/log42"
    for bad in ["", "a b", "a+b", "a\u00a0b", "tab\there"]:
        with pytest.raises(NoteKeyError):
            check_key_name(bad)
    key = Ed25519PrivateKey.generate()
    with pytest.raises(NoteKeyError, match="no spaces"):
        sign_note("x\n", "bad name", key)
    with pytest.raises(NoteKeyError, match="does not match its key"):
        parse_verifier_key(PETER_VKEY.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(NoteKeyError, match="not an Ed25519 key"):
        parse_verifier_key("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    with pytest.raises(NoteKeyError, match="name\\+keyid\\+key"):
        parse_verifier_key("PeterNeumann")
    with pytest.raises(NoteKeyError, match="PRIVATE\\+KEY"):
        parse_signer_key(PETER_VKEY)
    with pytest.raises(NoteKeyError, match="does not match"):
        parse_signer_key(PETER_SKEY.replace("PeterNeumann", "PeterNeuman"))
    with pytest.raises(MalformedNoteError, match="end in a newline"):
        sign_note("no newline", ORIGIN, key)


def test_checkpoint_round_trip() -> None:
    r = root([leaf_hash(b"x")])
    text = checkpoint_text(ORIGIN, 1, r)
    assert text == f"{ORIGIN}\n1\n{base64.b64encode(r).decode()}\n"
    assert parse_checkpoint(text) == Checkpoint(ORIGIN, 1, r)
    ext = checkpoint_text(ORIGIN, 0, EMPTY_ROOT, ["ext one", "ext two"])
    assert parse_checkpoint(ext) == Checkpoint(ORIGIN, 0, EMPTY_ROOT, ("ext one", "ext two"))
    # The C2SP tlog-checkpoint example's text parses.
    example = (
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )
    assert parse_checkpoint(example).size == 20852163


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("o\n1\n", "needs origin, size and root"),
        ("o\n1\nAAAA", "newline"),
        ("\n1\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n", "origin is empty"),
        ("o\n01\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n", "not a decimal size"),
        ("o\n+1\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n", "not a decimal size"),
        ("o\n1_0\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n", "not a decimal size"),
        ("o\n\u0661\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n", "not a decimal size"),
        ("o\n" + str(2**64) + "\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n", "decimal"),
        ("o\n1\n!!!!\n", "not base64"),
        ("o\n1\nAAAA\n", "not a base64 SHA-256"),
        ("o\n1\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n\n", "extension line"),
    ],
)
def test_checkpoint_parse_errors(text: str, reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        parse_checkpoint(text)


def test_checkpoint_text_refuses_bad_fields() -> None:
    with pytest.raises(CheckpointError, match="origin is empty"):
        checkpoint_text("", 1, EMPTY_ROOT)
    with pytest.raises(CheckpointError, match="spans lines"):
        checkpoint_text("a\nb", 1, EMPTY_ROOT)
    with pytest.raises(CheckpointError, match="tree size -1"):
        checkpoint_text(ORIGIN, -1, EMPTY_ROOT)
    with pytest.raises(CheckpointError, match="31 bytes"):
        checkpoint_text(ORIGIN, 1, EMPTY_ROOT[:31])
    with pytest.raises(CheckpointError, match="extension line"):
        checkpoint_text(ORIGIN, 1, EMPTY_ROOT, [""])
