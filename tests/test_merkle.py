"""RFC 6962 Merkle tree: reference vectors, pymerkle as an oracle, proofs, tampering."""

from __future__ import annotations

import hashlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree  # type: ignore[import-untyped]

from headoffice.ledger.merkle import (
    EMPTY_ROOT,
    MerkleError,
    RootAccumulator,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

# The Certificate Transparency reference vectors (google/certificate-transparency,
# cpp/merkletree/merkle_tree_test.cc; also transparency-dev/merkle testonly/constants.go).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CT_CONSISTENCY = {
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}

MAX = 300
DATA = [f"leaf {i}".encode() for i in range(MAX)]
HASHES = [leaf_hash(d) for d in DATA]


@pytest.fixture(scope="module")
def oracle() -> InmemoryTree:
    # pymerkle's default (sha256, security on) prefixes leaves with 0x00 and nodes with 0x01.
    return InmemoryTree.init_from_entries(DATA, algorithm="sha256")


def _flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]


def test_hand_computed_small_trees_and_empty_root() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root([]) == EMPTY_ROOT
    one = hashlib.sha256(b"\x00" + b"a").digest()
    two = hashlib.sha256(b"\x00" + b"b").digest()
    assert leaf_hash(b"a") == one
    assert root([one]) == one
    assert root([one, two]) == hashlib.sha256(b"\x01" + one + two).digest() == node_hash(one, two)
    three = hashlib.sha256(b"\x00c").digest()
    assert root([one, two, three]) == node_hash(node_hash(one, two), three)


def test_pymerkle_is_configured_as_rfc6962() -> None:
    tree = InmemoryTree.init_from_entries([b"a", b"b"], algorithm="sha256")
    one, two = (hashlib.sha256(b"\x00" + x).digest() for x in (b"a", b"b"))
    assert tree.get_root(1) == one
    assert tree.get_root() == hashlib.sha256(b"\x01" + one + two).digest()
    assert InmemoryTree().get_root(0) == EMPTY_ROOT


def test_certificate_transparency_vectors() -> None:
    hashes = [leaf_hash(x) for x in CT_LEAVES]
    for n in range(1, 9):
        assert root(hashes[:n]).hex() == CT_ROOTS[n - 1]
    for (i, n), want in CT_INCLUSION.items():
        assert [h.hex() for h in inclusion_proof(hashes, i, n)] == want
    for (m, n), want in CT_CONSISTENCY.items():
        proof = consistency_proof(hashes, m, n)
        assert [h.hex() for h in proof] == want
        assert verify_consistency(m, n, root(hashes[:m]), root(hashes[:n]), proof)


def test_roots_match_pymerkle_for_every_size(oracle: InmemoryTree) -> None:
    acc = RootAccumulator()
    assert acc.root() == EMPTY_ROOT
    for n in range(1, MAX + 1):
        acc.append(HASHES[n - 1])
        assert acc.size == n
        want = oracle.get_root(n)
        assert root(HASHES[:n]) == want, n
        assert acc.root() == want, n


@settings(max_examples=60, deadline=None)
@given(st.integers(1, MAX))
def test_inclusion_every_index_matches_pymerkle(size: int) -> None:
    tree = InmemoryTree.init_from_entries(DATA[:size], algorithm="sha256")
    r = root(HASHES[:size])
    for i in range(size):
        proof = inclusion_proof(HASHES, i, size)
        # pymerkle's path starts with the leaf itself, then the RFC 6962 audit path.
        assert proof == tree.prove_inclusion(i + 1, size).path[1:]
        assert verify_inclusion(HASHES[i], i, size, proof, r)
        if size > 1:
            assert not verify_inclusion(HASHES[i], (i + 1) % size, size, proof, r)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, MAX).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_consistency_proofs_verify(sizes: tuple[int, int]) -> None:
    old, new = sizes
    proof = consistency_proof(HASHES, old, new)
    old_root, new_root = root(HASHES[:old]), root(HASHES[:new])
    assert verify_consistency(old, new, old_root, new_root, proof)
    if 0 < old < new:
        other = root([*HASHES[: old - 1], leaf_hash(b"forged")])
        assert not verify_consistency(old, new, other, new_root, proof)
        assert not verify_consistency(old, new, old_root, _flip(new_root), proof)
        for j in range(len(proof)):
            tampered = [*proof[:j], _flip(proof[j], 31), *proof[j + 1 :]]
            assert not verify_consistency(old, new, old_root, new_root, tampered)
        assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
        assert not verify_consistency(old, new, old_root, new_root, [*proof, proof[0]])


