"""What every stage starts from: the benchmark (synthesised when missing), the validated records, the initial model.

Shared by the pipeline (:mod:`clinkd.recipes.run`), the single-stage recipes and the CLI commands.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from clinkd.boxes import convert_markup
from clinkd.config import ConfigError, ModelConfig, RecipeConfig
from clinkd.data.medgrit import load_medgrit, load_test_split
from clinkd.data.records import Sample
from clinkd.data.validation import ISSUES_FILE, DataIssues, ImageCheck, ImageChecker
from clinkd.model.bases import base_dir
from clinkd.model.loading import DTYPES, build_tiny, load_checkpoint
from clinkd.model.positions import STOCK, RopeStrategy
from clinkd.progress import console, make_progress


@dataclass
class Dataset:
    train: list[Sample]
    tests: dict[str, list[Sample]]
    issues: DataIssues = field(default_factory=DataIssues)


def ensure_synth(cfg: RecipeConfig) -> None:
    """Generate the synthetic benchmark into ``data.dir`` unless the same one is already there.

    A folder generated with other ``data.synth`` settings (its ``meta.json`` says so) is regenerated;
    a folder without a clinkd ``meta.json`` (real data) is never touched.
    """
    from clinkd.synth import generate
    from clinkd.synth.generate import read_meta, synth_parameters

    synth = cfg.data.synth
    if not synth.enabled:
        return
    wanted = synth_parameters(synth.seed, synth.images, synth.test_per_cell, synth.image_size, synth.turns)
    if (cfg.data.dir / cfg.data.train_file).is_file():
        found = read_meta(cfg.data.dir)
        if found is None or all(found.get(key) == value for key, value in wanted.items()):
            return
        console.print(f"[yellow]synth: {cfg.data.dir} was generated with other data.synth settings; regenerating")
    with make_progress() as progress:
        bar = progress.add_task("synth", total=None, info=str(cfg.data.dir))
        generate(
            cfg.data.dir,
            seed=synth.seed,
            images=synth.images,
            test_per_cell=synth.test_per_cell,
            image_size=synth.image_size,
            progress=lambda done, total: progress.update(bar, completed=done, total=total),
            turns_per_task=synth.turns,
        )


def load_dataset(cfg: RecipeConfig, with_train: bool = True, issues_file: Path | None = None) -> Dataset:
    """Train samples and the per-task test splits, validated under ``data.on_error``.

    With ``issues_file`` (``data_issues.txt``) every problem is written there and summed up on the console.
    A file that gave no usable record raises :class:`~clinkd.data.validation.DataError` naming it, before any training.
    """
    issues = DataIssues()
    data = cfg.data
    # one checker, so an image in train and test is checked once
    checker = ImageChecker(ImageCheck.VERIFY, data.max_image_pixels)
    train = []
    if with_train:
        train = load_medgrit(
            data.dir / data.train_file, data.images_dir, on_error=data.on_error, issues=issues, check_images=checker
        )
        if data.max_train_samples:
            train = train[: data.max_train_samples]
    tests = load_test_split(data.dir, data.images_dir, on_error=data.on_error, issues=issues, check_images=checker)
    if data.max_test_per_task:
        tests = {task: samples[: data.max_test_per_task] for task, samples in tests.items()}
    if issues_file is not None:
        console.print(issues.record(issues_file))
    issues.raise_for_unusable_files()
    return Dataset(train, tests, issues)


def prepared_dataset(cfg: RecipeConfig) -> Dataset:
    """What a stage command reads first: the benchmark (synthesised when missing) and its validated records, every
    data problem written to ``<run>/data_issues.txt``."""
    ensure_synth(cfg)
    return load_dataset(cfg, issues_file=cfg.run_dir / ISSUES_FILE)


def tokenizer_corpus(samples: list[Sample], box_style: str) -> list[str]:
    """The texts a tiny model's tokenizer is trained on, in the markup the model will see."""
    return [
        convert_markup(text, box_style) for s in samples for turn in s.turns for text in (turn.question, turn.answer)
    ]


def initial_checkpoint(model: ModelConfig) -> Path | None:
    """The checkpoint the model starts from: ``model.path``, the shipped base of ``model.size`` (``model.init: base``,
    its weights hashed against their record: call once), or None (a tiny model built from a config)."""
    if model.path is not None:
        return model.path
    if model.init == "scratch":
        return None
    try:
        return base_dir(model.size)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"model.init: {error}") from error


def build_tiny_from(model: ModelConfig, texts: Iterable[str], seed: int, rope: RopeStrategy = STOCK):
    """A freshly initialised tiny ``(model, processor)`` of ``model.size``, its tokenizer trained on ``texts``."""
    return build_tiny(
        texts,
        model.size,
        vocab=model.tokenizer_vocab,
        min_pixels=model.min_pixels,
        max_pixels=model.max_pixels,
        seed=seed,
        rope=rope,
    )


def initial_model(cfg: RecipeConfig, train: list[Sample]):
    """A fresh ``(model, processor)``: the checkpoint of :func:`initial_checkpoint` (quantised for QLoRA), or a tiny
    model built from a config."""
    from clinkd.model.lora import quantization_config

    lora = cfg.train.lora
    try:
        quantization = None if lora is None else quantization_config(lora.quantize, DTYPES[cfg.model.dtype])
    except ValueError as error:
        raise ConfigError(f"train.lora.quantize={lora.quantize}: {error}") from None
    model_cfg = cfg.model
    checkpoint = initial_checkpoint(model_cfg)
    if checkpoint is not None:
        return load_checkpoint(
            checkpoint,
            model_cfg.dtype,
            model_cfg.min_pixels,
            model_cfg.max_pixels,
            cfg.rope,
            quantization,
            model_cfg.allow_partial,
        )
    if quantization is not None:
        raise ConfigError(
            "train.lora.quantize: QLoRA quantises a checkpoint; set model.path (the tiny model is built in memory)"
        )
    return build_tiny_from(model_cfg, tokenizer_corpus(train, cfg.data.box_style), cfg.seed, cfg.rope)


def all_tests(dataset: Dataset) -> list[Sample]:
    """Every test record of every task, in task order."""
    return [sample for samples in dataset.tests.values() for sample in samples]
