"""Classifiers for the n-way semantic metrics: callables from uint8 frames or clips to class probabilities.

* :func:`load_vit_classifier` — a transformers ``ViTForImageClassification`` folder (the reference uses
  ``google/vit-base-patch16-224``, ImageNet-1k) → frame classifier ``(M, H, W, 3) → (M, C)``.
* :func:`load_videomae_classifier` — a ``VideoMAEForVideoClassification`` folder (the reference uses VideoMAE-base
  fine-tuned on Kinetics-400, run with ``num_frames`` = the clip length) → video classifier
  ``(N, F, H, W, 3) → (N, C)``.
* :class:`PixelClassifier` — for simulated data: multinomial logistic regression on frames average-pooled to
  ``size × size``, trained on ground-truth frames with their known classes; saved as ``config.json`` +
  ``model.safetensors``. :class:`FrameAveragedVideoClassifier` turns any frame classifier into a video one.
* :func:`load_frame_classifier` / :func:`load_video_classifier` pick the right loader from a folder's ``config.json``.

Models load from local folders only (``local_files_only=True``); a missing or unreadable folder raises
:class:`MindVideoError`. Everything runs in float32 under ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mindvideo.errors import MindVideoError
from mindvideo.eval.metrics import progress_bar
from mindvideo.eval.semantic import FrameClassifier
from mindvideo.fsutil import atomic_folder

log = logging.getLogger(__name__)

PIXEL_FORMAT = "mindvideo-pixel-softmax"


# --------------------------------------------------------------------------------------------------- local folders


def model_config(path: str | Path, what: str, option: str) -> dict[str, Any]:
    """``config.json`` of a local model folder, or :class:`MindVideoError` saying which option to fix."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        found = "no such folder" if not folder.exists() else "no config.json in it"
        raise MindVideoError(
            f"expected a {what} folder (config.json + weights) at {folder}",
            found,
            f"pass {option} a local folder saved with save_pretrained (nothing is downloaded)",
        )
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MindVideoError(f"expected a readable config.json in {folder}", str(exc), f"fix {option}") from None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-load progress bars and info/warnings (e.g. the PIL-backend fallback notice) inside
    the block; its previous settings are restored after."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def from_pretrained(cls: type, path: str | Path, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path, local_files_only=True, **kwargs)`` with load failures as :class:`MindVideoError`."""
    try:
        with quiet_transformers():
            return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    except Exception as exc:  # corrupt weights, wrong architecture, bad config: all the user's to fix
        raise MindVideoError(
            f"expected a loadable {what} in {path}",
            f"{type(exc).__name__}: {exc}",
            "re-save it with transformers' save_pretrained",
        ) from None


def image_processor(cls: type, path: str | Path, **defaults: Any) -> Any:
    """The folder's saved image processor, or ``cls(**defaults)`` when it has none (e.g. a bare model folder)."""
    if (Path(path) / "preprocessor_config.json").is_file():
        return from_pretrained(cls, path, "image processor")
    log.info("no preprocessor_config.json in %s; using %s(%s)", path, cls.__name__, defaults)
    with quiet_transformers():
        return cls(**defaults)


def _batches(n: int, size: int, desc: str, progress: bool) -> Iterable[int]:
    return progress_bar(range(0, n, size), desc, progress)


# --------------------------------------------------------------------------------------------------- transformers


@dataclass
class ImageModelClassifier:
    """A transformers image classifier as a frame classifier: ``(M, H, W, 3)`` uint8 → ``(M, C)`` softmax."""

    model: torch.nn.Module
    processor: Any
    device: str = "cpu"
    batch_size: int = 32
    progress: bool = True

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_labels)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = []
        for s in _batches(len(frames), self.batch_size, "classify frames", self.progress):
            inputs = self.processor(images=list(frames[s : s + self.batch_size]), return_tensors="pt")
            logits = self.model(pixel_values=inputs["pixel_values"].to(self.device)).logits
            out.append(logits.float().softmax(-1).cpu())
        return torch.cat(out).double().numpy()


