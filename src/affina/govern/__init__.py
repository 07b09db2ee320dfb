"""Governance: the model registry (versions, aliases, hashes), eval-gated promotion and lineage."""
