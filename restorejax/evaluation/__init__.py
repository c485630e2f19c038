"""Evaluation: BasicSR-compatible metrics, evaluators over a mesh, the GIR protocol, restore CLI."""