def load_vit_classifier(
    path: str | Path, *, device: str = "cpu", batch_size: int = 32, progress: bool = True
) -> ImageModelClassifier:
    """A local ``ViTForImageClassification`` folder as a frame classifier (preprocessing: the folder's
    ``preprocessor_config.json``, else ViT's default: resize to ``image_size``, normalise with mean = std = 0.5)."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    config = model_config(path, "ViT image classifier", "--classifier")
    size = int(config.get("image_size", 224))
    model = from_pretrained(ViTForImageClassification, path, "ViTForImageClassification").to(device).eval()
    processor = image_processor(ViTImageProcessor, path, size={"height": size, "width": size})
    return ImageModelClassifier(model, processor, device=device, batch_size=batch_size, progress=progress)


@dataclass
class VideoModelClassifier:
    """A transformers ``VideoMAEForVideoClassification`` as a video classifier: ``(N, F, H, W, 3)`` uint8 →
    ``(N, C)`` softmax. The model is instantiated with ``num_frames = F`` on first use (its position embeddings are
    fixed sin-cos, so any F divisible by the tubelet size works, as in the reference)."""

    path: Path
    processor: Any
    config: dict[str, Any]
    device: str = "cpu"
    batch_size: int = 4
    progress: bool = True
    _models: dict[int, torch.nn.Module] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.config.get("id2label") or {}) or int(self.config.get("num_labels", 2))

    def model(self, num_frames: int) -> torch.nn.Module:
        from transformers import VideoMAEForVideoClassification

        tubelet = int(self.config.get("tubelet_size", 2))
        if num_frames % tubelet:
            raise MindVideoError(
                f"expected clips with a multiple of VideoMAE's tubelet size ({tubelet}) frames",
                f"{num_frames} frames",
                "evaluate clips with an even frame count",
            )
        if num_frames not in self._models:
            model = from_pretrained(
                VideoMAEForVideoClassification, self.path, "VideoMAEForVideoClassification", num_frames=num_frames
            )
            self._models[num_frames] = model.to(self.device).eval()
        return self._models[num_frames]

    @torch.inference_mode()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        model, out = self.model(clips.shape[1]), []
        for s in _batches(len(clips), self.batch_size, "classify clips", self.progress):
            videos = [list(clip) for clip in clips[s : s + self.batch_size]]
            pixels = self.processor(videos, return_tensors="pt")["pixel_values"]  # (B, F, 3, h, w)
            out.append(model(pixel_values=pixels.to(self.device)).logits.float().softmax(-1).cpu())
        return torch.cat(out).double().numpy()


def load_videomae_classifier(
    path: str | Path, *, num_frames: int | None = None, device: str = "cpu", batch_size: int = 4, progress: bool = True
) -> VideoModelClassifier:
    """A local ``VideoMAEForVideoClassification`` folder as a video classifier, instantiated now for ``num_frames``
    (default: the config's) so a broken folder fails before any work. Preprocessing: the folder's
    ``preprocessor_config.json``, else VideoMAE's default (shortest edge → ``image_size``, centre crop, ImageNet
    mean/std)."""
    from transformers import VideoMAEImageProcessor

    config = model_config(path, "VideoMAE video classifier", "--video-classifier")
    size = int(config.get("image_size", 224))
    processor = image_processor(
        VideoMAEImageProcessor, path, size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    classifier = VideoModelClassifier(Path(path), processor, config, device, batch_size, progress)
    classifier.model(num_frames or int(config.get("num_frames", 16)))
    return classifier


# --------------------------------------------------------------------------------------------------- simulated data


def pooled_pixels(frames: np.ndarray, size: int) -> torch.Tensor:
    """``(M, H, W, 3)`` uint8 → ``(M, 3·size²)`` float32 on [0, 1]: each frame average-pooled to ``size × size``."""
    x = torch.from_numpy(np.array(frames, dtype=np.float32)).permute(0, 3, 1, 2) / 255.0  # (M, 3, H, W)
    return F.adaptive_avg_pool2d(x, size).flatten(1)


@dataclass
class PixelClassifier:
    """Multinomial logistic regression on average-pooled pixels — a frame classifier for simulated data, where the
    clip classes are known and a few thousand ground-truth frames train it in seconds.

    ``weight`` ``(C, D)``, ``bias`` ``(C,)``; features are standardised with the training ``mean`` / ``std`` ``(D,)``,
    ``D = 3·size²``.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    size: int
    class_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def fit(
        cls,
        frames: np.ndarray,
        labels: np.ndarray,
        *,
        size: int = 16,
        l2: float = 1e-3,
        max_iter: int = 200,
        class_names: list[str] | None = None,
    ) -> PixelClassifier:
        """Train on ``(M, H, W, 3)`` uint8 frames and their classes ``(M,)`` (0 … C−1): full-batch L-BFGS on the
        mean cross-entropy + ``l2``/2·‖W‖² (deterministic)."""
        labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if labels_t.ndim != 1 or len(labels_t) != len(frames) or len(frames) == 0 or labels_t.min() < 0:
            raise MindVideoError(
                "expected one class index ≥ 0 per training frame",
                f"{tuple(labels_t.shape)} labels for {len(frames)} frames",
                "pass (M,) int labels",
            )
        x = pooled_pixels(frames, size).double()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-3)
        x = (x - mean) / std
        n_classes = len(class_names) if class_names else int(labels_t.max()) + 1
        weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimiser.zero_grad()
            loss = F.cross_entropy(x @ weight.T + bias, labels_t) + 0.5 * l2 * weight.square().sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        accuracy = float(((x @ weight.T + bias).argmax(1) == labels_t).double().mean())
        log.info("pixel classifier: %d classes, %d frames, train accuracy %.3f", n_classes, len(frames), accuracy)
        return cls(weight.detach().float(), bias.detach().float(), mean.float(), std.float(), size, class_names)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(M, H, W, 3)`` uint8 → ``(M, C)`` float64 class probabilities."""
        out = []
        for s in range(0, len(frames), 256):
            x = (pooled_pixels(frames[s : s + 256], self.size) - self.mean) / self.std
            out.append((x @ self.weight.T + self.bias).softmax(-1))
        return torch.cat(out).double().numpy()

    def save(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically."""
        from safetensors.torch import save_file

        config = {
            "format": PIXEL_FORMAT,
            "size": self.size,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
        }
        tensors = {"weight": self.weight, "bias": self.bias, "mean": self.mean, "std": self.std}
        with atomic_folder(path) as tmp:
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, option: str = "--classifier") -> PixelClassifier:
        """Read a folder written by :meth:`save`."""
        from safetensors.torch import load_file

        config = model_config(path, "pixel classifier", option)
        try:
            t = load_file(str(Path(path) / "model.safetensors"))
            return cls(t["weight"], t["bias"], t["mean"], t["std"], int(config["size"]), config.get("class_names"))
        except Exception as exc:  # missing / truncated file or key
            raise MindVideoError(
                f"expected a pixel classifier's model.safetensors in {path}",
                f"{type(exc).__name__}: {exc}",
                "re-save it with PixelClassifier.save",
            ) from None


