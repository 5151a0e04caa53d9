"""``python -m mindvideo.train <stage> …`` — the ``mindvideo train`` group as a module, for torchrun::

torchrun --nproc_per_node 2 -m mindvideo.train mbm --preset demo --data prepared/ --out runs/mbm
"""

from __future__ import annotations

import logging
import os
import sys

from mindvideo.cli.train import train

if __name__ == "__main__":
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    train(prog_name="python -m mindvideo.train")
