"""Training configs: one dataclass per stage, nested component configs, a strict JSON round trip and presets.

A stage config holds the shared optimisation and engineering settings (:class:`TrainConfig`, key ``train``), the
stage's own settings and, where it builds a network, that network's config (``encoder``: an
:class:`~mindvideo.models.FMRIEncoderConfig`, ``unet``: a :class:`~mindvideo.models.VideoUNetConfig`, ``vae``: a
diffusers ``AutoencoderKL`` keyword dict). Files carry their stage name::

    {"stage": "mbm", "train": {"steps": 500, "lr": 2.5e-4, ...}, "encoder": {...}, "mask_ratio": 0.75}

Unlike the component configs (which ignore unknown keys so reference checkpoints load), training configs are
strict: an unknown key, a value of the wrong type or an out-of-range setting raises :class:`MindVideoError` before
anything is written. ``apply_overrides`` sets dotted keys (``train.steps=10``) as the CLI's ``--set`` does.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from mindvideo.config import Config, read_json
from mindvideo.errors import MindVideoError

S = TypeVar("S", bound="StageConfig")

PRECISIONS = ("fp32", "bf16", "fp16")
# train.* keys that may change when a run is resumed or a recipe rerun: they do not change what is computed
RUN_KEYS = ("steps", "log_every", "val_every", "save_every", "keep_checkpoints", "num_workers", "threads")
STRATEGIES = ("ddp", "fsdp")


@dataclasses.dataclass
class TrainConfig(Config):
    """Optimisation and engineering settings shared by every stage.

    ``batch_size`` is the *global* batch of one optimiser step: it is split over ``grad_accum`` micro-steps and the
    ranks of a distributed run, so the same config gives the same updates on 1 or N processes.
    """

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # the cosine decays to lr · min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm; 0 switches clipping off
    ema_decay: float = 0.0  # 0 switches EMA off; exported weights are the EMA ones when on
    precision: str = "fp32"  # fp32 | bf16 (CPU or GPU autocast) | fp16 (CUDA autocast + gradient scaling)
    gradient_checkpointing: bool = False
    strategy: str = "ddp"  # ddp | fsdp (shards the UNet; UNet stages, CUDA)
    seed: int = 0
    log_every: int = 10
    val_every: int = 0  # 0: validate once, at the end
    save_every: int = 0  # 0: save a resumable checkpoint only at the end
    keep_checkpoints: int = 2
    num_workers: int = 0
    threads: int = 0  # CPU threads of this process (torch.set_num_threads); 0 keeps torch's default
    device: str = "auto"  # auto (cuda if available) | cpu | cuda

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, "train.steps ≥ 1", self.steps),
            (
                self.batch_size >= 1 and self.grad_accum >= 1,
                "train.batch_size and train.grad_accum ≥ 1",
                (self.batch_size, self.grad_accum),
            ),
            (
                self.batch_size % self.grad_accum == 0,
                "train.batch_size divisible by train.grad_accum",
                (self.batch_size, self.grad_accum),
            ),
            (self.lr > 0 and self.weight_decay >= 0, "train.lr > 0 and train.weight_decay ≥ 0", self.lr),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas in [0, 1)", self.betas),
            (self.warmup_steps >= 0, "train.warmup_steps ≥ 0", self.warmup_steps),
            (0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio in [0, 1]", self.min_lr_ratio),
            (self.grad_clip >= 0, "train.grad_clip ≥ 0", self.grad_clip),
            (0 <= self.ema_decay < 1, "train.ema_decay in [0, 1)", self.ema_decay),
            (self.precision in PRECISIONS, f"train.precision among {PRECISIONS}", self.precision),
            (self.strategy in STRATEGIES, f"train.strategy among {STRATEGIES}", self.strategy),
            (self.device in ("auto", "cpu", "cuda"), "train.device auto, cpu or cuda", self.device),
            (
                min(self.log_every, self.keep_checkpoints) >= 1,
                "train.log_every, keep_checkpoints ≥ 1",
                (self.log_every, self.keep_checkpoints),
            ),
            (
                min(self.val_every, self.save_every, self.num_workers, self.threads) >= 0,
                "train.val_every, save_every, num_workers, threads ≥ 0",
                (self.val_every, self.save_every, self.num_workers, self.threads),
            ),
        ]
        check_all(checks)


def check_all(checks: list[tuple[bool, str, Any]]) -> None:
    """Raise one :class:`MindVideoError` for the first failed ``(ok, expected, found)``."""
    for ok, expected, found in checks:
        if not ok:
            raise MindVideoError(
                f"expected {expected} in the training config", repr(found), "fix the config file or the --set option"
            )


@dataclasses.dataclass
class StageConfig:
    """Base of the stage configs: strict nested JSON round trip, dotted overrides, presets.

    Subclasses set ``stage`` (the CLI name) and implement one classmethod per name in ``preset_names``: ``tiny``
    (tests: seconds), ``demo`` (the small-data recipe that trains the built-in demo model) and ``reference``
    (MinD-Video's settings at full size; paths to the pretrained networks must be set).
    """

    stage: ClassVar[str] = ""
    preset_names: ClassVar[tuple[str, ...]] = ("tiny", "demo", "reference")

    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # free-form dict fields (diffusers / transformers keyword arguments) are kept in their JSON form, so a
        # config equals itself after a round trip through a file
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, dict):
                setattr(self, field.name, json.loads(json.dumps(value)))

    def validate(self) -> None:
        """Range checks; subclasses extend (and call ``super().validate()``)."""
        self.train.validate()

    # ----------------------------------------------------------------------------------------------- round trip

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, **dataclasses.asdict(self)}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any], source: str = "the config", validate: bool = True) -> S:
        """Strict construction: unknown keys, wrong types and a foreign ``stage`` raise :class:`MindVideoError`;
        ``validate`` also checks the ranges and required inputs."""
        data = dict(data)
        stage = data.pop("stage", cls.stage)
        if stage != cls.stage:
            raise MindVideoError(
                f"expected a config of stage {cls.stage!r} in {source}",
                f"stage {stage!r}",
                f"pass a {cls.stage} config (mindvideo train {cls.stage} --print-config shows one)",
            )
        config = _build(cls, data, source, prefix="")
        if validate:
            config.validate()
        return config

    @classmethod
    def load(cls: type[S], path: str | Path) -> S:
        return cls.from_dict(read_json(path), source=str(path))

    @classmethod
    def from_preset(cls: type[S], name: str) -> S:
        if name not in cls.preset_names:
            raise MindVideoError(
                f"expected a {cls.stage} preset among {list(cls.preset_names)}", repr(name), "pick one of those"
            )
        return getattr(cls, name)()  # validated once overrides are applied (paths are often set by --set)

    def apply_overrides(self: S, overrides: dict[str, Any], validate: bool = True) -> S:
        """A new config with dotted keys set, e.g. ``{"train.steps": 10, "mask_ratio": 0.5}``."""
        data = self.to_dict()
        for key, value in overrides.items():
            node, *path = data, *key.split(".")
            for part in path[:-1]:
                if not isinstance(node.get(part), dict):
                    raise MindVideoError(f"expected a config section {part!r} in {key!r}", "none", "check the key")
                node = node[part]
            node[path[-1]] = value
        return type(self).from_dict(data, source="the overridden config", validate=validate)


# --------------------------------------------------------------------------------------------------- strict build


def _build(cls: type, data: dict[str, Any], source: str, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``: nested dataclasses recursively, values type-checked."""
    if not isinstance(data, dict):
        raise MindVideoError(f"expected an object for {prefix or 'the config'} in {source}", type(data).__name__)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise MindVideoError(
            f"expected only known keys in {prefix.rstrip('.') or 'the config'} of {source}",
            f"unknown {unknown}",
            f"known keys: {sorted(fields)}",
        )
    kwargs = {name: _value(hints[name], value, source, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise MindVideoError(f"expected a valid {prefix or 'config'} in {source}", str(exc)) from None


def _value(hint: Any, value: Any, source: str, key: str) -> Any:
    """``value`` checked against the type ``hint`` (lists become tuples where a tuple is expected)."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, source, prefix=f"{key}.")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _value(arg, value, source, key)
            except MindVideoError:
                continue
        _type_error(hint, value, source, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _type_error(hint, value, source, key)
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            _type_error(hint, value, source, key)
        return tuple(_value(a, v, source, key) for a, v in zip(items, value))
    if origin is dict or hint is dict:
        return value if isinstance(value, dict) else _type_error(hint, value, source, key)
    if hint is Any:
        return value
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(hint, isinstance(value, hint))
    if not ok:
        _type_error(hint, value, source, key)
    return float(value) if hint is float else value


def _type_error(hint: Any, value: Any, source: str, key: str) -> typing.NoReturn:
    name = getattr(hint, "__name__", str(hint))
    raise MindVideoError(f"expected {key} to be {name} in {source}", f"{value!r}", "fix the value")


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (VALUE parsed as JSON when it is JSON, else kept as a string) → a dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MindVideoError("expected --set KEY=VALUE", repr(item), "e.g. --set train.steps=100")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out
