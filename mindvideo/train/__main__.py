"""``python -m mindvideo.train <stage> …``, the same as ``mindvideo train <stage> …``, e.g. for torchrun::

    torchrun --nproc_per_node 2 -m mindvideo.train mbm --preset demo --data prepared/ --out runs/mbm

An entry point only: no library module imports it, so the training library does not depend on the CLI.
"""

from __future__ import annotations

import sys

from mindvideo.cli import main

if __name__ == "__main__":
    main(args=["train", *sys.argv[1:]], prog_name="mindvideo")
