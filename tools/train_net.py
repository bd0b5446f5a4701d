#!/usr/bin/env python
"""Train or evaluate Faster R-CNN with d2_efficient_ckpt, in detectron2's conventions.

Examples:
    python tools/train_net.py --config-file configs/toy/faster_rcnn_R18_FPN_toy.yaml
    python tools/train_net.py --config-file configs/toy/faster_rcnn_R18_FPN_toy.yaml --resume
    python tools/train_net.py --config-file configs/toy/faster_rcnn_R18_FPN_toy.yaml \
        --eval-only MODEL.WEIGHTS output/toy/model_final.pth
    python tools/train_net.py --num-gpus 8 --config-file configs/faster_rcnn_R50_FPN_custom.yaml
    python tools/train_net.py --num-gpus 2 --config-file configs/toy/faster_rcnn_R18_FPN_toy.yaml \
        MODEL.DEVICE cpu   # two processes over gloo
"""

import logging
import multiprocessing
import os
import signal
import sys

import detectron2.utils.comm as comm
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils.logger import setup_logger

from d2_efficient_ckpt import build_checkpointer
from d2_efficient_ckpt.checkpoint.build import checkpoint_dir
from d2_efficient_ckpt.checkpoint.errors import CheckpointConfigError
from d2_efficient_ckpt.checkpoint.storage.registry import is_remote, store_for
from d2_efficient_ckpt.config_utils import load_config
from d2_efficient_ckpt.data import prepare_datasets
from d2_efficient_ckpt.engine import Trainer
from d2_efficient_ckpt.engine.save_hooks import PREEMPTED_EXIT_CODE
from d2_efficient_ckpt.errors import (
    EXIT_BAD_INPUT,
    USER_ERRORS,
    error_message,
    exit_on_user_error,
    print_error,
)


def check_checkpoint_dir(cfg, args) -> str:
    """``checkpoint_dir(cfg)``; for a store's URL, also that its bucket is there and these
    credentials reach it, so that a typo fails now, not at the first checkpoint (after
    SOLVER.CHECKPOINT_PERIOD iterations). Evaluation without --resume never uses it."""
    directory = checkpoint_dir(cfg)  # a URL as OUTPUT_DIR is refused here
    if is_remote(directory) and (args.resume or not args.eval_only):
        try:
            store_for(directory).makedirs(directory)  # the bucket, checked (one request)
        except FileNotFoundError:  # a store that answers a HEAD of a bucket with a bare 404
            bucket = directory.split("://", 1)[1].split("/", 1)[0]
            raise CheckpointConfigError(
                f"The bucket '{bucket}' of CHECKPOINT.DIR {directory} does not exist. Create "
                "it first, or fix CHECKPOINT.DIR. Nothing was written."
            ) from None
    return directory


def setup(args):
    """Create the config and register the datasets it declares, in this process."""
    cfg = load_config(args.config_file, args.opts)
    check_checkpoint_dir(cfg, args)  # before default_setup writes to OUTPUT_DIR
    setup_logger(name="d2_efficient_ckpt", distributed_rank=comm.get_rank())
    # Registration happens here, inside each launched worker, so every process sees the
    # datasets before models and loaders are built.
    prepare_datasets(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        build_checkpointer(cfg, model, save_dir=checkpoint_dir(cfg)).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    if args.resume:
        logging.getLogger("detectron2").info(
            f"Training continues at iteration {trainer.start_iter} of {trainer.max_iter}."
        )
    return trainer.train()


def _spawns_workers(args) -> bool:
    return args.num_gpus * args.num_machines > 1


def _main_and_cleanup(args):
    try:
        return main(args)
    except USER_ERRORS as e:
        if not _spawns_workers(args):
            raise  # this process reports it, through exit_on_user_error
        # A spawned worker prints the error line itself; its exit status tells the launcher.
        print_error(error_message(e))
        sys.exit(EXIT_BAD_INPUT)
    finally:
        # A worker that exits with a live process group can abort at interpreter exit.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _preflight(args):
    # Config and dataset mistakes surface here, in the launching process, as one clear
    # error line instead of a traceback from inside a spawned worker.
    cfg = load_config(args.config_file, args.opts)
    check_checkpoint_dir(cfg, args)
    prepare_datasets(cfg)
    if str(cfg.MODEL.DEVICE).startswith("cpu"):
        # launch() picks NCCL and one GPU per process whenever it sees a GPU; CPU training
        # wants gloo and any number of processes, so the workers see none.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # A preemption signal to this launching process (a container's stop reaches only the
    # first process) goes on to the workers instead of ending it: they checkpoint and exit
    # with status 75, and so does this process.
    for name in cfg.CHECKPOINT.SAVE.ON_SIGNAL:
        sig = getattr(signal, str(name).upper(), None)
        if isinstance(sig, signal.Signals):
            signal.signal(sig, _forward_to_workers)


def _forward_to_workers(signum, frame):
    for child in multiprocessing.active_children():
        os.kill(child.pid, signum)


def _launch(args):
    try:
        return launch(
            _main_and_cleanup,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except mp.ProcessExitedException as e:
        if e.exit_code == EXIT_BAD_INPUT:  # a worker stopped on bad input and said why
            sys.exit(EXIT_BAD_INPUT)
        if e.exit_code == PREEMPTED_EXIT_CODE:  # checkpointed on a signal; --resume continues
            sys.exit(PREEMPTED_EXIT_CODE)
        raise


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    if _spawns_workers(args):
        exit_on_user_error(_preflight, args)
    # Bad input exits 2 after one error line; anything else is a bug: traceback, exit 3.
    exit_on_user_error(_launch, args)
