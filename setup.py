from setuptools import find_packages, setup

# torch, torchvision and detectron2 are installed by scripts/setup_env.sh, as detectron2's own
# install docs do, since detectron2 is not on PyPI under its own name.
setup(
    name="d2_efficient_ckpt",
    version="0.1.0",
    description="Efficient, selective, safe checkpointing and config-driven datasets "
    "for Detectron2",
    packages=find_packages(include=["d2_efficient_ckpt", "d2_efficient_ckpt.*"]),
    python_requires=">=3.9",
    install_requires=["safetensors", "tabulate", "tqdm", "numpy", "Pillow"],
    entry_points={"console_scripts": ["d2-ckpt=d2_efficient_ckpt.__main__:main"]},
)
