"""Test data for tests/eval: real-looking clips from scikit-image's sample photographs, noise, tiny model sizes."""

from __future__ import annotations

import numpy as np

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
NUM_LABELS = 64  # ≥ 52: 50-way needs 49 drawn classes besides the 3 true ones


def _square(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    side = min(image.shape[:2])
    return np.asarray(Image.fromarray(image[:side, :side, :3]).resize((size, size), Image.BILINEAR))


def sample_images(size: int = 64) -> list[np.ndarray]:
    """Seven scikit-image sample photographs as ``(size, size, 3)`` uint8."""
    from skimage import data

    images = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.camera(), data.coins(), data.cat()]
    return [_square(image, size) for image in images]


def real_clips(n_frames: int = 4, size: int = 48, shift: int = 4) -> np.ndarray:
    """``(7, n_frames, size, size, 3)`` uint8: a slow diagonal pan over each sample image."""
    clips = []
    for image in sample_images(size + shift * n_frames):
        clips.append(
            np.stack([image[i * shift : i * shift + size, i * shift : i * shift + size] for i in range(n_frames)])
        )
    return np.stack(clips)


def noisy(videos: np.ndarray, amplitude: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(videos.astype(np.int16) + rng.integers(-amplitude, amplitude + 1, videos.shape), 0, 255).astype(
        np.uint8
    )


def simulated_clips(n_clips: int, n_classes: int, n_frames: int = 4, size: int = 32, seed: int = 0):
    """Clips whose class sets their content: a per-class random 4×4 colour pattern (the same for every ``seed``),
    upsampled, drifting a pixel per frame, plus noise; ``seed`` draws the class order and the noise.
    Returns ``(clips (n, F, size, size, 3) uint8, labels (n,) int)``."""
    patterns = np.random.default_rng(1234).integers(0, 256, (n_classes, 4, 4, 3))
    patterns = patterns.repeat(size // 4 + 1, axis=1).repeat(size // 4 + 1, axis=2)
    labels = np.random.default_rng(seed).permutation(np.arange(n_clips) % n_classes)
    clips = np.stack([[np.roll(patterns[c], f, axis=1)[:size, :size] for f in range(n_frames)] for c in labels])
    return noisy(clips.astype(np.uint8), 40, seed + 1), labels
