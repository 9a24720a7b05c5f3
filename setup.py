"""Packaging for planx_jax.

`kernels/`, `configs/` and `tools/` are top-level folders of the repository but install inside the `planx_jax`
namespace (`planx_jax.kernels`, ...). They carry no `__init__.py`, so from the repository root they never shadow
the installed distributions named `kernels`, `configs` or `tools` (transformers >= 5.25 imports `kernels`). Their
package `__init__` files are `planx_jax/<name>/__init__.py`; the folders' subpackages are mapped with `package_dir`
and their loose modules are copied in by `build_py` below. An editable install or a checkout finds the modules
through `planx_jax._checkout`.

Dependencies are ranges (a library must not pin its users); `constraints.txt` pins the versions the test suite last
passed with, and the README's commands install against it.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

_NAMESPACED = {"kernels": "planx_jax.kernels", "configs": "planx_jax.configs", "tools": "planx_jax.tools"}


def _packages():
  packages = find_packages(include=["planx_jax", "planx_jax.*"])
  package_dir = {"planx_jax": "planx_jax"}
  for folder, name in _NAMESPACED.items():
    for sub in find_packages(where=folder):
      package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
      packages.append(f"{name}.{sub}")
  return packages, package_dir


class _BuildPy(build_py):
  """Also copies the loose modules of `kernels/`, `configs/` and `tools/` into their `planx_jax` packages."""

  def find_package_modules(self, package, package_dir):
    modules = super().find_package_modules(package, package_dir)
    for folder, name in _NAMESPACED.items():
      if package == name:
        modules += [(package, path.stem, str(path)) for path in sorted(Path(folder).glob("*.py"))]
    return modules


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
    cmdclass={"build_py": _BuildPy},
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12,<1",
        "optax",
        "orbax-checkpoint",
        "grain",
        "transformers>=4.51,<6",
        "tokenizers",
        "tensorflow-datasets",
        "einops",
        "ml-collections",
        "chex",
        "safetensors",
        "numpy>=1.26,<3",
        "tqdm",
        "tensorboard",  # event files written without TensorFlow
        "imageio",
        "imageio-ffmpeg",  # bundles an ffmpeg binary: MP4 without a system ffmpeg
        "pillow",
    ],
    extras_require={
        # torch is the reference side only: 2.13.0 is the CPU build this project's machines install locally.
        "test": ["pytest", "pytest-xdist", "torch==2.13.0", "diffusers>=0.35,<1", "accelerate", "libtpu"],
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