@dataclass
class FrameAveragedVideoClassifier:
    """A video classifier from a frame classifier: the mean of the frame probabilities, ``(N, F, H, W, 3)`` →
    ``(N, C)``."""

    frame_classifier: FrameClassifier

    @property
    def num_classes(self) -> int:
        return int(self.frame_classifier.num_classes)

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        n, f = clips.shape[:2]
        probs = np.asarray(self.frame_classifier(clips.reshape(n * f, *clips.shape[2:])))
        return probs.reshape(n, f, -1).mean(axis=1)


# --------------------------------------------------------------------------------------------------- dispatch


def load_frame_classifier(path: str | Path, *, device: str = "cpu", progress: bool = True) -> FrameClassifier:
    """A frame classifier from a local folder: our :class:`PixelClassifier` or a transformers ViT."""
    config = model_config(path, "frame classifier", "--classifier")
    if config.get("format") == PIXEL_FORMAT:
        return PixelClassifier.load(path)
    if config.get("model_type") == "vit":
        return load_vit_classifier(path, device=device, progress=progress)
    raise MindVideoError(
        f"expected a ViTForImageClassification or pixel classifier folder at {path}",
        f"model_type {config.get('model_type')!r}",
        "pass --classifier such a folder",
    )


def load_video_classifier(
    path: str | Path, *, num_frames: int | None = None, device: str = "cpu", progress: bool = True
) -> Any:
    """A video classifier from a local folder: a transformers VideoMAE, or a frame classifier (pixel classifier or
    ViT) averaged over frames."""
    config = model_config(path, "video classifier", "--video-classifier")
    if config.get("model_type") == "videomae":
        return load_videomae_classifier(path, num_frames=num_frames, device=device, progress=progress)
    if config.get("format") == PIXEL_FORMAT:
        return FrameAveragedVideoClassifier(PixelClassifier.load(path, "--video-classifier"))
    if config.get("model_type") == "vit":
        return FrameAveragedVideoClassifier(load_vit_classifier(path, device=device, progress=progress))
    raise MindVideoError(
        f"expected a VideoMAEForVideoClassification or frame classifier folder at {path}",
        f"model_type {config.get('model_type')!r}",
        "pass --video-classifier such a folder",
    )
