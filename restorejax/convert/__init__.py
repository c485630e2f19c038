"""Conversion of official PyTorch checkpoints into restorejax parameters."""
