"""The ``clinkd`` command line (typer). Each command is a thin wrapper over a recipe."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

from clinkd.progress import console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False, help="ClinKD: train, distil, run and score Qwen2-VL on refer-and-ground medical VQA.")

DEFAULT_CONFIG = Path("configs/default.yaml")
ConfigArg = typer.Argument(None, help="recipe YAML (default: configs/default.yaml when present)")
OverridesArg = typer.Argument(None, help="dotted overrides, e.g. train.lr=1e-3 model.size=xs")
PresetOpt = typer.Option(None, "--preset", help="a named override set from the recipe's presets: block")


def _fail_cleanly(command):
    """Turn the errors users cause (bad config, bad data, bad paths) into one red line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from clinkd.boxes import BoxError
        from clinkd.config import ConfigError
        from clinkd.data.validation import DataError
        from clinkd.model.loading import CheckpointError

        try:
            return command(*args, **kwargs)
        except (ConfigError, DataError, CheckpointError, BoxError, FileNotFoundError) as error:
            console.print(f"[red]error:[/red] {error}")
            raise typer.Exit(2) from None

    return wrapper


def _load(config: Optional[Path], overrides: Optional[list[str]], preset: Optional[str]):
    from clinkd.config import load_config

    overrides = list(overrides or [])
    if config is not None and "=" in str(config) and not config.exists():
        # `clinkd run train.lr=1e-3`: the first positional is an override, not a file.
        overrides.insert(0, str(config))
        config = None
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    return load_config(config, overrides, preset)


@app.command()
@_fail_cleanly
def run(config: Optional[Path] = ConfigArg, overrides: Optional[list[str]] = OverridesArg, preset: Optional[str] = PresetOpt):
    """The main job: synthesise (if needed) → train → predict → evaluate."""
    from clinkd.recipes.run import run as run_recipe

    cfg = _load(config, overrides, preset)
    run_recipe(cfg)
    console.print((cfg.run_dir / "report.md").read_text(encoding="utf-8"))
    console.print(f"[green]done:[/green] {cfg.run_dir}")


@app.command()
@_fail_cleanly
def train(config: Optional[Path] = ConfigArg, overrides: Optional[list[str]] = OverridesArg, preset: Optional[str] = PresetOpt):
    """Supervised fine-tuning only; the model goes to <run>/sft/model."""
    from clinkd.batching import training_examples
    from clinkd.recipes.run import ensure_synth, initial_model, load_dataset
    from clinkd.recipes.train import run_sft

    cfg = _load(config, overrides, preset)
    ensure_synth(cfg)
    dataset = load_dataset(cfg)
    console.print(dataset.issues.summary())
    model, processor = initial_model(cfg, dataset.train)
    result = run_sft(cfg, model, processor, training_examples(dataset.train, cfg.data.train_turns), cfg.run_dir / "sft")
    console.print(f"[green]trained {result.steps} steps in {result.seconds:.0f} s → {result.model_dir}")


@app.command()
@_fail_cleanly
def predict(
    model: Path = typer.Option(..., "--model", help="a trained clinkd or Qwen2-VL checkpoint directory"),
    out: Path = typer.Option(..., "--out", help="folder for <TASK>.jsonl (existing rows are kept: resumable)"),
    config: Optional[Path] = ConfigArg,
    overrides: Optional[list[str]] = OverridesArg,
    preset: Optional[str] = PresetOpt,
):
    """Batched generation on the test files of data.dir, to resumable JSONL."""
    from clinkd.model.loading import load_checkpoint
    from clinkd.recipes.predict import run_predict
    from clinkd.recipes.run import load_dataset

    cfg = _load(config, overrides, preset)
    loaded, processor = load_checkpoint(model, cfg.model.dtype)
    dataset = load_dataset(cfg, with_train=False)
    console.print(dataset.issues.summary())
    paths = run_predict(loaded, processor, dataset.tests, out, cfg.predict, cfg.data.box_style, cfg.model.square_size)
    for task, path in paths.items():
        console.print(f"{task}: {path}")


@app.command()
@_fail_cleanly
def evaluate(
    pred: list[Path] = typer.Option(..., "--pred", help="prediction JSONL file(s)"),
    out: Path = typer.Option(..., "--out", help="folder for metrics.json and report.md"),
    data: Optional[Path] = typer.Option(None, "--data", help="data dir with test_*.json: adds the trivial baselines"),
    on_error: str = typer.Option("skip", "--on-error", help="skip|stop for bad test records"),
):
    """Score predictions per modality and task (BiRD semantics) and write the report."""
    from clinkd.data.medgrit import load_test_split
    from clinkd.data.validation import DataIssues
    from clinkd.recipes.evaluate import run_evaluate

    tests = None
    if data is not None:
        issues = DataIssues()
        tests = load_test_split(data, data / "images", on_error=on_error, issues=issues)
        console.print(issues.summary())
    run_evaluate(pred, out, tests=tests)
    console.print((out / "report.md").read_text(encoding="utf-8"))


@app.command()
@_fail_cleanly
def synth(
    out: Path = typer.Option(..., "--out", help="output dataset folder"),
    seed: int = typer.Option(0, "--seed"),
    images: int = typer.Option(1600, "--images", help="training images (spread over the 8 modalities)"),
    test_per_cell: int = typer.Option(25, "--test-per-cell", help="test records per task and modality"),
    image_size: int = typer.Option(112, "--image-size"),
):
    """Generate the Med-GRIT-style synthetic benchmark (deterministic per seed)."""
    from clinkd.progress import make_progress
    from clinkd.synth import generate

    with make_progress() as progress:
        bar = progress.add_task("synth", total=None, info=str(out))
        summary = generate(
            out, seed=seed, images=images, test_per_cell=test_per_cell, image_size=image_size,
            progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    console.print(summary)


@app.command()
@_fail_cleanly
def convert(
    input: Path = typer.Option(..., "--input", help="Med-GRIT/BiRD or ShareGPT JSON file"),
    images: Path = typer.Option(..., "--images", help="image folder"),
    out: Path = typer.Option(..., "--out", help="output folder for <name>.json and dataset_info.json"),
    name: str = typer.Option("clinkd_medgrit", "--name", help="dataset name in dataset_info.json"),
    box_style: str = typer.Option("qwen2-vl", "--box-style", help="qwen2-vl | qwen-vl"),
    on_error: str = typer.Option("skip", "--on-error", help="skip: skip and count bad records; stop: fail on the first"),
):
    """Convert to LLaMA-Factory ShareGPT (messages + images) with a dataset_info.json entry."""
    from clinkd.data.sharegpt import convert as convert_file
    from clinkd.data.validation import DataIssues

    issues = DataIssues()
    summary = convert_file(input, images, out, name=name, box_style=box_style, on_error=on_error, issues=issues)
    console.print(issues.summary())
    console.print(summary)


@app.command("config")
@_fail_cleanly
def show_config(config: Optional[Path] = ConfigArg, overrides: Optional[list[str]] = OverridesArg, preset: Optional[str] = PresetOpt):
    """Validate a recipe and print it fully resolved."""
    from clinkd.config import dump_config

    console.print(dump_config(_load(config, overrides, preset)), markup=False)


if __name__ == "__main__":
    app()
