"""Real files to damage and the damage done to them, shared by the fuzz tests."""

import random

import torch
import torch.nn as nn


def training_state():
    """A small model after one SGD-momentum step, and its optimizer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return model, opt


def mutate(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one random damage: bytes flipped, cut, a chunk repeated or overwritten."""
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:  # flip a few bytes
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # truncate
        data = data[: rng.randrange(len(data))]
    elif kind == 2:  # duplicate a chunk somewhere
        a = rng.randrange(len(data))
        chunk = data[a : a + rng.randint(1, 64)]
        b = rng.randrange(len(data))
        data[b:b] = chunk
    else:  # overwrite a run with one byte value
        a = rng.randrange(len(data))
        data[a : a + rng.randint(1, 32)] = bytes([rng.randrange(256)]) * rng.randint(1, 32)
    return bytes(data)
