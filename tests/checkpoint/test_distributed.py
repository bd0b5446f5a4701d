"""Loading under torch.distributed through detectron2's launch: two CPU processes over gloo
on any host, and two GPU processes over NCCL where two GPUs are present."""

import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import launch
from detectron2.modeling import build_model
from torch.nn.parallel import DistributedDataParallel

from d2_efficient_ckpt import build_checkpointer
from tests.helpers.config import tiny_frcnn_cfg
from tests.helpers.models import build_tiny, trained_state


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


def test_two_ranks_each_restore(tmp_path, monkeypatch):
    # launch() picks NCCL and one GPU per rank whenever the workers see a GPU; hidden from
    # them, they use gloo on the CPU, so this runs the same on a one-GPU host.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    model = build_tiny(tiny_frcnn_cfg)
    opt = trained_state(model)
    DetectionCheckpointer(model, str(tmp_path), optimizer=opt).save("model_final", iteration=3)
    path = str(tmp_path / "model_final.pth")
    launch(_worker, 2, dist_url="auto", args=(path, str(tmp_path)))
    for rank in (0, 1):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert r["same"] and r["momentum"] == len(list(model.parameters()))
        assert r["report"] == {"optimizer": "restored"}
        assert r["map_location"] == "cpu" and r["extra"] == ["iteration"]


def _gpu_worker(path, out_dir):
    import torch.distributed as dist
    from detectron2.utils import comm

    try:
        rank = comm.get_rank()
        # MAP_LOCATION names GPU 0 for every rank: each must still land on its own device.
        cfg = tiny_frcnn_cfg(
            **{"MODEL.DEVICE": f"cuda:{rank}", "CHECKPOINT.LOAD.MAP_LOCATION": "cuda:0"}
        )
        torch.manual_seed(100 + rank)
        model = DistributedDataParallel(build_model(cfg), device_ids=[rank])
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ck = build_checkpointer(cfg, model, out_dir, optimizer=opt)
        ck.load(path)
        saved = torch.load(path, weights_only=True)
        sd = model.module.state_dict()
        momenta = [s["momentum_buffer"] for s in opt.state_dict()["state"].values()]
        saved_momenta = list(saved["optimizer"]["state"].values())
        result = {
            "devices": sorted({str(t.device) for t in [*sd.values(), *momenta]}),
            "same": all(torch.equal(v.cpu(), saved["model"][k]) for k, v in sd.items()),
            "same_momentum": len(momenta) == len(saved_momenta)
            and all(
                torch.equal(m.cpu(), s["momentum_buffer"]) for m, s in zip(momenta, saved_momenta)
            ),
            "map_location": ck.last_report.map_location,
        }
        with open(os.path.join(out_dir, f"gpu_rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 GPUs: per-rank CUDA restore not tested"
)
def test_two_gpu_ranks_restore_onto_their_own_device(tmp_path):
    model = build_tiny(tiny_frcnn_cfg)
    opt = trained_state(model)
    DetectionCheckpointer(model, str(tmp_path), optimizer=opt).save("model_final", iteration=3)
    launch(_gpu_worker, 2, dist_url="auto", args=(str(tmp_path / "model_final.pth"), str(tmp_path)))
    for rank in (0, 1):
        r = json.loads((tmp_path / f"gpu_rank{rank}.json").read_text())
        assert r["devices"] == [f"cuda:{rank}"], r
        assert r["same"] and r["same_momentum"]
        assert r["map_location"] == f"cuda:{rank}"


def _resume_worker(dirs, broadcast, out_dir):
    import torch.distributed as dist
    from detectron2.utils import comm

    from d2_efficient_ckpt.checkpoint.errors import CheckpointError

    rank = comm.get_rank()
    try:
        cfg = tiny_frcnn_cfg(**{"CHECKPOINT.LOAD.BROADCAST_FROM_MAIN": broadcast})
        torch.manual_seed(100 + rank)
        model = DistributedDataParallel(build_model(cfg))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        # Each rank its own output folder: storage that is not shared.
        ck = build_checkpointer(cfg, model, dirs[rank], optimizer=opt)
        try:
            ck.resume_or_load("", resume=True)
            result = {
                "weights": [float(v.double().sum()) for v in model.module.state_dict().values()],
                "momentum": len(opt.state_dict()["state"]),
                "report": ck.last_report.checkpointables,
            }
        except CheckpointError as e:
            result = {"error": str(e)}
        with open(os.path.join(out_dir, f"resume{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("broadcast", [True, False])
def test_the_checkpointer_alone_resumes_from_the_main_process(tmp_path, monkeypatch, broadcast):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    model = build_tiny(tiny_frcnn_cfg)
    opt = trained_state(model)
    dirs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    build_checkpointer(tiny_frcnn_cfg(), model, dirs[0], optimizer=opt).save("model_0000003")
    os.makedirs(dirs[1])
    launch(_resume_worker, 2, dist_url="auto", args=(dirs, broadcast, str(tmp_path)))
    results = [json.loads((tmp_path / f"resume{r}.json").read_text()) for r in (0, 1)]
    if not broadcast:  # one clear error on every rank, naming the rank and the fix
        for r in results:
            assert "ranks [1] cannot read the file" in r["error"]
            assert "BROADCAST_FROM_MAIN" in r["error"]
        return
    want = [float(v.double().sum()) for v in model.state_dict().values()]
    for r in results:
        assert r["weights"] == want and r["momentum"] == len(list(model.parameters()))
        assert r["report"]["optimizer"] == "restored"
