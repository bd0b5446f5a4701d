"""Restoring state: copying into the model, optimizer state onto its device (one host
arena), trainer parts, and the fvcore parity rules (tied modules, resizable buffers)."""
