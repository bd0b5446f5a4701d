"""A small synthetic detection dataset: bright shapes on dark, noisy images, in COCO, Pascal
VOC and YOLO layouts.

It exists so the whole pipeline (registration, training, checkpointing, evaluation) can be
exercised on a CPU in minutes without downloading anything; ``tools/make_toy_dataset.py``
writes it, and ``configs/toy`` trains on it. It is test and demo data, not part of the
dataset layer: :mod:`d2_efficient_ckpt.data` does not import it.

Typical use::

    from d2_efficient_ckpt.toy import generate_toy_dataset
    generate_toy_dataset("datasets/toy", num_train=400, num_val=60)
"""

from .generate import FORMATS, ToyDataset, ToySplit, generate_toy_dataset
from .shapes import TOY_CATEGORIES, render_toy_image

__all__ = [
    "FORMATS",
    "TOY_CATEGORIES",
    "ToyDataset",
    "ToySplit",
    "generate_toy_dataset",
    "render_toy_image",
]
