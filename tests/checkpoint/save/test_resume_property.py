"""The resume rule and retention as properties over random histories of one output folder.

A history is a random sequence of saves (periodic, ``model_final``, ``model_best``), real
kills at exact points of a save (a forked writer dies there, as under SIGKILL), restarts
with and without ``--resume`` (a new run in the same folder), changes of format, checkpoint
period and ``MAX_TO_KEEP`` between processes, and files dropped into the folder by others
(a user's backup, another job's checkpoint). After every restart:

* a resume continues from the newest *finished* save in the folder (its content as it is
  now under that name); with no finished save, from nothing or from a complete file;
* no temporary file with content survives the restart's clean-up;
* no file was ever deleted that the deleting run did not write itself, and no one else's
  file is gone.

The checkpointer, the saver and the files are real; the model is two small linear layers so
that a history of a dozen saves runs in a fraction of a second.
"""

import os
import shutil
import tempfile

import torch
from detectron2.config import get_cfg
from hypothesis import given, settings
from hypothesis import strategies as st

from d2_efficient_ckpt import build_checkpointer
from d2_efficient_ckpt.checkpoint.save import read_record
from d2_efficient_ckpt.checkpoint.save import saver as saver_module
from d2_efficient_ckpt.checkpoint.save import write as write_module
from d2_efficient_ckpt.checkpoint.save.integrity import IntegrityError
from d2_efficient_ckpt.checkpoint.storage import atomic as atomic_module
from d2_efficient_ckpt.checkpoint.storage.atomic import is_temp_file
from d2_efficient_ckpt.checkpoint.storage.local import LocalStore
from d2_efficient_ckpt.config import add_efficient_ckpt_config
from tests.helpers.faults import killed_at

# Where a save dies, by the call it is making (module, function, which call).
KILLS = {
    "written": (atomic_module.os, "fsync", 1),  # the temporary file is complete, not renamed
    "renamed": (write_module, "write_record", 1),  # the file has its name, no record yet
    "recorded": (saver_module, "write_tag", 1),  # file and record, the tag not moved
    # Atomic writes of the record (1st), the run file (2nd), then the tag (3rd).
    "run_file": (LocalStore, "write_bytes", 3),  # the run file moved, the tag not
    "pruning": (saver_module, "remove_checkpoint", 1),  # tagged; before MAX_TO_KEEP
}
FINISHED_KILLS = {None, "pruning"}  # a save is finished once last_checkpoint names it
FOREIGN = ["backup_0000001.pth", "otherjob_0000000.pth", "converted.safetensors"]

_save = st.tuples(
    st.just("save"),
    st.sampled_from(["periodic", "periodic", "periodic", "final", "best"]),
    st.sampled_from([None] * 8 + list(KILLS)),  # most saves finish
)
_restart = st.tuples(
    st.just("restart"),
    st.booleans(),  # --resume
    st.sampled_from(["pth", "safetensors"]),  # CHECKPOINT.SAVE.FORMAT
    st.integers(1, 3),  # SOLVER.CHECKPOINT_PERIOD
    st.integers(0, 3),  # CHECKPOINT.SAVE.MAX_TO_KEEP
)
_foreign = st.tuples(st.just("foreign"), st.sampled_from(FOREIGN))
# Saves are most of a history; restarts come every few saves.
_op = st.integers(0, 9).flatmap(lambda i: _save if i < 6 else _restart if i < 9 else _foreign)
_ops = st.lists(_op, min_size=6, max_size=30)


class Folder:
    """One output folder, the process training in it, and what the test knows of both."""

    def __init__(self, directory):
        self.dir = directory
        self.period = 1
        self.ck = None  # the live process's checkpointer; None after a kill
        self.iteration = 0
        self.token = 0
        self.contents = {}  # checkpoint name -> token of the save whose bytes it holds
        self.finished = None  # name of the newest finished save
        self.foreign = set()
        self.model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))

    def start(self, resume, fmt="pth", period=1, keep=0):
        cfg = add_efficient_ckpt_config(get_cfg())
        cfg.OUTPUT_DIR = self.dir
        cfg.CHECKPOINT.SAVE.FORMAT = fmt
        cfg.CHECKPOINT.SAVE.MAX_TO_KEEP = keep
        self.period = period
        opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.ck = build_checkpointer(cfg, self.model, self.dir, optimizer=opt)
        extra = self.ck.resume_or_load("", resume=resume)
        if not resume:
            self.iteration = period - 1
            return
        if self.finished is not None:
            assert extra.get("token") == self.contents[self.finished], (extra, self.finished)
        elif extra:  # nothing finished: only a complete file of the killed run can be taken
            assert extra["token"] in self.contents.values()
        self.iteration = extra.get("iteration", -1) + period
        self._no_live_temp_files()  # a resume, or the first save, removes the dead ones

    def save(self, kind, kill):
        if self.ck is None:
            self.start(True)
        name = {"periodic": f"model_{self.iteration:07d}", "final": "model_final"}.get(
            kind, "model_best"
        )
        self.token += 1
        token, suffix = self.token, self.ck.saver.options.suffix
        before = self._owners()

        def save():
            self.ck.save(name, iteration=self.iteration, token=token)

        if kill is None:
            save()
            died = False
        else:
            module, attr, nth = KILLS[kill]
            died = killed_at(save, module, attr, nth)
        if not died or kill != "written":
            self.contents[name + suffix] = token
        if not died or kill in FINISHED_KILLS:
            self.finished = name + suffix
        if died:
            self.ck = None
        else:
            self.iteration += self.period
            self._no_live_temp_files()
        self._check_deletions(before, name + suffix)

    def drop_foreign(self, name):
        with open(os.path.join(self.dir, name), "wb") as f:
            f.write(b"someone else's file")
        self.foreign.add(name)

    def _owners(self):
        out = {}
        for n in os.listdir(self.dir):
            if n.endswith((".pth", ".safetensors")) and not is_temp_file(n):
                try:
                    record = read_record(os.path.join(self.dir, n))
                except IntegrityError:
                    record = None
                out[n] = record.run if record is not None else ""
        return out

    def _check_deletions(self, before, saved):
        now = set(os.listdir(self.dir))
        assert self.foreign <= now
        record = read_record(os.path.join(self.dir, saved)) if saved in now else None
        deleter = record.run if record is not None else None
        for name, owner in before.items():
            if name not in now:  # deleted by this save's retention: its own run's file only
                assert owner and owner == deleter, (name, owner, deleter)
                self.contents.pop(name, None)

    def _no_live_temp_files(self):
        for n in os.listdir(self.dir):
            if is_temp_file(n):
                assert os.path.getsize(os.path.join(self.dir, n)) == 0, n


@settings(max_examples=100)
@given(ops=_ops)
def test_resume_continues_the_newest_finished_save_and_deletes_only_its_own(ops):
    directory = tempfile.mkdtemp(prefix="history_")
    try:
        folder = Folder(directory)
        for op in ops:
            if op[0] == "save":
                folder.save(op[1], op[2])
            elif op[0] == "restart":
                folder.start(*op[1:])
            else:
                folder.drop_foreign(op[1])
        folder.start(True)  # the end of every history: one more --resume
    finally:
        shutil.rmtree(directory, ignore_errors=True)
