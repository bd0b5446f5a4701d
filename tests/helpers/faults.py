"""Faults the tests inject: a flipped byte, a full disk, a process killed at a chosen call."""

import errno
import os
import traceback

import torch

KILLED = 77


def flip_byte(path, offset_from_end=4096):
    """Flip one bit in the file's tensor data (size unchanged)."""
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, 2)
        b = f.read(1)
        f.seek(-offset_from_end, 2)
        f.write(bytes([b[0] ^ 0x10]))


def perturb(model):
    """Change every weight, so that a load visibly restores something."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)


def killed_at(fn, module, attr, nth=1):
    """Run ``fn()`` in a forked child that is killed the moment it calls ``module.attr``.

    The child dies with ``os._exit`` (no clean-up, no exit handlers), as under SIGKILL, and
    leaves the files exactly as they were at that call. Returns True if the kill happened,
    False if ``fn`` returned without reaching the call.

    Args:
        nth: the call that kills; the ones before it run as usual.
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            real, calls = getattr(module, attr), [0]

            def kill(*args, **kwargs):
                calls[0] += 1
                if calls[0] >= nth:
                    os._exit(KILLED)
                return real(*args, **kwargs)

            setattr(module, attr, kill)
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, KILLED), status
    return os.WEXITSTATUS(status) == KILLED


class FullDisk:
    """An ``open`` whose files accept ``room`` bytes, then fail as a full disk does."""

    def __init__(self, room):
        self.room = room

    def __call__(self, path, mode):
        f = open(path, mode)
        room = [self.room]
        write = f.write

        def limited(data):
            n = memoryview(data).nbytes
            if n > room[0]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            room[0] -= n
            return write(data)

        f.write = limited
        return f
