"""``python -m d2_efficient_ckpt``: the checkpoint command-line tool (see ``cli``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
