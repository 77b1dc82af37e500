"""Recipe: the main job. Synthesise (if needed) → train → predict → evaluate, from one YAML recipe.

Everything lands in ``<output_dir>/<name>/``::

    config.resolved.yaml   the exact recipe that ran (reload it with ``clinkd run`` to reproduce)
    data_issues.txt        every skipped record, by kind
    sft/checkpoints/       Trainer checkpoints (a rerun resumes from the newest)
    sft/model/             the trained model + processor (a rerun with it present skips training)
    logs/                  TensorBoard event files
    predictions/<TASK>.jsonl
    metrics.json, report.md

Each stage is skipped when its output is already complete, so a killed run picks up where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import transformers

from clinkd.batching import training_examples
from clinkd.boxes import convert_markup
from clinkd.config import RecipeConfig, dump_config
from clinkd.data.medgrit import load_medgrit, load_test_split
from clinkd.data.records import Sample
from clinkd.data.validation import DataIssues
from clinkd.io import atomic_write_text
from clinkd.model.loading import build_tiny, load_checkpoint
from clinkd.progress import console, make_progress
from clinkd.recipes.evaluate import run_evaluate
from clinkd.recipes.predict import run_predict
from clinkd.recipes.train import run_sft


@dataclass
class Dataset:
    train: list[Sample]
    tests: dict[str, list[Sample]]
    issues: DataIssues = field(default_factory=DataIssues)


def ensure_synth(cfg: RecipeConfig) -> None:
    """Generate the synthetic benchmark into ``data.dir`` unless it is already there."""
    from clinkd.synth import generate

    synth = cfg.data.synth
    if not synth.enabled or (cfg.data.dir / cfg.data.train_file).is_file():
        return
    with make_progress() as progress:
        bar = progress.add_task("synth", total=None, info=str(cfg.data.dir))
        generate(
            cfg.data.dir,
            seed=synth.seed,
            images=synth.images,
            test_per_cell=synth.test_per_cell,
            image_size=synth.image_size,
            progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )


def load_dataset(cfg: RecipeConfig, with_train: bool = True) -> Dataset:
    """Train samples and the per-task test splits, validated under ``data.on_error``."""
    issues = DataIssues()
    data = cfg.data
    train = []
    if with_train:
        train = load_medgrit(data.dir / data.train_file, data.images_dir, on_error=data.on_error, issues=issues)
        if data.max_train_samples:
            train = train[: data.max_train_samples]
    tests = load_test_split(data.dir, data.images_dir, on_error=data.on_error, issues=issues)
    if data.max_test_per_task:
        tests = {task: samples[: data.max_test_per_task] for task, samples in tests.items()}
    return Dataset(train, tests, issues)


def tokenizer_corpus(samples: list[Sample], box_style: str) -> list[str]:
    """The texts a tiny model's tokenizer is trained on, in the markup the model will see."""
    return [convert_markup(text, box_style) for s in samples for turn in s.turns for text in (turn.question, turn.answer)]


def initial_model(cfg: RecipeConfig, train: list[Sample]):
    if cfg.model.path is not None:
        return load_checkpoint(cfg.model.path, cfg.model.dtype, cfg.model.min_pixels, cfg.model.max_pixels)
    return build_tiny(cfg.model, tokenizer_corpus(train, cfg.data.box_style), cfg.seed)


def run(cfg: RecipeConfig) -> dict:
    """Run the whole recipe and return the evaluation document."""
    transformers.set_seed(cfg.seed)
    transformers.utils.logging.disable_progress_bar()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.resolved.yaml", dump_config(cfg))
    timings: dict[str, float] = {}

    started = time.perf_counter()
    ensure_synth(cfg)
    dataset = load_dataset(cfg)
    atomic_write_text(run_dir / "data_issues.txt", dataset.issues.summary() + "\n")
    if dataset.issues.counts:
        console.print(dataset.issues.summary())
    timings["data"] = time.perf_counter() - started

    started = time.perf_counter()
    model_dir = run_dir / "sft" / "model"
    if (model_dir / "config.json").is_file():
        console.print(f"[green]sft: reusing {model_dir}")
        model, processor = load_checkpoint(model_dir, cfg.model.dtype)
    else:
        model, processor = initial_model(cfg, dataset.train)
        examples = training_examples(dataset.train, cfg.data.train_turns)
        run_sft(cfg, model, processor, examples, run_dir / "sft")
    timings["train"] = time.perf_counter() - started

    started = time.perf_counter()
    paths = run_predict(model, processor, dataset.tests, run_dir / "predictions", cfg.predict, cfg.data.box_style, cfg.model.square_size)
    timings["predict"] = time.perf_counter() - started

    timing_table = "## Stage times\n\n| stage | seconds |\n|---|---:|\n" + "\n".join(
        f"| {stage} | {seconds:.1f} |" for stage, seconds in timings.items()
    )
    return run_evaluate(
        paths.values(),
        run_dir,
        title=f"clinkd run `{cfg.name}`",
        tests=dataset.tests,
        label=f"model ({cfg.model.path or 'tiny-' + cfg.model.size})",
        extra_sections=[timing_table],
    )
