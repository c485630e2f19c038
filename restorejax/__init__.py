"""restorejax: sharded JAX/Flax training of image-restoration networks."""

__version__ = "0.1.0"
