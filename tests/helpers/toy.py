"""The small toy dataset the data and toy tests share."""

import pathlib

from d2_efficient_ckpt.toy import generate_toy_dataset

#: Width and height of the shared toy dataset's images.
TOY_SIZE = 64


def make_small_toy(out: pathlib.Path) -> pathlib.Path:
    """Write a 6 + 3 image toy dataset (seed 0, 64 px) into ``out``; returns ``out``."""
    generate_toy_dataset(str(out), num_train=6, num_val=3, size=TOY_SIZE, seed=0)
    return out
