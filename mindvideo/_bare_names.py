"""Keep our top-level folders from hiding installed packages of the same name.

``kernels/``, ``export/``, ``engine/`` and ``benchmarks/`` are installed as ``mindvideo.<name>``. When Python runs
from the repository root (``python -m pytest``, ``python -c``, ``torchrun -m``) the root is on ``sys.path``, so the
folders are also importable under their bare names and would shadow a distribution of that name (transformers
imports PyPI's ``kernels``). Each folder's ``__init__`` therefore hands a bare-name import over to the installed
distribution with :func:`hand_over`. Standard library only: this runs in the middle of someone else's import.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.machinery import PathFinder


def hand_over(name: str, init_file: str) -> None:
    """Replace the module being imported as ``name`` (our folder, found through the repo root) by the installed module
    of that name, found on ``sys.path`` without the root. The import statement then returns the installed module,
    since the import system hands back whatever ``sys.modules[name]`` holds once the ``__init__`` has run."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(init_file)))
    search = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != root]
    spec = PathFinder.find_spec(name, search)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(
            f"No module named {name!r}: the folder {name}/ in {root} is part of mindvideo; "
            f"import it as mindvideo.{name}, or install the distribution that provides {name!r}",
            name=name,
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
