"""What a load did: the ``LoadReport``, the ON_MISMATCH policy, and per-module comparison
of two checkpoints."""
