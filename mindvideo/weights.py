"""One component folder: ``config.json`` and a weight file (safetensors, ``.bin`` or ``.pth``), read and written.

Every problem with a folder raises :class:`MindVideoError` naming the file and, for weights, the key.

Integrity: a folder we write also holds ``weights.sha256``, one ``<sha256 hex>  <file name>`` line per weight file
(the format of ``sha256sum``, so ``sha256sum -c weights.sha256`` checks it by hand). Loading verifies a weight file
against it when the folder has one and lists the file (:func:`verify_checksum`; ``--no-verify-weights`` /
:func:`verification` turn that off for huge files); folders without it (the reference layout, diffusers folders)
load unverified, silently. Independently, every loaded tensor must be finite: a NaN or infinity is refused naming
the tensor and the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from mindvideo.errors import MindVideoError
from mindvideo.fsutil import atomic_folder

log = logging.getLogger(__name__)

CHECKSUMS = "weights.sha256"
_VERIFY = {"checksums": True}

WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "model.pth",
    "diffusion_pytorch_model.bin",
    "model.bin",
    "pytorch_model.bin",
)


def find_weights(folder: Path) -> Path:
    """The weight file of a component folder, preferring safetensors."""
    if not folder.is_dir():
        raise MindVideoError(f"expected a checkpoint folder at {folder}", "no such folder", "check the path")
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise MindVideoError(
        f"expected a weight file ({', '.join(WEIGHT_NAMES)}) in {folder}",
        f"{sorted(p.name for p in folder.iterdir())}",
        "copy the component's weights into that folder",
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors / torch pickle file; unwraps a top-level ``"model"`` or ``"state_dict"`` key.

    The file is checked against its folder's ``weights.sha256`` first (when present) and every floating tensor
    must be finite."""
    verify_checksum(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _torch_load(path)
    except MindVideoError:
        raise
    except Exception as exc:  # corrupt / truncated / not a checkpoint: all the user's to fix
        raise MindVideoError(
            f"expected a readable weight file at {path}",
            f"{type(exc).__name__}: {_one_line(exc)}",
            "re-download or re-save the checkpoint",
        ) from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MindVideoError(f"expected a state dict of tensors in {path}", type(state).__name__, "re-save it")
    check_finite(state, path)
    return state


# classes a reference checkpoint may pickle beside its tensors that are plain attribute holders (no code runs when
# they are unpickled), so torch's weights-only unpickler may build them
SAFE_EXTRA_GLOBALS = ("argparse.Namespace",)


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``; a file that also pickles the training arguments (``argparse.Namespace``,
    as MAE-style reference checkpoints do) is loaded with that one class allowed. Any other pickled class is
    refused: unpickling it could run code."""
    import argparse
    import pickle

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        unsafe = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))))
    other = [name for name in unsafe if name not in SAFE_EXTRA_GLOBALS]
    if other:
        raise MindVideoError(
            f"expected only tensors (and argparse.Namespace) pickled in {path}",
            f"pickled {', '.join(other[:3])}{' …' if len(other) > 3 else ''}, which loading would have to execute",
            "if you trust the file, re-save its state dict alone: torch.save(torch.load(PATH, weights_only=False)"
            "['model'], PATH)",
        )
    log.info("%s also pickles %s (its training arguments): allowed, they hold only values", path, ", ".join(unsafe))
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_finite(state: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse NaN / infinite values in any floating tensor, naming the first such tensor."""
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            bad = int(value.numel() - torch.isfinite(value).sum()) if value.numel() else 0
            if bad:
                raise MindVideoError(
                    f"expected finite weights in {source}",
                    f"{bad} NaN/inf values in tensor {key!r} {tuple(value.shape)}",
                    "the checkpoint is damaged (e.g. a diverged training step): use an earlier or re-downloaded one",
                )


def check_module_finite(model: nn.Module, source: Path) -> None:
    """:func:`check_finite` over a loaded module's parameters and buffers (models loaded by other libraries)."""
    check_finite(dict(model.state_dict()), source)


# --------------------------------------------------------------------------------------------------- checksums


@contextlib.contextmanager
def verification(checksums: bool) -> Iterator[None]:
    """Within the block, verify weight files against ``weights.sha256`` (``True``, the default) or not."""
    before = _VERIFY["checksums"]
    _VERIFY["checksums"] = checksums
    try:
        yield
    finally:
        _VERIFY["checksums"] = before


def set_verification(checksums: bool) -> None:
    """Turn checksum verification on or off for this process (the CLI's ``--no-verify-weights``)."""
    _VERIFY["checksums"] = checksums


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: str | Path) -> Path | None:
    """Write ``folder/weights.sha256`` for the weight files in ``folder`` (``*.safetensors``, ``*.bin``, ``*.pth``);
    returns its path (``None`` when there is no weight file)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pth"))
    if not files:
        return None
    lines = "".join(f"{file_sha256(p)}  {p.name}\n" for p in files)
    (folder / CHECKSUMS).write_text(lines, encoding="utf-8")
    return folder / CHECKSUMS


def read_checksums(folder: Path) -> dict[str, str]:
    """File name → sha256 from ``folder/weights.sha256`` ({} without one)."""
    path = folder / CHECKSUMS
    if not path.is_file():
        return {}
    sums = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line.strip())
        if not line.strip():
            continue
        if match is None:
            raise MindVideoError(
                f"expected '<sha256>  <file>' lines in {path}",
                f"line {number}: {line[:80]!r}",
                "re-save the checkpoint, or delete the file to load without verification",
            )
        sums[match.group(2)] = match.group(1).lower()
    return sums


def verify_checksum(path: Path, found: str | None = None) -> None:
    """Compare a weight file (or its already computed sha256 ``found``) with its entry in the folder's
    ``weights.sha256`` (nothing to do without one, or when verification is off)."""
    if not _VERIFY["checksums"]:
        return
    expected = read_checksums(path.parent).get(path.name)
    if expected is None:
        return
    found = found or file_sha256(path)
    if found != expected:
        raise MindVideoError(
            f"expected {path} to match its sha256 in {CHECKSUMS} ({expected[:16]}…)",
            f"{found[:16]}… (the file changed or is damaged)",
            "re-download or re-save the checkpoint (--no-verify-weights loads it unchecked)",
        )
    log.debug("%s: sha256 verified", path)


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: Path, optional: tuple[str, ...] = ()) -> None:
    """Copy ``state`` into ``model``; keys containing any of ``optional`` may be missing (kept at init)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not any(o in k for o in optional)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"missing keys {missing[:5]}{' …' if len(missing) > 5 else ''}")
        if unexpected:
            detail.append(f"unexpected keys {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
        raise MindVideoError(
            f"expected the weights in {source} to fit {type(model).__name__}",
            "; ".join(detail),
            "check that config.json belongs to these weights",
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise MindVideoError(
                f"expected {key} in {source} to have shape {tuple(own[key].shape)}",
                f"{tuple(value.shape)}",
                "check config.json (num_voxels, channels, heads)",
            )
    model.load_state_dict({**own, **state})


def save_component(model: nn.Module, path: str | Path) -> None:
    """``config.json`` (``model.config``) + ``diffusion_pytorch_model.safetensors``, written atomically."""
    from safetensors.torch import save_file

    with atomic_folder(path) as tmp:
        config = {"_class_name": type(model).__name__, **model.config.to_dict()}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        write_checksums(tmp)
