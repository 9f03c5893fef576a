"""The audit ledger: an append-only RFC 6962 Merkle tree with signed checkpoints."""
