"""The recipe configuration: one typed source of truth, loaded from YAML with dotted overrides.

A recipe file (``configs/*.yaml``) holds the fields of :class:`RecipeConfig` plus an optional
``presets:`` mapping of named override sets (``clinkd run --preset quick``). Overrides are
``section.key=value`` strings whose values are parsed as YAML (``train.lr=1e-3``,
``model.path=null``, ``predict.max_new_tokens.VG=40``). Every error names the offending key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from clinkd.data.records import TASKS


_EXPONENT_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


class ConfigError(ValueError):
    """A recipe that does not load or validate; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SynthConfig(_Section):
    """Generate the embedded synthetic benchmark into ``data.dir`` when it is missing."""

    enabled: bool = True
    seed: int = 0
    images: int = Field(1600, gt=0, description="training images, spread over the 8 modalities")
    test_per_cell: int = Field(25, gt=0, description="test records per (task, modality)")
    image_size: int = Field(112, ge=28)


class DataConfig(_Section):
    dir: Path = Path("data/synth")
    images: Path | None = Field(None, description="image folder; default <dir>/images")
    train_file: str = "train.json"
    synth: SynthConfig = SynthConfig()
    on_error: Literal["skip", "stop"] = "skip"
    box_style: Literal["qwen2-vl", "qwen-vl"] = Field(
        "qwen2-vl", description="box/ref markup the model is trained to read and write"
    )
    train_turns: Literal["split", "multi"] = Field(
        "split", description="split: one sample per QA turn (matches the one-turn test files); multi: one per image"
    )
    max_train_samples: int | None = Field(None, gt=0)
    max_test_per_task: int | None = Field(None, gt=0)

    @property
    def images_dir(self) -> Path:
        return self.images if self.images is not None else self.dir / "images"


class ModelConfig(_Section):
    path: Path | None = Field(None, description="local checkpoint dir (Qwen2-VL, Qwen2.5-VL or clinkd); null = tiny")
    size: Literal["xs", "s", "m"] = "s"
    tokenizer_vocab: int = Field(1024, ge=300)
    min_pixels: int = Field(112 * 112, gt=0)
    max_pixels: int = Field(112 * 112, gt=0)
    square_size: int | None = Field(None, ge=28, description="resample every image to N×N (MCG-RoPE's w = h)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class TrainConfig(_Section):
    epochs: float = Field(3.0, gt=0)
    max_steps: int = Field(-1, description="overrides epochs when > 0")
    batch_size: int = Field(16, gt=0)
    grad_accum: int = Field(1, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    scheduler: Literal["cosine", "linear", "constant", "cosine_with_min_lr"] = "cosine"
    max_grad_norm: float = Field(1.0, gt=0)
    freeze_vision_tower: bool = False
    freeze_merger: bool = False
    freeze_llm: bool = False
    logging_steps: int = Field(20, gt=0)
    save_steps: int = Field(200, gt=0)
    save_total_limit: int = Field(2, gt=0)
    num_workers: int = Field(0, ge=0)
    threads: int | None = Field(None, gt=0, description="torch CPU threads; default = all cores")


class PredictConfig(_Section):
    batch_size: int = Field(32, gt=0)
    max_new_tokens: dict[str, int] = Field(default_factory=lambda: {"VG": 40, "ROC": 16, "RC": 40, "MIA": 48})
    num_beams: int = Field(1, gt=0)

    @field_validator("max_new_tokens")
    @classmethod
    def _known_tasks(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(TASKS))
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; expected {', '.join(TASKS)}")
        return value


class RecipeConfig(_Section):
    name: str = "default"
    seed: int = 0
    output_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    predict: PredictConfig = PredictConfig()

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` → ``(["train", "lr"], 0.001)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {error}") from error
    if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
    return key.strip().split("."), value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Set each dotted key in a nested dict (creating sections as needed)."""
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path[: depth + 1])} is a value, not a section (in {text!r})")
            node = child
        node[path[-1]] = value
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] = (), preset: str | None = None) -> RecipeConfig:
    """Load a recipe: file defaults, then the named preset, then the dotted overrides."""
    tree: dict = {}
    if path is not None:
        tree = _read_yaml(Path(path))
    presets = tree.pop("presets", {}) or {}
    if preset is not None:
        if preset not in presets:
            known = ", ".join(presets) or "none"
            raise ConfigError(f"preset {preset!r} is not defined in {path} (defined: {known})")
        tree = _deep_merge(tree, presets[preset])
    tree = apply_overrides(tree, list(overrides))
    return validate_tree(tree, source=str(path) if path else "defaults")


def validate_tree(tree: dict, source: str = "config") -> RecipeConfig:
    try:
        return RecipeConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(f"{source}: " + "; ".join(_describe(item) for item in error.errors())) from None


def dump_config(config: RecipeConfig) -> str:
    """The resolved recipe as YAML, loadable again with :func:`load_config`."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def preset_names(path: str | Path) -> list[str]:
    return list((_read_yaml(Path(path)).get("presets") or {}))


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: malformed YAML: {error}") from error
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(tree).__name__}")
    return tree


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(item: dict) -> str:
    key = ".".join(str(part) for part in item["loc"]) or "(root)"
    if item["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    return f"{key}: {item['msg']}"
