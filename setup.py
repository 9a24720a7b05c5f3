"""Packaging for planx_jax.

`kernels/`, `configs/` and `tools/` are top-level folders of the repository but
install inside the `planx_jax` namespace (`planx_jax.kernels`, ...), so nothing
with a generic top-level name lands in site-packages.
"""

from setuptools import find_packages, setup

_NAMESPACED = {"kernels": "planx_jax.kernels", "configs": "planx_jax.configs", "tools": "planx_jax.tools"}


def _packages():
  packages = find_packages(include=["planx_jax", "planx_jax.*"])
  package_dir = {"planx_jax": "planx_jax"}
  for folder, name in _NAMESPACED.items():
    package_dir[name] = folder
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(where=folder)]
  return packages, package_dir


_PACKAGES, _PACKAGE_DIR = _packages()

setup(
    name="planx_jax",
    version="0.1.0",
    description="JAX/Flax reference implementation of Plan-X: semantic planner LM and semantic-branch video DiT.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=_PACKAGES,
    package_dir=_PACKAGE_DIR,
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "grain",
        "transformers>=4.51",
        "tokenizers",
        "tensorflow-datasets",
        "einops",
        "ml-collections",
        "chex",
        "safetensors",
        "numpy",
        "tqdm",
        "tensorboard",  # event files written without TensorFlow
        "imageio",
        "imageio-ffmpeg",  # bundles an ffmpeg binary: MP4 without a system ffmpeg
        "pillow",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "torch==2.13.0", "diffusers==0.42.1", "accelerate", "libtpu"],
        "tpu": ["jax[tpu]>=0.10,<0.12"],
        "cuda": ["jax[cuda12]>=0.10,<0.12"],
    },
    entry_points={"console_scripts": ["planx=planx_jax.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "License :: OSI Approved :: Apache Software License",
    ],
)
