#!/usr/bin/env python
"""Inspect, compare, convert, strip and verify detectron2 checkpoints.

The same tool as ``python -m d2_efficient_ckpt``; run with ``--help`` for the commands.

Examples:
    python tools/ckpt.py inspect output/model_final.pth
    python tools/ckpt.py diff model_final.pth --config-file configs/faster_rcnn_R50_FPN_custom.yaml
    python tools/ckpt.py diff output/model_0000999.pth output/model_final.pth
    python tools/ckpt.py strip --fp16 output/model_final.pth deploy.safetensors
"""

import warnings

# torch warns at import time that detectron2's use of torch.jit.script is deprecated; a
# command-line tool's output is no place for that.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from d2_efficient_ckpt.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
