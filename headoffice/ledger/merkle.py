"""RFC 6962 Merkle tree hashing, inclusion and consistency proofs (SHA-256).

The ledger's leaves form the Certificate Transparency tree of RFC 6962 section 2.1
(kept unchanged by RFC 9162 section 2.1):

- leaf hash ``SHA-256(0x00 || leaf bytes)``, interior node ``SHA-256(0x01 || left || right)``;
- the tree over ``n > 1`` leaves splits at ``k``, the largest power of two smaller than ``n``;
- the empty tree's root is ``SHA-256()`` of no bytes.

Proof generation takes the leaf *hashes* (not the leaves) and costs O(n) hashing at most;
verification follows the bit-walking algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2
and needs only the proof. :class:`RootAccumulator` computes a root while streaming the
leaf hashes, keeping one hash per set bit of the size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from hmac import compare_digest

from sealedrec.errors import LinetapError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleError",
    "RootAccumulator",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"


class MerkleError(LinetapError, ValueError):
    """A proof or root was asked for with impossible arguments (a size, an index, a hash)."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(_LEAF + bytes(data)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: ``SHA-256(0x01 || left || right)``."""
    _check_hash(left, "left child hash")
    _check_hash(right, "right child hash")
    return hashlib.sha256(_NODE + left + right).digest()


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Root of the tree over ``leaf_hashes`` (in order); :data:`EMPTY_ROOT` for none.

    Iterative and O(n): hashes level by level, pairing neighbours; an unpaired last node
    moves up a level unchanged, which is exactly RFC 6962's split at the largest power
    of two (the left part is a perfect tree, the right part recurses).
    """
    level = list(leaf_hashes)
    for i, h in enumerate(level):
        if len(h) != HASH_SIZE:
            raise MerkleError(f"leaf hash {i} is {len(h)} bytes, not {HASH_SIZE}")
    if not level:
        return EMPTY_ROOT
    sha256 = hashlib.sha256
    while len(level) > 1:
        odd = level[-1] if len(level) % 2 else None
        level = [
            sha256(_NODE + a + b).digest() for a, b in zip(level[0::2], level[1::2], strict=False)
        ]
        if odd is not None:
            level.append(odd)
    return level[0]


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """RFC 6962 audit path of leaf ``index`` in the tree of the first ``size`` leaves.

    Ordered from the leaf's sibling up to the root's child, as ``PATH(m, D[n])`` lists it.
    """
    _check_size(size, len(leaf_hashes), "tree size")
    if not 0 <= index < size:
        raise MerkleError(f"leaf index {index} is outside a tree of {size} leaves")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            path.append(root(leaf_hashes[start + k : end]))
            end = start + k
        else:
            path.append(root(leaf_hashes[start : start + k]))
            start += k
    path.reverse()
    return path


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """RFC 6962 consistency proof ``PROOF(old_size, D[new_size])``.

    Empty when ``old_size`` is 0 or equals ``new_size`` (nothing to prove beyond the roots).
    """
    _check_size(new_size, len(leaf_hashes), "new tree size")
    if not 0 <= old_size <= new_size:
        raise MerkleError(f"old tree size {old_size} is not between 0 and new size {new_size}")
    if old_size in (0, new_size):
        return []
    path: list[bytes] = []
    start, end, m, whole = 0, new_size, old_size, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            path.append(root(leaf_hashes[start + k : end]))
            end = start + k
        else:
            path.append(root(leaf_hashes[start : start + k]))
            start += k
            m -= k
            whole = False
    if not whole:
        path.append(root(leaf_hashes[start:end]))
    path.reverse()
    return path


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True if ``proof`` shows ``leaf_hash`` at ``index`` in the tree of ``size`` with ``root``.

    RFC 9162 section 2.1.3.2. Malformed input (bad sizes, hashes not 32 bytes) is False.
    """
    if not (0 <= index < size) or not _all_hashes([leaf_hash, root, *proof]):
        return False
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = hashlib.sha256(_NODE + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hashlib.sha256(_NODE + r + p).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and compare_digest(r, root)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True if ``proof`` shows the tree ``(new_size, new_root)`` extends ``(old_size, old_root)``.

    RFC 9162 section 2.1.4.2. Equal sizes need an empty proof and equal roots; from the
    empty tree (``old_size`` 0, ``old_root`` :data:`EMPTY_ROOT`) the proof is empty too.
    """
    if not (0 <= old_size <= new_size) or not _all_hashes([old_root, new_root, *proof]):
        return False
    if old_size == 0:
        return not proof and compare_digest(old_root, EMPTY_ROOT)
    if old_size == new_size:
        return not proof and compare_digest(old_root, new_root)
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = hashlib.sha256(_NODE + c + fr).digest()
            sr = hashlib.sha256(_NODE + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = hashlib.sha256(_NODE + sr + c).digest()
        fn >>= 1
        sn >>= 1
    return sn == 0 and compare_digest(fr, old_root) and compare_digest(sr, new_root)


class RootAccumulator:
    """Streaming root: append leaf hashes one by one, ask for the root at any size.

    Keeps the roots of the perfect subtrees that make up the tree so far (one per set
    bit of :attr:`size`, so at most 64), never the leaves.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        self._stack: list[bytes] = []

    @property
    def size(self) -> int:
        """Number of leaf hashes appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf's hash (``leaf_hash(data)``, not the data)."""
        _check_hash(leaf_hash, f"leaf hash {self._size}")
        h, n = bytes(leaf_hash), self._size
        while n & 1:
            h = hashlib.sha256(_NODE + self._stack.pop() + h).digest()
            n >>= 1
        self._stack.append(h)
        self._size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append every hash of ``leaf_hashes`` in order."""
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """Root of the tree of the leaves appended so far (:data:`EMPTY_ROOT` for none)."""
        if not self._stack:
            return EMPTY_ROOT
        r = self._stack[-1]
        for h in reversed(self._stack[:-1]):
            r = hashlib.sha256(_NODE + h + r).digest()
        return r


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(h: bytes, what: str) -> None:
    if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
        raise MerkleError(f"{what} must be {HASH_SIZE} bytes, got {h!r:.80}")


def _check_size(size: int, available: int, what: str) -> None:
    if not 0 <= size <= available:
        raise MerkleError(f"{what} {size} is outside 0..{available} (the leaf hashes given)")


def _all_hashes(hashes: Iterable[object]) -> bool:
    return all(isinstance(h, bytes) and len(h) == HASH_SIZE for h in hashes)
