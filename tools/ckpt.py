#!/usr/bin/env python
"""Inspect, compare, convert, strip and verify detectron2 checkpoints.

The same tool as ``python -m d2_efficient_ckpt``; run with ``--help`` for the commands.

Examples:
    python tools/ckpt.py inspect output/model_final.pth
    python tools/ckpt.py diff model_final.pth --config-file configs/faster_rcnn_R50_FPN_custom.yaml
    python tools/ckpt.py diff output/model_0000999.pth output/model_final.pth
    python tools/ckpt.py strip --fp16 output/model_final.pth deploy.safetensors
"""

from d2_efficient_ckpt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
