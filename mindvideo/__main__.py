"""``python -m mindvideo …``: the ``mindvideo`` command as a module, e.g. for torchrun::

    torchrun --nproc_per_node 2 -m mindvideo train mbm --preset demo --data prepared/ --out runs/mbm
"""

from __future__ import annotations

from mindvideo.cli import main

if __name__ == "__main__":
    main(prog_name="mindvideo")