def test_pymerkle_consistency_agrees_with_our_roots(oracle: InmemoryTree) -> None:
    for old, new in [(1, 2), (3, 7), (64, 65), (100, 300), (255, 256)]:
        oracle.prove_consistency(old, new).verify(root(HASHES[:old]), root(HASHES[:new]))
        assert verify_consistency(
            old,
            new,
            oracle.get_root(old),
            oracle.get_root(new),
            consistency_proof(HASHES, old, new),
        )


def test_tampering_fails_inclusion() -> None:
    size, r = 77, root(HASHES[:77])
    for i in (0, 13, 64, 76):
        proof = inclusion_proof(HASHES, i, size)
        assert verify_inclusion(HASHES[i], i, size, proof, r)
        assert not verify_inclusion(leaf_hash(_flip(DATA[i])), i, size, proof, r)
        assert not verify_inclusion(_flip(HASHES[i], 5), i, size, proof, r)
        for j in range(len(proof)):
            tampered = [*proof[:j], _flip(proof[j], j), *proof[j + 1 :]]
            assert not verify_inclusion(HASHES[i], i, size, tampered, r)
        assert not verify_inclusion(HASHES[i], i, size, proof[:-1], r)
        assert not verify_inclusion(HASHES[i], i, size, [*proof, proof[0]], r)
        assert not verify_inclusion(HASHES[i], i, size, proof, _flip(r))


def test_edge_cases_and_errors() -> None:
    h = HASHES[0]
    assert inclusion_proof(HASHES, 0, 1) == []
    assert verify_inclusion(h, 0, 1, [], h)
    assert not verify_inclusion(h, 1, 1, [], h)
    assert not verify_inclusion(h, 0, 0, [], h)
    assert not verify_inclusion(h[:31], 0, 1, [], h[:31])
    assert consistency_proof(HASHES, 0, 5) == [] == consistency_proof(HASHES, 5, 5)
    assert verify_consistency(0, 5, EMPTY_ROOT, root(HASHES[:5]), [])
    assert not verify_consistency(0, 5, h, root(HASHES[:5]), [])
    assert not verify_consistency(5, 5, root(HASHES[:5]), root(HASHES[:4]), [])
    assert not verify_consistency(5, 4, root(HASHES[:5]), root(HASHES[:4]), [])
    assert not verify_consistency(4, 5, root(HASHES[:4]), root(HASHES[:5]), [])
    with pytest.raises(MerkleError, match="leaf index 3 is outside a tree of 3 leaves"):
        inclusion_proof(HASHES, 3, 3)
    with pytest.raises(MerkleError, match="tree size 301"):
        inclusion_proof(HASHES, 0, MAX + 1)
    with pytest.raises(MerkleError, match="old tree size 6 is not between 0 and new size 5"):
        consistency_proof(HASHES, 6, 5)
    with pytest.raises(MerkleError, match="leaf hash 1 is 3 bytes"):
        root([h, b"abc"])
    with pytest.raises(MerkleError, match="leaf hash 0 must be 32 bytes"):
        RootAccumulator().append(b"short")
    with pytest.raises(MerkleError, match="right child hash"):
        node_hash(h, b"")


def test_root_of_a_million_leaves_is_fast_and_streams() -> None:
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1_000_000)]
    start = time.perf_counter()
    r = root(hashes)
    elapsed = time.perf_counter() - start
    acc = RootAccumulator()
    acc.extend(iter(hashes))
    assert acc.root() == r
    assert acc.size == 1_000_000
    assert len(acc._stack) == bin(1_000_000).count("1")
    assert elapsed < 10, f"root() of 10^6 leaves took {elapsed:.2f}s"
