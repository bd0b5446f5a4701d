"""A training process for the fault tests, run as ``python -m tests.checkpoint.save.worker``.

Modes:
    loop OUT [async] [safetensors]: SGD steps on a tiny Faster R-CNN, a checkpoint after every
        step, forever; prints ``saving N`` before each save so the test can kill it in the
        middle of one. ``async`` and ``safetensors`` set CHECKPOINT.SAVE.ASYNC and FORMAT.
    trainer OUT TOY: the real Trainer on a toy dataset with CHECKPOINT.SAVE.ON_SIGNAL SIGUSR1;
        prints ``step N`` after each step.
"""

import sys

import torch
from detectron2.engine.train_loop import HookBase
from detectron2.modeling import build_model

from d2_efficient_ckpt import build_checkpointer
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from tests.helpers.config import tiny_frcnn_cfg, train_on_toy


def loop(out: str, asynchronous: bool, fmt: str = "pth") -> None:
    cfg = tiny_frcnn_cfg(**{"CHECKPOINT.SAVE.ASYNC": asynchronous, "CHECKPOINT.SAVE.FORMAT": fmt})
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ck = build_checkpointer(cfg, model, out, optimizer=opt)
    for it in range(10**6):
        for p in model.parameters():
            p.grad = torch.full_like(p, 0.001)
        opt.step()
        print(f"saving {it}", flush=True)
        ck.save(f"model_{it:07d}", iteration=it)


class _Progress(HookBase):
    def after_step(self):
        print(f"step {self.trainer.iter}", flush=True)


def trainer(out: str, toy: str) -> None:
    import pathlib

    cfg = train_on_toy(tiny_frcnn_cfg(), pathlib.Path(toy), prefix="sig")
    cfg.SOLVER.MAX_ITER = 1000
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.OUTPUT_DIR = out
    cfg.CHECKPOINT.SAVE.ON_SIGNAL = ["SIGUSR1"]
    cfg.CHECKPOINT.SAVE.ASYNC = True
    prepare_datasets(cfg)
    t = Trainer(cfg)
    t.register_hooks([_Progress()])
    t.resume_or_load(resume=False)
    t.train()


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "loop":
        flags = sys.argv[3:]
        loop(out, "async" in flags, "safetensors" if "safetensors" in flags else "pth")
    else:
        trainer(out, sys.argv[3])
