"""sealedrec.age: C2SP/CCTV vectors, interop with the real age tools, patch(), tampering, memory."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import shutil
import subprocess
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from firmware.errors import LinetapError
from sealedrec import age
from sealedrec.age import (
    CHUNK_SIZE,
    ENC_CHUNK_SIZE,
    AgeArmorError,
    AgeError,
    AgeHeaderError,
    AgeKeyError,
    AgeMacError,
    AgePayloadError,
    AgeReader,
    AgeWriter,
    NoIdentityMatch,
)

VECTOR_DIR = Path(__file__).parent / "data" / "age-cctv"
AGE = shutil.which("age")
AGE_KEYGEN = shutil.which("age-keygen")
needs_age = pytest.mark.skipif(
    AGE is None or AGE_KEYGEN is None, reason="the age / age-keygen tools are not installed"
)

# --------------------------------------------------------------------------- CCTV vectors


# The identity types this reader implements: X25519 only (no passphrases, no ML-KEM).
IMPLEMENTED = frozenset({"X25519"})
KNOWN_TYPES = frozenset({"X25519", "scrypt", "mlkem768x25519"})
NOT_IMPLEMENTED_TEXT = {
    "scrypt": "passphrase (scrypt) recipients are not implemented",
    "mlkem768x25519": "ML-KEM hybrid (AGE-SECRET-KEY-PQ-) identities not implemented",
}
# Vectors that carry a passphrase or hybrid identity and a stanza of its type, yet fail on
# a header rule this reader applies before any stanza is opened: so their outcome needs
# no more than X25519, and they run with their X25519 identities only.
DECIDED_BY_HEADER_RULES = {
    "hybrid_not_canonical_body": "a stanza body in non-canonical base64",
    "scrypt_not_canonical_body": "a stanza body in non-canonical base64",
    "scrypt_and_x25519": "a scrypt stanza that is not alone",
    "scrypt_double": "two scrypt stanzas",
}


def identity_type(identity: str) -> str:
    """The stanza type an identity opens; for any other kind (a plugin's), its prefix."""
    if identity.startswith("AGE-SECRET-KEY-1"):
        return "X25519"
    if identity.startswith("AGE-SECRET-KEY-PQ-1"):
        return "mlkem768x25519"
    return identity.split("-1", 1)[0]


@dataclass
class Vector:
    name: str
    expect: str
    payload_sha256: str | None
    file_key: bytes | None
    identities: list[str]
    passphrases: list[str]
    armored: bool
    data: bytes
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def stanza_types(self) -> set[str]:
        """The first argument of each ``-> `` line of the header (as written: types are
        case-sensitive, so "Scrypt" is no scrypt stanza)."""
        try:
            data = age.dearmor(self.data) if self.armored else self.data
        except AgeArmorError:
            return set()  # broken armor fails before any stanza is read
        header = data[: data.find(b"\n--- ")]
        return {line.split(b" ")[1].decode() for line in header.split(b"\n") if line[:3] == b"-> "}

    @property
    def needs(self) -> frozenset[str]:
        """The identity types the expected outcome depends on: those of the vector's keys
        that have a stanza of their type to open (an identity of a kind not listed here
        counts whatever the stanzas), unless a header rule decides first."""
        keys = {identity_type(i) for i in self.identities}
        if self.passphrases:
            keys.add("scrypt")
        if self.name in DECIDED_BY_HEADER_RULES:
            keys = set()
        nothing_to_open = {k for k in keys & KNOWN_TYPES if k not in self.stanza_types}
        return frozenset({"X25519"} | (keys - nothing_to_open))

    @property
    def skip_reason(self) -> str | None:
        missing = sorted(self.needs - IMPLEMENTED)
        if not missing:
            return None
        why = [NOT_IMPLEMENTED_TEXT.get(m, f"{m} identities not implemented") for m in missing]
        return "CCTV age vectors: " + "; ".join(why)


def load_vector(path: Path) -> Vector:
    raw = path.read_bytes()
    head, sep, body = raw.partition(b"\n\n")
    assert sep, f"{path.name}: no empty line after the textual header"
    meta: dict[str, str] = {}
    identities: list[str] = []
    passphrases: list[str] = []
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        if key == "identity":
            identities.append(value)
        elif key == "passphrase":
            passphrases.append(value)
        else:
            meta[key] = value
    if meta.get("compressed") == "zlib":
        body = zlib.decompress(body)
    file_key = meta.get("file key")
    return Vector(
        name=path.name,
        expect=meta["expect"],
        payload_sha256=meta.get("payload"),
        file_key=bytes.fromhex(file_key) if file_key else None,
        identities=identities,
        passphrases=passphrases,
        armored=meta.get("armored") == "yes",
        data=body,
        meta=meta,
    )


VECTOR_PATHS = sorted(p for p in VECTOR_DIR.iterdir() if p.name not in ("LICENSE", "SOURCE"))

EXPECTED_ERROR: dict[str, type[AgeError]] = {
    "header failure": AgeHeaderError,
    "HMAC failure": AgeMacError,
    "no match": NoIdentityMatch,
    "payload failure": AgePayloadError,
    "armor failure": AgeArmorError,
}


def vector_identities(v: Vector) -> list[X25519PrivateKey]:
    """The vector's X25519 identities (the others are not needed: see ``needs``); a vector
    without any (e.g. "empty") still needs one to decrypt with."""
    x25519 = [i for i in v.identities if identity_type(i) == "X25519"]
    return [age.parse_identity(i) for i in x25519] or [age.generate_identity()]


def classify(v: Vector) -> tuple[str, str, bytes | None]:
    """Run one vector: (outcome, hex sha256 of the released plaintext, file key)."""
    released = hashlib.sha256()
    reader: AgeReader | None = None
    try:
        data = age.dearmor(v.data) if v.armored else v.data
        reader = AgeReader(io.BytesIO(data), vector_identities(v))
        for chunk in reader:
            released.update(chunk)
    except AgeError as exc:
        for outcome, cls in EXPECTED_ERROR.items():
            if type(exc) is cls:
                return outcome, released.hexdigest(), reader.file_key if reader else None
        raise
    return "success", released.hexdigest(), reader.file_key


def stream_part(v: Vector) -> bytes:
    """The vector's payload nonce and chunks (everything after the header)."""
    data = age.dearmor(v.data) if v.armored else v.data
    mac_line = data.index(b"\n--- ") + 1
    return data[data.index(b"\n", mac_line) + 1 :]


class FakeRandom:
    """An rng for AgeWriter that serves the given byte strings in order."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = list(parts)

    def __call__(self, n: int) -> bytes:
        part = self.parts.pop(0)
        assert len(part) == n, f"asked for {n} random bytes, the test planned {len(part)}"
        return part


@pytest.mark.parametrize("path", VECTOR_PATHS, ids=[p.name for p in VECTOR_PATHS])
def test_cctv_vector(path: Path) -> None:
    v = load_vector(path)
    if v.skip_reason:
        pytest.skip(v.skip_reason)
    outcome, released, file_key = classify(v)
    assert outcome == v.expect, f"{v.name}: {v.meta.get('comment', '')}"
    if outcome in ("success", "payload failure") and v.payload_sha256:
        # Whatever plaintext was released before a failure must be exactly the vector's.
        assert released == v.payload_sha256
    if outcome == "success":
        assert file_key == v.file_key
        # The whole-buffer API agrees (and detects armor by itself).
        plain = age.decrypt_bytes(v.data, vector_identities(v))
        assert hashlib.sha256(plain).hexdigest() == v.payload_sha256
        # STREAM round trip: the same file key and nonce reproduce the payload bit for bit.
        stream = stream_part(v)
        assert file_key is not None
        rng = FakeRandom(file_key, os.urandom(32), stream[:16])
        ours = age.encrypt_bytes(plain, [age.generate_identity().public_key()], rng=rng)
        assert ours[-len(stream) :] == stream


def test_cctv_vectors_mostly_exercised() -> None:
    """The vector suite cannot silently skip everything: count what runs, by outcome."""
    vectors = [load_vector(p) for p in VECTOR_PATHS]
    assert len(vectors) >= 140
    run = Counter(v.expect for v in vectors if v.skip_reason is None)
    skipped = Counter(v.skip_reason for v in vectors if v.skip_reason is not None)
    print(f"CCTV vectors: run {dict(run)}; skipped {dict(skipped)}")
    assert sum(run.values()) >= 105
    assert run["success"] >= 19
    assert run["header failure"] >= 38
    assert run["payload failure"] >= 19
    assert run["armor failure"] >= 22
    assert run["no match"] >= 6
    assert run["HMAC failure"] >= 1
    # Skipped for what they need, not for carrying an identity of another type.
    ran = {v.name for v in vectors if v.skip_reason is None}
    by_need = {"hybrid_x25519_arg", "hybrid_uppercase", "scrypt_uppercase"}
    assert {*DECIDED_BY_HEADER_RULES, *by_need} <= ran


@pytest.mark.parametrize("name", ["scrypt_and_x25519", "scrypt_double"])
def test_scrypt_stanza_must_be_alone(name: str) -> None:
    v = load_vector(VECTOR_DIR / name)
    with pytest.raises(AgeHeaderError, match="scrypt"):
        AgeReader(io.BytesIO(v.data), [age.generate_identity()])


@pytest.mark.parametrize("name", ["scrypt", "scrypt_no_match", "scrypt_uppercase"])
def test_scrypt_only_file_is_no_match(name: str) -> None:
    v = load_vector(VECTOR_DIR / name)
    with pytest.raises(NoIdentityMatch):
        AgeReader(io.BytesIO(v.data), [age.generate_identity()])


# --------------------------------------------------------------------------- bech32 and keys

BIP173_VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",  # 90 characters, the BIP-173 maximum
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
BIP173_INVALID = [
    "x1b4n0q5v",  # invalid data character
    "li1dgmt3",  # checksum too short
    "A1G7SGD8",  # checksum computed with the upper-case HRP
    "10a06t8",  # empty HRP
    "1qzzfhee",  # empty HRP
    "A12UeL5L",  # mixed case
    "a1lqfn3a",  # valid bech32m, not bech32
]


@pytest.mark.parametrize("text", BIP173_VALID)
def test_bech32_bip173_valid(text: str) -> None:
    hrp, data = age.bech32_decode(text)
    assert age.bech32_encode(hrp, data) == text


@pytest.mark.parametrize("text", BIP173_INVALID)
def test_bech32_bip173_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        age.bech32_decode(text)


def test_spec_example_keys() -> None:
    ident = "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
    recip = "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
    priv = age.parse_identity(ident)
    assert priv.private_bytes_raw() == b"BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
    assert age.format_identity(priv) == ident
    assert age.format_recipient(priv.public_key()) == recip
    assert age.parse_recipient(recip).public_bytes_raw() == priv.public_key().public_bytes_raw()


def test_key_errors_are_clear_and_never_echo_secrets() -> None:
    priv = age.generate_identity()
    ident = age.format_identity(priv)
    recip = age.format_recipient(priv.public_key())

    bad = recip[:-1] + ("q" if recip[-1] != "q" else "p")
    with pytest.raises(AgeKeyError, match=r"recipient 'age1.*…': bad bech32 checksum"):
        age.parse_recipient(bad)
    with pytest.raises(AgeKeyError, match="lower-case"):
        age.parse_recipient(recip.upper())
    with pytest.raises(AgeKeyError, match="got a secret identity"):
        age.parse_recipient(ident)
    with pytest.raises(AgeKeyError, match="32"):
        age.parse_recipient(age.bech32_encode("age", bytes(31)))

    secret_part = ident[len("AGE-SECRET-KEY-1") :]
    flipped = ident[:30] + ("Q" if ident[30] != "Q" else "P") + ident[31:]
    for text, pattern in [
        (flipped, "bad bech32 checksum"),
        (secret_part, "'…'"),  # no prefix: nothing of the string is shown
        (ident.lower(), "upper-case"),
        (ident[:40], "checksum"),
        (recip, "got a recipient"),
    ]:
        with pytest.raises(AgeKeyError, match=pattern) as info:
            age.parse_identity(text)
        msg = str(info.value)
        assert secret_part[:8] not in msg and secret_part[-8:] not in msg, msg

    assert isinstance(AgeKeyError("x"), LinetapError)
    assert isinstance(AgeKeyError("x"), ValueError)


def test_load_identities_and_recipients(tmp_path: Path) -> None:
    a, b = age.generate_identity(), age.generate_identity()
    path = tmp_path / "keys.txt"
    path.write_text(
        f"# created: today\n# public key: {age.format_recipient(a.public_key())}\n"
        f"{age.format_identity(a)}\r\n\n   \n# another\n  {age.format_identity(b)}  \n"
    )
    keys = age.load_identities(path)
    assert [k.private_bytes_raw() for k in keys] == [a.private_bytes_raw(), b.private_bytes_raw()]

    broken = tmp_path / "broken.txt"
    broken.write_text(f"# ok\n{age.format_identity(a)}\n{age.format_identity(b)[:-2]}XX\n")
    with pytest.raises(AgeKeyError, match=r"broken\.txt:3: identity"):
        age.load_identities(broken)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(AgeKeyError, match="no identities"):
        age.load_identities(empty)

    lines = [
        "# office",
        "",
        age.format_recipient(a.public_key()),
        age.format_recipient(b.public_key()),
    ]
    pubs = age.load_recipients(lines)
    assert [p.public_bytes_raw() for p in pubs] == [
        a.public_key().public_bytes_raw(),
        b.public_key().public_bytes_raw(),
    ]
    with pytest.raises(AgeKeyError, match=r"office\.txt:2: "):
        age.load_recipients(["# x", "age1nope"], source="office.txt")


# --------------------------------------------------------------------------- real age tool


def run(
    *args: str | Path, stdin: bytes = b"", check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, check=check, timeout=60
    )


@dataclass
class ToolKey:
    path: Path
    recipient: str
    identity: X25519PrivateKey


@pytest.fixture
def tool_key(tmp_path: Path) -> ToolKey:
    assert AGE_KEYGEN
    path = tmp_path / "tool-key.txt"
    res = run(AGE_KEYGEN, "-o", path)
    m = re.search(rb"Public key: (age1[0-9a-z]+)", res.stderr)
    assert m, res.stderr
    (identity,) = age.load_identities(path)
    return ToolKey(path, m.group(1).decode(), identity)


def age_decrypt(key: ToolKey, data: bytes) -> bytes:
    assert AGE
    return run(AGE, "-d", "-i", key.path, stdin=data).stdout


def expected_length(header_len: int, n: int) -> int:
    chunks = max(1, -(-n // CHUNK_SIZE))
    return header_len + 16 + n + 16 * chunks


@needs_age
def test_bech32_round_trips_with_age_keygen(tool_key: ToolKey, tmp_path: Path) -> None:
    assert AGE_KEYGEN
    line = next(
        ln for ln in tool_key.path.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-1")
    )
    assert age.format_identity(age.parse_identity(line)) == line
    assert age.format_recipient(tool_key.identity.public_key()) == tool_key.recipient
    assert run(AGE_KEYGEN, "-y", tool_key.path).stdout.decode().strip() == tool_key.recipient
    # And the tool derives the same recipient from an identity we made.
    ours = age.generate_identity()
    mine = tmp_path / "ours.txt"
    mine.write_text(age.format_identity(ours) + "\n")
    assert run(AGE_KEYGEN, "-y", mine).stdout.decode().strip() == age.format_recipient(
        ours.public_key()
    )


SIZES = [0, 1, 65535, 65536, 65537, 3 * 65536 + 5, 5_000_000]


@needs_age
@pytest.mark.parametrize("size", SIZES)
def test_age_tool_decrypts_our_files(size: int, tool_key: ToolKey, tmp_path: Path) -> None:
    plain = os.urandom(size)
    ours = age.generate_identity()
    tool_pub = age.parse_recipient(tool_key.recipient)
    for recipients in ([tool_pub], [tool_pub, ours.public_key()]):
        path = tmp_path / "out.age"
        with path.open("wb") as f, AgeWriter(f, recipients) as w:
            # Uneven writes cross chunk boundaries in every way.
            pos = 0
            for step in (1000, 70000, 1, 200000, 131072):
                w.write(plain[pos : pos + step])
                pos = min(pos + step, size)
            w.write(plain[pos:])
            assert w.plaintext_length == size
        data = path.read_bytes()
        assert len(data) == w.bytes_written
        header_len = data.index(b"\n--- ") + 1 + len(b"--- ") + 43 + 1
        assert len(data) == expected_length(header_len, size)
        assert data.count(b"\n-> X25519 ") == len(recipients)
        assert age_decrypt(tool_key, data) == plain
        assert age.decrypt_bytes(data, [tool_key.identity]) == plain
        if len(recipients) == 2:
            assert age.decrypt_bytes(data, [ours]) == plain


@needs_age
@pytest.mark.parametrize("size", [0, 65536, 200_000])
@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armored"])
def test_we_decrypt_age_tool_files(size: int, armor: bool, tmp_path: Path) -> None:
    assert AGE
    ours = age.generate_identity()
    plain = os.urandom(size)
    args = ["-a"] if armor else []
    data = run(AGE, *args, "-r", age.format_recipient(ours.public_key()), stdin=plain).stdout
    assert data.startswith(b"-----BEGIN" if armor else b"age-encryption.org/v1\n")
    assert age.decrypt_bytes(data, [age.generate_identity(), ours]) == plain
    if not armor:
        reader = AgeReader(io.BytesIO(data), [ours])
        assert len(reader.file_key) == 16
        assert b"".join(iter(lambda: reader.read(10_000), b"")) == plain
    with pytest.raises(NoIdentityMatch, match="none of our 1 identity can"):
        age.decrypt_bytes(data, [age.generate_identity()])


# --------------------------------------------------------------------------- patch()


@needs_age
def test_patch_first_chunk_of_a_long_stream(tool_key: ToolKey, tmp_path: Path) -> None:
    plain = bytearray(os.urandom(200_000))
    path = tmp_path / "rec.age"
    with path.open("wb") as f, AgeWriter(f, [age.parse_recipient(tool_key.recipient)]) as w:
        for i in range(0, len(plain), 3000):
            w.write(plain[i : i + 3000])
        w.patch(0, b"fLaC")
        w.patch(4000, b"STREAMINFO rewritten")
        w.patch(CHUNK_SIZE - 4, b"edge")
    plain[0:4] = b"fLaC"
    plain[4000:4020] = b"STREAMINFO rewritten"
    plain[CHUNK_SIZE - 4 : CHUNK_SIZE] = b"edge"
    data = path.read_bytes()
    assert age_decrypt(tool_key, data) == bytes(plain)
    assert age.decrypt_bytes(data, [tool_key.identity]) == bytes(plain)


def test_patch_outside_first_chunk_or_written_data_raises() -> None:
    w = AgeWriter(io.BytesIO(), [age.generate_identity().public_key()])
    w.write(bytes(100))
    with pytest.raises(AgeError, match="past the 100 bytes written"):
        w.patch(90, bytes(20))
    with pytest.raises(ValueError, match="outside the first chunk"):
        w.patch(-1, b"x")
    w.write(bytes(200_000))
    w.patch(CHUNK_SIZE - 10, bytes(10))  # the very end of chunk 0 is fine
    with pytest.raises(AgeError, match="outside the first chunk"):
        w.patch(CHUNK_SIZE - 5, bytes(10))
    with pytest.raises(AgeError, match="outside the first chunk"):
        w.patch(70_000, b"x")
    w.close()
    with pytest.raises(AgeError, match="closed"):
        w.patch(0, b"x")
    with pytest.raises(AgeError, match="closed"):
        w.write(b"x")


@needs_age
def test_patch_small_file_has_exact_length(tool_key: ToolKey) -> None:
    # The output already holds older, longer content: close() must truncate it.
    out = io.BytesIO(b"\xee" * 300_000)
    plain = bytearray(os.urandom(10_000))
    w = AgeWriter(out, [age.parse_recipient(tool_key.recipient)])
    header_len = w.bytes_written
    w.write(plain)
    w.patch(10, b"patched")
    w.close()
    plain[10:17] = b"patched"
    data = out.getvalue()
    assert len(data) == expected_length(header_len - 16, len(plain)) == w.bytes_written
    assert age_decrypt(tool_key, data) == bytes(plain)
    assert age.decrypt_bytes(data, [tool_key.identity]) == bytes(plain)


def test_writer_is_deterministic_given_rng() -> None:
    recipients = [age.generate_identity().public_key() for _ in range(2)]
    parts = [os.urandom(16), os.urandom(32), os.urandom(32), os.urandom(16)]
    a = age.encrypt_bytes(b"hello" * 30_000, recipients, rng=FakeRandom(*parts))
    b = age.encrypt_bytes(b"hello" * 30_000, recipients, rng=FakeRandom(*parts))
    assert a == b
    c = age.encrypt_bytes(b"hello" * 30_000, recipients)
    assert c != a and len(c) == len(a)


def test_write_pattern_does_not_change_the_file() -> None:
    """With the same randomness, any split of the plaintext into writes gives the same bytes."""
    recipients = [age.generate_identity().public_key()]
    parts = [os.urandom(16), os.urandom(32), os.urandom(16)]
    rnd = random.Random(7)
    for size in (0, 5, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE, 300_001):
        plain = rnd.randbytes(size)
        want = age.encrypt_bytes(plain, recipients, rng=FakeRandom(*parts))
        for _ in range(4):
            out = io.BytesIO()
            with AgeWriter(out, recipients, rng=FakeRandom(*parts)) as w:
                pos = 0
                while pos < size:
                    step = rnd.choice(
                        [0, 1, 100, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 200_000]
                    )
                    assert w.write(memoryview(plain)[pos : pos + step]) == len(
                        plain[pos : pos + step]
                    )
                    pos += step
            assert out.getvalue() == want, size


class Trickle(io.BytesIO):
    """A stream that hands out at most 777 bytes per read, like a pipe or socket."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read(777 if size is None or size < 0 else min(size, 777))


def test_reader_copes_with_short_reads() -> None:
    priv = age.generate_identity()
    plain = os.urandom(2 * CHUNK_SIZE + 99)
    data = age.encrypt_bytes(plain, [priv.public_key()])
    assert AgeReader(Trickle(data), [priv]).read() == plain
    # Appended to a short final chunk, extra bytes break its tag...
    with pytest.raises(AgePayloadError, match="chunk 2 failed authentication"):
        AgeReader(Trickle(data + b"x"), [priv]).read()
    # ...after a full-size final chunk they are reported as such.
    data = age.encrypt_bytes(plain[: 2 * CHUNK_SIZE], [priv.public_key()])
    with pytest.raises(AgePayloadError, match="trailing data after its final chunk"):
        AgeReader(Trickle(data + b"x"), [priv]).read()


def test_writer_refuses_bad_setups_and_abandons_on_exception() -> None:
    pub = age.generate_identity().public_key()
    with pytest.raises(AgeError, match="at least one recipient"):
        AgeWriter(io.BytesIO(), [])

    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    with pytest.raises(AgeError, match="seekable"):
        AgeWriter(Pipe(), [pub])
    zero = age.parse_recipient(age.bech32_encode("age", bytes(32)))
    with pytest.raises(AgeKeyError, match="low-order"):
        AgeWriter(io.BytesIO(), [pub, zero])

    priv = age.generate_identity()
    out = io.BytesIO()
    with pytest.raises(RuntimeError), AgeWriter(out, [priv.public_key()]) as w:
        w.write(bytes(100_000))
        raise RuntimeError("encoder crashed")
    with pytest.raises(AgePayloadError):  # never passes for a complete recording
        age.decrypt_bytes(out.getvalue(), [priv])


# --------------------------------------------------------------------------- tampering

PLAIN_3_CHUNKS = os.urandom(3 * CHUNK_SIZE + 1234)


def swap_b64_char(data: bytes, pos: int) -> bytes:
    """Replace the base64 character at pos by another one (the result stays canonical)."""
    new = b"B" if data[pos : pos + 1] != b"B" else b"C"
    return data[:pos] + new + data[pos + 1 :]


def flip(data: bytes, pos: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1 :]


def tamperings(data: bytes) -> dict[str, tuple[bytes, type[AgeError]]]:
    mac_line = data.index(b"\n--- ") + 1
    header_len = data.index(b"\n", mac_line) + 1
    body_line = data.index(b"\n", data.index(b"-> X25519 ")) + 1
    chunk1 = header_len + 16 + ENC_CHUNK_SIZE
    return {
        "header MAC": (swap_b64_char(data, mac_line + 10), AgeMacError),
        "stanza body": (swap_b64_char(data, body_line + 5), NoIdentityMatch),
        "payload nonce": (flip(data, header_len + 3), AgePayloadError),
        "middle chunk": (flip(data, chunk1 + 1000), AgePayloadError),
        "last chunk truncated": (data[:-1], AgePayloadError),
        "last chunk dropped": (data[: header_len + 16 + 3 * ENC_CHUNK_SIZE], AgePayloadError),
        "byte appended": (data + b"\x00", AgePayloadError),
    }


@needs_age
def test_tampering_is_detected_by_us_and_by_age(tool_key: ToolKey) -> None:
    data = age.encrypt_bytes(PLAIN_3_CHUNKS, [age.parse_recipient(tool_key.recipient)])
    assert age.decrypt_bytes(data, [tool_key.identity]) == PLAIN_3_CHUNKS
    assert AGE
    for what, (bad, error) in tamperings(data).items():
        with pytest.raises(error) as info:
            age.decrypt_bytes(bad, [tool_key.identity])
        assert type(info.value) is error, what
        assert run(AGE, "-d", "-i", tool_key.path, stdin=bad, check=False).returncode != 0, what


def test_tampered_middle_chunk_releases_only_authentic_chunks() -> None:
    priv = age.generate_identity()
    data = age.encrypt_bytes(PLAIN_3_CHUNKS, [priv.public_key()])
    bad, _ = tamperings(data)["middle chunk"]
    reader = AgeReader(io.BytesIO(bad), [priv])
    got = reader.read(CHUNK_SIZE + 10)  # what decrypted before the error is returned...
    assert got == PLAIN_3_CHUNKS[:CHUNK_SIZE]
    for _ in range(2):  # ...and the error then sticks
        with pytest.raises(AgePayloadError, match="chunk 1 failed authentication"):
            reader.read(10)

    dropped, _ = tamperings(data)["last chunk dropped"]
    reader = AgeReader(io.BytesIO(dropped), [priv])
    chunks: list[bytes] = []
    with pytest.raises(AgePayloadError, match="without a final chunk"):
        chunks.extend(reader)
    assert b"".join(chunks) == PLAIN_3_CHUNKS[: 3 * CHUNK_SIZE]


def test_header_errors_name_the_problem() -> None:
    priv = age.generate_identity()
    data = age.encrypt_bytes(b"x", [priv.public_key()])
    with pytest.raises(AgeHeaderError, match="not an age file"):
        age.decrypt_bytes(b"RIFF....WAVEfmt ", [priv])
    with pytest.raises(AgeHeaderError, match="CRLF"):
        age.decrypt_bytes(data.replace(b"\n", b"\r\n"), [priv])
    with pytest.raises(AgeHeaderError, match="truncated"):
        age.decrypt_bytes(data[:40], [priv])
    with pytest.raises(AgeError, match="at least one identity"):
        age.decrypt_bytes(data, [])


# --------------------------------------------------------------------------- memory


def peak_bytes(fn: Callable[[], None]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_constant_memory_50mb(tmp_path: Path) -> None:
    priv = age.generate_identity()
    block = os.urandom(1 << 20)
    path = tmp_path / "big.age"
    total = 50 << 20

    def encrypt() -> None:
        with path.open("wb") as f, AgeWriter(f, [priv.public_key()]) as w:
            for _ in range(total // len(block)):
                w.write(block)

    digest = hashlib.sha256()

    def decrypt() -> None:
        with path.open("rb") as f:
            reader = AgeReader(f, [priv])
            while piece := reader.read(CHUNK_SIZE):
                digest.update(piece)

    enc_peak = peak_bytes(encrypt)
    dec_peak = peak_bytes(decrypt)
    with path.open("rb") as f:
        head = f.read(400)
    header_len = head.index(b"\n", head.index(b"\n--- ") + 1) + 1
    assert path.stat().st_size == expected_length(header_len, total)
    want = hashlib.sha256()
    for _ in range(total // len(block)):
        want.update(block)
    assert digest.digest() == want.digest()
    print(f"tracemalloc peaks: encrypt {enc_peak} B, decrypt {dec_peak} B")
    assert enc_peak < 1_000_000
    assert dec_peak < 1_000_000


@needs_age
def test_segment_sealer_files_share_a_header_and_each_opens_with_age(tool_key: ToolKey) -> None:
    """Sizes around the chunk edges, each a standard age file the tool opens alone."""
    sealer = age.SegmentSealer([age.parse_recipient(tool_key.recipient)])
    plains = [os.urandom(n) for n in (0, 1, 9000, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE)]
    files = [sealer.seal(p) for p in plains]
    for plain, data in zip(plains, files, strict=True):
        assert data.startswith(sealer.header)
        assert len(data) == expected_length(len(sealer.header), len(plain))
        assert age_decrypt(tool_key, data) == plain
        assert age.decrypt_bytes(data, [tool_key.identity]) == plain
    nonces = {data[len(sealer.header) : len(sealer.header) + 16] for data in files}
    assert len(nonces) == len(files)
    sealer.forget()
    with pytest.raises(AgeError, match="after forget"):
        sealer.seal(b"late")
