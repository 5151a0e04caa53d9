"""The ``mindvideo`` command line. Commands only wrap library functions.

User mistakes raise :class:`~mindvideo.errors.MindVideoError` in the library; :class:`~mindvideo.cli.group.Group`
turns them into one line on stderr and exit code 2 (no traceback). Command groups live in sibling modules.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from mindvideo.cli import core
from mindvideo.cli.bench import bench
from mindvideo.cli.data import data
from mindvideo.cli.eval import eval_command
from mindvideo.cli.explain import explain
from mindvideo.cli.export import export
from mindvideo.cli.group import Group, add_weight_verification
from mindvideo.cli.stream import stream
from mindvideo.cli.train import train


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mindvideo")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """mindvideo: reconstruct the video a person watched from their fMRI (MinD-Video), fast.

    \b
    Example:
      mindvideo demo --out demo_out/
      mindvideo generate --checkpoint CKPT --fmri window.npy --out clip.mp4
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if verbose == 0:  # keep the libraries' advisory warnings out of the CLI's output
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


for _command in [*core.COMMANDS, bench, data, eval_command, explain, export, stream, train]:
    main.add_command(_command)
add_weight_verification(main)
