"""YOLO (Ultralytics layout): one ``.txt`` label file per image, ``class cx cy w h`` per line.

Three parts, one job each: :mod:`.layout` is the format (the spec, the folders and
``data.yaml``, the records it returns), :mod:`.labels` reads and parses the label files and
image headers, and :mod:`.box_table` holds the boxes as arrays until the shared checks have
converted them.
"""

from .layout import YOLO, default_label_root

__all__ = ["YOLO", "default_label_root"]
