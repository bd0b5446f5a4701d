"""Loading under torch.distributed: two CPU processes over gloo, through detectron2's launch."""

import json
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import launch
from detectron2.modeling import build_model
from torch.nn.parallel import DistributedDataParallel

from d2_efficient_ckpt import build_checkpointer
from tests.conftest import tiny_frcnn_cfg


def _worker(path, out_dir):
    import torch.distributed as dist
    from detectron2.utils import comm

    try:
        cfg = tiny_frcnn_cfg()
        torch.manual_seed(100 + comm.get_rank())
        model = DistributedDataParallel(build_model(cfg))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ck = build_checkpointer(cfg, model, out_dir, optimizer=opt)
        extra = ck.load(path)
        saved = torch.load(path, weights_only=True)
        same = all(torch.equal(v, saved["model"][k]) for k, v in model.module.state_dict().items())
        result = {
            "rank": comm.get_rank(),
            "same": same,
            "momentum": len(opt.state_dict()["state"]),
            "report": ck.last_report.checkpointables,
            "map_location": ck.last_report.map_location,
            "extra": sorted(extra),
        }
        with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_two_ranks_each_restore(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_frcnn_cfg())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    DetectionCheckpointer(model, str(tmp_path), optimizer=opt).save("model_final", iteration=3)
    path = str(tmp_path / "model_final.pth")
    launch(_worker, 2, dist_url="auto", args=(path, str(tmp_path)))
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["same"] and r["momentum"] == len(list(model.parameters()))
        assert r["report"] == {"optimizer": "restored"}
        assert r["map_location"] == "cpu" and r["extra"] == ["iteration"]
