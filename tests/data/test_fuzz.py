"""Fuzzing: mutated COCO, VOC and YOLO datasets either fail registration with the project's
dataset error, or register and then survive one pass of detectron2's data loading (filtering
and DatasetMapper) over every record with correct boxes and classes. Seeded and bounded."""

import contextlib
import io
import json
import os
import random
import shutil
import signal

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.build import get_detection_dataset_dicts
from pycocotools.coco import COCO

from d2_efficient_ckpt.data import DatasetConfigError, DatasetValidationError, register_and_report
from tests.helpers.toy import TOY_NAMES, toy_spec

# Per format, about 0.1 s each; raise it (D2EC_FUZZ_ROUNDS) for a longer search.
ROUNDS = int(os.environ.get("D2EC_FUZZ_ROUNDS", "25"))
ODD_VALUES = [
    None, True, False, 0, -1, 1, 2.5, 1e308, -1e308, "", "x", "1", [], {}, [1, 2, 3],
    [0, 0, 5, 5], [[1, 2, 3, 4, 5, 6]], {"counts": "x"}, [[[[[]]]]], "000002.jpg",
]  # fmt: skip


def _paths(obj, prefix=()):
    """Every (container, key) pair inside a parsed JSON document."""
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list):
        items = list(enumerate(obj))
    else:
        return
    for key, value in items:
        yield obj, key
        yield from _paths(value, prefix + (key,))


def mutate_json(rng, data):
    for _ in range(rng.randint(1, 3)):
        container, key = rng.choice(list(_paths(data)))
        action = rng.random()
        if action < 0.6:
            container[key] = rng.choice(ODD_VALUES)
        elif action < 0.8 and isinstance(container, dict):
            del container[key]
        elif isinstance(container, list):
            container.append(container[key])  # a duplicate: same ids
    return data


def mutate_text(rng, text):
    tokens = text.split(" ") if " " in text else list(text)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(tokens)) if tokens else 0
        choice = rng.random()
        if choice < 0.5 and tokens:
            tokens[i] = rng.choice(["", "-5", "nan", "1e9", "x", "0", "<a>", "\n", "99", "0.5"])
        elif choice < 0.8 and tokens:
            del tokens[i]
        else:
            tokens.insert(i, rng.choice(["7", "0 0.5 0.5 2 2", "\ufeff", "</annotation>"]))
    return (" " if " " in text else "").join(tokens)


def mutate_image(rng, path):
    kind = rng.choice(["empty", "truncated", "text", "dir", "fifo", "missing"])
    data = path.read_bytes()
    path.unlink()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(data[: rng.randrange(1, len(data))])
    elif kind == "text":
        path.write_text("hello")
    elif kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)


def mutate(rng, fmt, root):
    target = rng.random()
    if target < 0.25:
        folder = {"coco": "images/train", "voc": "voc/JPEGImages", "yolo": "yolo/images/train"}
        images = sorted((root / folder[fmt]).glob("*train_00000*.jpg" if fmt == "voc" else "*.jpg"))
        mutate_image(rng, rng.choice(images))
        return
    if fmt == "coco":
        path = root / "annotations" / "train.json"
        path.write_text(json.dumps(mutate_json(rng, json.loads(path.read_text()))))
    else:
        pattern = "voc/Annotations/train_*.xml" if fmt == "voc" else "yolo/labels/train/*.txt"
        files = sorted(root.glob(pattern))
        if fmt == "voc" and target < 0.3:
            files = [root / "voc" / "ImageSets" / "Main" / "train.txt"]
        path = rng.choice(files)
        path.write_text(mutate_text(rng, path.read_text()))


def _alarm(*_):
    raise AssertionError("a round took more than 20 s: something blocked")


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_mutated_datasets_fail_clearly_or_load(fmt, toy_root, tmp_path, cfg, dataset_name):
    rng = random.Random(f"fuzz-{fmt}")
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.DATASETS.NUM_CLASSES_FROM_DATA = True
    mapper = DatasetMapper(cfg, is_train=True)
    outcomes = {"error": 0, "loaded": 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for round_ in range(ROUNDS):
            root = tmp_path / f"r{round_}"
            shutil.copytree(toy_root, root)
            mutate(rng, fmt, root)
            run_cfg = cfg.clone()
            name = dataset_name(fmt)
            run_cfg.DATASETS.CUSTOM[name] = type(cfg)(toy_spec(fmt, root))
            run_cfg.DATASETS.TRAIN = (name,)
            run_cfg.DATASETS.VALIDATION = rng.choice(["error", "warn"])
            signal.alarm(20)
            try:
                register_and_report(run_cfg)
            except (DatasetValidationError, DatasetConfigError) as e:
                assert "Traceback" not in str(e)
                assert name not in DatasetCatalog
                outcomes["error"] += 1
                continue
            finally:
                signal.alarm(0)
            signal.alarm(20)
            records = get_detection_dataset_dicts([name], filter_empty=True)
            for record in records:
                out = mapper(dict(record))
                boxes = out["instances"].gt_boxes.tensor
                assert bool(np.isfinite(boxes.numpy()).all())
                classes = out["instances"].gt_classes
                assert bool(((classes >= 0) & (classes < 3)).all())
            signal.alarm(0)
            meta = MetadataCatalog.get(name)
            assert meta.thing_classes == TOY_NAMES or fmt == "coco"
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO(meta.json_file)  # what COCOEvaluator reads
            assert sorted(coco.getCatIds()) == sorted(meta.thing_dataset_id_to_contiguous_id)
            assert len(coco.getImgIds()) == len(DatasetCatalog.get(name))
            outcomes["loaded"] += 1
            shutil.rmtree(root, ignore_errors=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    # Both outcomes occur, so neither path is vacuous.
    assert outcomes["error"] > 0 and outcomes["loaded"] > 0, outcomes
