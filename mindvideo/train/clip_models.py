"""CLIP for training: a local ``transformers`` CLIP folder as frozen feature extractor, our tiny CLIP-like pair, and
the symmetric InfoNCE loss.

* :class:`LocalCLIP` loads a folder saved with ``save_pretrained`` — a full ``CLIPModel`` (e.g. ViT-L/14, whose
  text tower is SD-1.5's text encoder) or a text-only ``CLIPTextModel`` such as ``SD-1.5/text_encoder`` with its
  tokenizer in the folder or in a sibling ``tokenizer/``. Nothing is downloaded.
* :func:`build_tiny_clip` makes the small image/text pair we train on simulated frames and captions: a
  ``CLIPModel`` with a word-level tokenizer built from the captions, saved in the same folder format, so the later
  stages treat it exactly like a real CLIP.
* :func:`info_nce` is CLIP's symmetric contrastive loss (Radford et al. 2021, eq. in Fig. 3) with a learned
  temperature, over the batch gathered from every rank.

Image preprocessing runs in torch on uint8 frames (resize shortest edge, centre crop, normalise with the folder's
mean/std), which is what ``CLIPImageProcessor`` does up to the resampling filter.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mindvideo.errors import MindVideoError
from mindvideo.train.distributed import gather_with_grad

log = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL = ("<pad>", "<unk>", "<bos>", "<eos>")


class LocalCLIP(nn.Module):
    """Frozen CLIP towers from a local folder: text hidden states (the UNet condition), projected text and image
    embeddings (the contrastive targets)."""

    def __init__(
        self,
        tokenizer: Any,
        text_model: nn.Module,
        text_projection: nn.Module | None,
        vision_model: nn.Module | None,
        visual_projection: nn.Module | None,
        image: dict[str, Any],
    ):
        super().__init__()
        self.tokenizer, self.image = tokenizer, image
        self.text_model, self.text_projection = text_model, text_projection
        self.vision_model, self.visual_projection = vision_model, visual_projection
        self.requires_grad_(False).eval()

    @classmethod
    def from_folder(cls, path: str | Path) -> LocalCLIP:
        from transformers import CLIPModel, CLIPTextModel

        folder = Path(path)
        config = _config(folder)
        tokenizer = _tokenizer(folder)
        if config.get("model_type") == "clip":
            model = _load(CLIPModel, folder)
            image = image_settings(folder, model.config.vision_config.image_size)
            return cls(
                tokenizer, model.text_model, model.text_projection, model.vision_model, model.visual_projection, image
            )
        if config.get("model_type") == "clip_text_model":
            text = _load(CLIPTextModel, folder)
            return cls(tokenizer, getattr(text, "text_model", text), None, None, None, {})  # transformers 4 | 5
        raise MindVideoError(
            f"expected a CLIPModel or CLIPTextModel folder at {folder}",
            f"model_type {config.get('model_type')!r}",
            "pass a folder saved with transformers' save_pretrained (e.g. SD-1.5's text_encoder/)",
        )

    @property
    def hidden_size(self) -> int:
        return int(self.text_model.config.hidden_size)

    @property
    def projection_dim(self) -> int:
        if self.visual_projection is None:
            raise MindVideoError("expected a CLIPModel with an image tower", "a text-only model", "pass a CLIPModel")
        return int(self.visual_projection.out_features)

    @property
    def max_length(self) -> int:
        return int(min(self.tokenizer.model_max_length, self.text_model.config.max_position_embeddings))

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """Padded to ``max_length`` as SD does (the UNet sees every position, padding included)."""
        return self.tokenizer(
            list(captions), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )

    @torch.no_grad()
    def text_states(self, captions: list[str], batch: int = 64) -> torch.Tensor:
        """Last hidden states ``(N, max_length, hidden)`` — SD's text condition."""
        out = []
        for s in range(0, len(captions), batch):
            tokens = self.tokenize(captions[s : s + batch])
            out.append(self.text_model(input_ids=tokens["input_ids"]).last_hidden_state.float())
        return torch.cat(out)

    @torch.no_grad()
    def text_embeds(self, captions: list[str], batch: int = 64) -> torch.Tensor:
        """Projected, L2-normalised text embeddings ``(N, P)``."""
        if self.text_projection is None:
            raise MindVideoError(
                "expected a CLIPModel with a text projection", "a text-only model", "pass a CLIPModel"
            )
        out = []
        for s in range(0, len(captions), batch):
            tokens = self.tokenize(captions[s : s + batch])
            pooled = self.text_model(**tokens).pooler_output
            out.append(F.normalize(self.text_projection(pooled).float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def image_embeds(self, frames: torch.Tensor, batch: int = 128) -> torch.Tensor:
        """uint8 frames ``(M, H, W, 3)`` → projected, L2-normalised image embeddings ``(M, P)``."""
        if self.vision_model is None:
            raise MindVideoError("expected a CLIPModel with an image tower", "a text-only model", "pass a CLIPModel")
        out = []
        for s in range(0, len(frames), batch):
            pixels = preprocess(frames[s : s + batch], self.image)
            pooled = self.vision_model(pixel_values=pixels).pooler_output
            out.append(F.normalize(self.visual_projection(pooled).float(), dim=-1))
        return torch.cat(out)


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise MindVideoError(
            f"expected a CLIP folder (config.json + weights) at {folder}",
            "no config.json" if folder.is_dir() else "no such folder",
            "save the model with transformers' save_pretrained, or train ours with `mindvideo train clip`",
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    for candidate in (folder, folder.parent / "tokenizer"):
        if (candidate / "tokenizer_config.json").is_file():
            return _load(AutoTokenizer, candidate)
    raise MindVideoError(
        f"expected a tokenizer in {folder} or {folder.parent / 'tokenizer'}", "none", "save it with save_pretrained"
    )


def _load(cls: Any, folder: Path) -> Any:
    try:
        return cls.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # corrupt weights, wrong architecture: the user's to fix
        raise MindVideoError(
            f"expected a loadable {cls.__name__} in {folder}", f"{type(exc).__name__}: {exc}", "re-save it"
        ) from None


def image_settings(folder: Path | None, image_size: int) -> dict[str, Any]:
    """Resize/crop size and normalisation from ``folder/preprocessor_config.json`` (CLIP's defaults without one)."""
    path = None if folder is None else folder / "preprocessor_config.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path is not None and path.is_file() else {}
    size = data.get("size", {"shortest_edge": image_size})
    crop = data.get("crop_size", {"height": image_size, "width": image_size})
    return {
        "size": int(size.get("shortest_edge", image_size)) if isinstance(size, dict) else int(size),
        "crop": int(crop.get("height", image_size)) if isinstance(crop, dict) else int(crop),
        "mean": tuple(data.get("image_mean", OPENAI_MEAN)),
        "std": tuple(data.get("image_std", OPENAI_STD)),
    }


def preprocess(frames: torch.Tensor, image: dict[str, Any]) -> torch.Tensor:
    """uint8 ``(M, H, W, 3)`` → normalised ``(M, 3, crop, crop)`` float32 (resize shortest edge, centre crop)."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0  # (M, 3, H, W)
    h, w = x.shape[-2:]
    scale = image["size"] / min(h, w)
    if scale != 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (x.shape[-2] - image["crop"]) // 2, (x.shape[-1] - image["crop"]) // 2
    x = x[..., top : top + image["crop"], left : left + image["crop"]]
    mean = torch.tensor(image["mean"], device=x.device)[:, None, None]
    std = torch.tensor(image["std"], device=x.device)[:, None, None]
    return (x - mean) / std


# --------------------------------------------------------------------------------------------------- our tiny pair


def words(caption: str) -> list[str]:
    """The word-level tokenizer's pre-tokenisation: lower case, words and punctuation marks."""
    return re.findall(r"\w+|[^\w\s]", caption.lower())


def build_tokenizer(captions: list[str], max_length: int):
    """A word-level ``PreTrainedTokenizerFast`` over the captions' vocabulary: ``<bos> words <eos> <pad>…``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL)}
    for caption in captions:
        for word in words(caption):
            vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=max_length,
    )


def build_tiny_clip(captions: list[str], settings: dict[str, Any], max_length: int, seed: int = 0):
    """A randomly initialised ``CLIPModel`` (``settings``: ``text_config``, ``vision_config``, ``projection_dim``)
    and its word-level tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = build_tokenizer(captions, max_length)
    ids = {k: tokenizer.convert_tokens_to_ids(f"<{k}>") for k in ("pad", "bos", "eos")}
    text = {
        **settings.get("text_config", {}),
        "vocab_size": len(tokenizer),
        "max_position_embeddings": max_length,
        "pad_token_id": ids["pad"],
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
    }
    config = CLIPConfig(
        text_config=text,
        vision_config=settings.get("vision_config", {}),
        projection_dim=settings.get("projection_dim", 512),
    )
    torch.manual_seed(seed)
    return CLIPModel(config), tokenizer


def save_clip(model: nn.Module, tokenizer: Any, folder: Path, image_size: int) -> None:
    """``save_pretrained`` of model and tokenizer plus a ``preprocessor_config.json`` (no resize needed for frames
    of ``image_size``)."""
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    processor = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_normalize": True,
        "image_mean": list(OPENAI_MEAN),
        "image_std": list(OPENAI_STD),
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "resample": 3,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------- loss


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, max_scale: float = 100.0) -> torch.Tensor:
    """Symmetric InfoNCE of L2-normalised ``a`` (B, P) against ``b`` (B, P), matching rows positive.

    Both are gathered over ranks first (with gradient), so the loss is the global-batch loss on every rank; the
    temperature is ``1 / exp(logit_scale)``, capped at ``max_scale`` as in CLIP."""
    a, b = gather_with_grad(a), gather_with_grad(b)
    logits = logit_scale.exp().clamp(max=max_scale) * a @ b.T  # (B, B)
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
