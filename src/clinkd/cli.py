"""The ``clinkd`` command line (typer). Each command is a thin wrapper over a recipe."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from clinkd.boxes import ModelBoxStyle
from clinkd.config import SynthConfig
from clinkd.data.sharegpt import ImagePaths
from clinkd.data.validation import OnError
from clinkd.progress import console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    help="ClinKD: train, distil, run and score Qwen2-VL on refer-and-ground medical VQA.",
)

SYNTH_DEFAULTS = SynthConfig()  # clinkd synth makes what a run's data.synth makes by default
ConfigArg = typer.Argument(
    None, help="recipe YAML (default: the built-in ClinKD recipe, which configs/default.yaml spells out)"
)
OverridesArg = typer.Argument(None, help="dotted overrides, e.g. train.lr=1e-3 model.size=xs")
PresetOpt = typer.Option(
    None, "--preset", help="a named override set: built in (quick) or from the recipe's presets: block"
)


def _fail_cleanly(command):
    """Turn the errors users cause (bad config, bad data, bad paths) into one red line and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from clinkd.boxes import BoxError
        from clinkd.config import ConfigError
        from clinkd.data.validation import DataError
        from clinkd.endpoint import EndpointError
        from clinkd.interactive.infer import InferInputError
        from clinkd.io import FolderInUse, JsonlError
        from clinkd.model.loading import CheckpointError
        from clinkd.sasg.scorer import ScorerError

        try:
            return command(*args, **kwargs)
        except (
            ConfigError,
            DataError,
            CheckpointError,
            BoxError,
            FileNotFoundError,
            InferInputError,
            JsonlError,
            EndpointError,
            FolderInUse,
            ScorerError,
        ) as error:
            console.print(
                f"[red]error:[/red] {escape(str(error))}", soft_wrap=True
            )  # one line; escaped: `clinkd[demo]` is not markup
            raise typer.Exit(2) from None

    return wrapper


@contextmanager
def _writing(folder: Path):
    """Hold ``folder``'s lock while a command writes there (:func:`clinkd.io.folder_lock`; the main process holds it
    for every rank of a multi-process run), and say when a killed run left it behind."""
    from clinkd.engine.distributed import is_main_process
    from clinkd.io import folder_lock

    if not is_main_process():
        yield
        return
    with folder_lock(folder) as left:
        if left is not None:
            console.print(
                f"[yellow]{escape(str(folder))}: taking over the lock left by {escape(left)}, which ended without "
                "releasing it (killed?)",
                soft_wrap=True,
            )
        yield


def _load(config: Optional[Path], overrides: Optional[list[str]], preset: Optional[str]):
    from clinkd.config import load_config

    overrides = list(overrides or [])
    if config is not None and "=" in str(config) and not config.exists():
        # `clinkd run train.lr=1e-3`: the first positional is an override, not a file.
        overrides.insert(0, str(config))
        config = None
    return load_config(config, overrides, preset)


def _selecting(overrides: Optional[list[str]], select: Optional[str]) -> list[str]:
    """The overrides with ``--select NAME`` as ``select.method=NAME`` (validated with the recipe)."""
    return [*(overrides or []), *([f"select.method={select}"] if select else [])]


def _selector(cfg):
    """``select.method``'s selector (``clinkd.sasg.pipeline.SELECTORS``; None: plain decoding), for a model on the CPU,
    where ``load_model`` leaves it."""
    from clinkd.sasg.pipeline import selector_for

    return selector_for(cfg.select, cfg.clip.crop_margin, cfg.seed, cfg.run_dir)


@app.command()
@_fail_cleanly
def run(
    config: Optional[Path] = ConfigArg, overrides: Optional[list[str]] = OverridesArg, preset: Optional[str] = PresetOpt
):
    """The main job: synthesise (if needed) → distil → reflect → clip-train → predict (SASG) → evaluate."""
    from clinkd.recipes.run import run as run_recipe

    cfg = _load(config, overrides, preset)
    with _writing(cfg.run_dir):
        finished = run_recipe(cfg) is not None  # rank 0 wrote the report
    if finished:
        console.print((cfg.run_dir / "report.md").read_text(encoding="utf-8"), markup=False)
        console.print(f"[green]done:[/green] {cfg.run_dir}")


@app.command()
@_fail_cleanly
def train(
    config: Optional[Path] = ConfigArg, overrides: Optional[list[str]] = OverridesArg, preset: Optional[str] = PresetOpt
):
    """Supervised fine-tuning only; the model goes to <run>/sft/model."""
    from clinkd.recipes.train import run_train

    cfg = _load(config, overrides, preset)
    with _writing(cfg.run_dir):
        result = run_train(cfg)
    console.print(f"[green]trained {result.steps} steps in {result.seconds:.0f} s → {result.model_dir}")


@app.command()
@_fail_cleanly
def pretrain(
    config: Optional[Path] = ConfigArg,
    overrides: Optional[list[str]] = OverridesArg,
    preset: Optional[str] = PresetOpt,
    ship_to: Optional[Path] = typer.Option(
        None,
        "--ship-to",
        help="then copy the base there as a shipped base (bf16, model card, sha256), e.g. src/clinkd/assets/bases/s",
    ),
):
    """Pre-train the tiny base (model.size) on a generic synthetic grounding corpus (pretrain.*; docs/pretrain.md).

    Writes <pretrain.out>/model and pretrain.json (resumable: a rerun continues from the newest checkpoint).
    """
    from clinkd.recipes.pretrain import pretrain_dir, run_pretrain

    cfg = _load(config, ["model.init=scratch", *(overrides or [])], preset)  # a base is built from a config, not loaded
    with _writing(pretrain_dir(cfg)):
        result = run_pretrain(cfg)
    steps, heldout = result.record["steps"], result.record["heldout"]
    console.print(
        f"[green]pretrained {steps['dense']} dense + {steps['language']} language steps → {result.model_dir}; "
        f"held-out grounding Recall@0.5 {heldout['recall']:.1%} on {heldout['scenes']} scenes"
    )
    if ship_to is not None:
        from clinkd.pretrain.ship import ship_base

        shipped = ship_base(pretrain_dir(cfg), ship_to)
        console.print(f"[green]shipped the base to {ship_to} (sha256 {shipped['sha256'][:12]}…)")


@app.command()
@_fail_cleanly
def reflect(
    model: Path = typer.Option(..., "--model", help="the checkpoint to start from, e.g. <run>/sft/model"),
    config: Optional[Path] = ConfigArg,
    overrides: Optional[list[str]] = OverridesArg,
    preset: Optional[str] = PresetOpt,
):
    """Reflective correction training (reflect.*): generate on the training set, correct the weak outputs, retrain.

    Writes <run>/reflect/ (resumable: a rerun picks up where it stopped); the final model is the last round's model/.
    """
    from clinkd.model.loading import load_checkpoint
    from clinkd.recipes.inputs import prepared_dataset
    from clinkd.recipes.reflect import run_reflect

    cfg = _load(config, overrides, preset)
    with _writing(cfg.run_dir):
        dataset = prepared_dataset(cfg)  # data problems before the slow load
        loaded, processor = load_checkpoint(model, cfg.model.dtype)
        result = run_reflect(cfg, loaded, processor, dataset.train, cfg.run_dir / "reflect")
    console.print(result.markdown(), markup=False)
    console.print(f"[green]done:[/green] {result.model_dir or 'no round ran (reflect.rounds=0)'}")


@app.command()
@_fail_cleanly
def distill(
    config: Optional[Path] = ConfigArg, overrides: Optional[list[str]] = OverridesArg, preset: Optional[str] = PresetOpt
):
    """Pseudo-Augmented Medical Distillation (distill.*): teacher on a subset → pseudo labels → KD student.

    Writes <run>/distill/ (resumable: finished sub-stages are skipped); the student goes to <run>/distill/student/model.
    """
    from clinkd.distill.teacher_cache import CacheMismatchError
    from clinkd.recipes.distill import run_distill
    from clinkd.recipes.inputs import initial_model, prepared_dataset

    cfg = _load(config, overrides, preset)
    with _writing(cfg.run_dir):
        dataset = prepared_dataset(cfg)
        try:
            _, _, info = run_distill(
                cfg, dataset.train, cfg.run_dir, lambda recipe: initial_model(recipe, dataset.train)
            )
        except CacheMismatchError as error:
            console.print(f"[red]error:[/red] {escape(str(error))}")
            raise typer.Exit(2) from None
    console.print(f"[green]distilled student → {info['student']['dir']}")


@app.command()
@_fail_cleanly
def predict(
    out: Path = typer.Option(..., "--out", help="folder for <TASK>.jsonl (existing rows are kept: resumable)"),
    model: Optional[Path] = typer.Option(
        None, "--model", help="a trained clinkd or Qwen2-VL checkpoint directory (or --endpoint)"
    ),
    select: Optional[str] = typer.Option(
        None,
        "--select",
        help="greedy|beam|sasg (default: select.method); sasg scores with select.scorer_path or <run>/clip",
    ),
    endpoint: Optional[str] = typer.Option(
        None,
        "--endpoint",
        help="score a served model instead: an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 "
             "(predict.endpoint.base_url)",
    ),
    served_model: Optional[str] = typer.Option(
        None, "--served-model", help="the served model's name (predict.endpoint.model)"
    ),
    boxes: Optional[str] = typer.Option(
        None,
        "--boxes",
        help="how the served model writes boxes: medgrit|qwen2.5-vl|qwen3-vl|auto (predict.endpoint.boxes; "
             "docs/served.md)",
    ),
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", help="requests in flight at once (predict.endpoint.concurrency)"
    ),
    config: Optional[Path] = ConfigArg,
    overrides: Optional[list[str]] = OverridesArg,
    preset: Optional[str] = PresetOpt,
):
    """Batched generation on the test files of data.dir, to resumable JSONL; with --endpoint, a served model's
    answers."""
    import json

    from clinkd.config import ConfigError

    flags = {"base_url": endpoint, "model": served_model, "boxes": boxes, "concurrency": concurrency}
    overrides = [
        *_selecting(overrides, select),
        *(f"predict.endpoint.{key}={json.dumps(value)}" for key, value in flags.items() if value is not None),
    ]
    cfg = _load(config, overrides, preset)
    served = cfg.predict.endpoint.base_url is not None
    if served == (model is not None):
        raise ConfigError(
            "give --model DIR (a local model) or --endpoint URL (a served model), not both"
            if served
            else "give --model DIR (a local model) or --endpoint URL (a served model)"
        )
    if served and select:
        raise ConfigError("--select chooses among a local model's candidates; a served model answers greedily")
    if served:
        from clinkd.recipes.predict import run_predict_served

        with _writing(out):
            paths, record = run_predict_served(cfg, out)
        last, rows = record["invocations"][-1], record["rows"]
        console.print(
            f"{last['answers']} answers, {last['requests']} requests in {last['seconds']:.1f} s "
            f"({last['requests_per_s'] or 0:.2f} requests/s), {last['prompt_tokens']} + {last['completion_tokens']} "
            "tokens"
        )
        if rows["multi_line"]:
            console.print(
                f"[yellow]{rows['multi_line']} of {rows['answers']} answers span several lines: BiRD's clean-up scores "
                "only the "
                "text between the first two newlines; ask for one line (predict.endpoint.instructions, docs/served.md)"
            )
    else:
        from clinkd.recipes.predict import run_predict

        with _writing(out):
            paths = run_predict(cfg, model, out)
    for task, path in paths.items():
        console.print(f"{task}: {path}")


@app.command("clip-train")
@_fail_cleanly
def clip_train(
    tokenizer: Optional[Path] = typer.Option(
        None,
        "--tokenizer",
        help="checkpoint dir whose tokenizer the CLIP reuses (default: <run>/sft/model if present, else a BPE trained "
             "on the data)",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="output dir (default: select.scorer_path or <run>/clip)"),
    config: Optional[Path] = ConfigArg,
    overrides: Optional[list[str]] = OverridesArg,
    preset: Optional[str] = PresetOpt,
):
    """Train SASG's embedded Med-CLIP (clip.*) on the train split's image–text pairs; report its held-out matching
    rate."""
    from clinkd.recipes.clip_train import run_clip_train, text_tokenizer
    from clinkd.recipes.inputs import all_tests, prepared_dataset
    from clinkd.sasg import scorer_dir

    cfg = _load(config, overrides, preset)
    with _writing(cfg.run_dir):
        dataset = prepared_dataset(cfg)
        clip_tokenizer = text_tokenizer(cfg, dataset.train, tokenizer)
        result, rates = run_clip_train(
            cfg, dataset.train, clip_tokenizer, out or scorer_dir(cfg.select, cfg.run_dir), all_tests(dataset)
        )
    console.print(
        f"[green]clip: {result.steps} steps on {result.pairs} pairs in {result.seconds:.0f} s → {result.model_dir}"
    )
    if rates:
        console.print(
            "held-out matching rate (true text above a mismatched one): "
            + ", ".join(f"{k} {v:.1%}" for k, v in rates.items())
        )


@app.command()
@_fail_cleanly
def evaluate(
    pred: list[Path] = typer.Option(..., "--pred", help="prediction JSONL file(s)"),
    out: Path = typer.Option(..., "--out", help="folder for metrics.json and report.md"),
    data: Optional[Path] = typer.Option(
        None,
        "--data",
        help="data dir with test_*.json: every row must answer one test record of its task; adds the trivial baselines "
             "(fitted on its train.json)",
    ),
    partial: bool = typer.Option(
        False,
        "--partial",
        help="with --data: score the rows there are when test records have none (counted in the report)",
    ),
    on_error: OnError = typer.Option("skip", "--on-error", help="for bad test records"),
    meteor: Optional[str] = typer.Option(None, "--meteor", help="evaluate.meteor: auto|java|nltk|off"),
    spice: Optional[str] = typer.Option(None, "--spice", help="evaluate.spice: auto|official|approx|off"),
    spice_jars: Optional[Path] = typer.Option(
        None, "--spice-jars", help="evaluate.corenlp_dir: the CoreNLP 3.6.0 jars for real SPICE"
    ),
    bird_exact: Optional[bool] = typer.Option(
        None, "--bird-exact", help="evaluate.bird_exact: score exactly as BiRD's scripts"
    ),
    figures: Optional[bool] = typer.Option(
        None, "--figures/--no-figures", help="evaluate.figures: write the PNG figures"
    ),
    run_dir: Optional[Path] = typer.Option(
        None, "--run-dir", help="run folder with train_log.json files for the loss figure (default: --out)"
    ),
    as_json: bool = typer.Option(
        False, "--json", help="print metrics.json instead of report.md (both are written to --out)"
    ),
    config: Optional[Path] = ConfigArg,
    overrides: Optional[list[str]] = OverridesArg,
    preset: Optional[str] = PresetOpt,
):
    """Score predictions per modality and task (BiRD semantics) and write the report, tables and figures.

    The scoring backends and options are the recipe's evaluate: block; each flag overrides its key. A second row for
    one task and id is an error; with --data so is a row that answers no test record of its task, and (unless
    --partial) a test record of a task the rows cover that has no row. The report (or with --json the metrics) goes to
    stdout; progress and messages to stderr.
    """
    import json

    from clinkd.data.medgrit import load_medgrit, load_test_split
    from clinkd.data.validation import ISSUES_FILE, DataIssues
    from clinkd.metrics.meteor import BackendUnavailable
    from clinkd.recipes.evaluate import evaluation_scorers, run_evaluate

    flags = {
        "meteor": meteor,
        "spice": spice,
        "corenlp_dir": spice_jars and str(spice_jars),
        "bird_exact": bird_exact,
        "figures": figures,
    }
    cfg = _load(
        config,
        [
            *(overrides or []),
            *(f"evaluate.{key}={json.dumps(value)}" for key, value in flags.items() if value is not None),
        ],
        preset,
    )
    evaluation = cfg.evaluate

    tests, train = None, []
    if data is not None:
        issues = DataIssues()
        tests = load_test_split(data, data / "images", on_error=on_error, issues=issues)
        if (data / "train.json").is_file():  # the fitted baselines learn from it; without it only the centre box
            train = load_medgrit(data / "train.json", data / "images", on_error=on_error, issues=issues)
        console.print(issues.record(out / ISSUES_FILE))
        issues.raise_for_unusable_files()
    try:
        scorers = evaluation_scorers(evaluation)
    except (ValueError, BackendUnavailable) as error:
        console.print(f"[red]error:[/red] {escape(str(error))} (clinkd env lists what is available)")
        raise typer.Exit(2) from None
    document = run_evaluate(
        pred,
        out,
        tests=tests,
        train=train,
        scorers=scorers,
        bird_exact=evaluation.bird_exact,
        figures=evaluation.figures,
        run_dir=run_dir,
        partial=partial,
    )
    typer.echo(
        json.dumps(document, indent=2, ensure_ascii=False)
        if as_json
        else (out / "report.md").read_text(encoding="utf-8")
    )


@app.command()
@_fail_cleanly
def compare(
    runs: list[Path] = typer.Argument(..., help="run folders (or metrics.json files); the first is the reference row"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write comparison.md and CSV tables here"),
    label: Optional[list[str]] = typer.Option(
        None, "--label", help="a row name per run, in order (default: folder names)"
    ),
):
    """Side-by-side tables of evaluated runs, laid out like the paper's Table 2 (ablations)."""
    from clinkd.recipes.compare import run_compare

    try:
        text = run_compare(runs, out, label)
    except ValueError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}")
        raise typer.Exit(2) from None
    typer.echo(text, nl=False)  # stdout, unwrapped: the Markdown tables can be piped


@app.command("env")
def show_env(
    spice_jars: Optional[Path] = typer.Option(None, "--spice-jars", help="folder to check for the CoreNLP 3.6.0 jars"),
):
    """Versions of torch, transformers and Java, and which metric backends can run here (and what is missing)."""
    from clinkd.doctor import environment_report, render_environment

    typer.echo(render_environment(environment_report(spice_jars)))


def _turn_mix(text: str) -> dict[str, int]:
    """``VG=2,ROC=2,RC=1,MIA=1`` → ``{"VG": 2, ...}``, validated (a typer usage error otherwise)."""
    from clinkd.synth.generate import validate_turn_mix

    mix = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        task, _, count = item.partition("=")
        if not count.strip().isdigit():
            raise typer.BadParameter(f"expected TASK=COUNT, got {item!r}", param_hint="--turns")
        mix[task.strip()] = int(count)
    try:
        return validate_turn_mix(mix)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--turns") from None


@app.command()
@_fail_cleanly
def synth(
    out: Path = typer.Option(..., "--out", help="output dataset folder"),
    seed: int = typer.Option(SYNTH_DEFAULTS.seed, "--seed"),
    images: int = typer.Option(
        SYNTH_DEFAULTS.images, "--images", help="training images (spread over the 8 modalities)"
    ),
    test_per_cell: int = typer.Option(
        SYNTH_DEFAULTS.test_per_cell, "--test-per-cell", help="test records per task and modality"
    ),
    image_size: int = typer.Option(SYNTH_DEFAULTS.image_size, "--image-size"),
    turns: str = typer.Option(
        ",".join(f"{task}={count}" for task, count in SYNTH_DEFAULTS.turns.items()),
        "--turns",
        help="training turns per image and task",
    ),
):
    """Generate the Med-GRIT-style synthetic benchmark (deterministic per seed)."""
    from clinkd.progress import make_progress
    from clinkd.synth import generate

    with make_progress() as progress:
        bar = progress.add_task("synth", total=None, info=str(out))
        summary = generate(
            out,
            seed=seed,
            images=images,
            test_per_cell=test_per_cell,
            image_size=image_size,
            progress=lambda done, total: progress.update(bar, completed=done, total=total),
            turns_per_task=_turn_mix(turns),
        )
    console.print(summary)


@app.command()
@_fail_cleanly
def convert(
    input: Path = typer.Option(..., "--input", help="Med-GRIT/BiRD or ShareGPT JSON file"),
    images: Path = typer.Option(..., "--images", help="image folder"),
    out: Path = typer.Option(..., "--out", help="output folder for <name>.json and dataset_info.json"),
    name: str = typer.Option("clinkd_medgrit", "--name", help="dataset name in dataset_info.json"),
    box_style: ModelBoxStyle = typer.Option(
        "qwen2-vl",
        "--box-style",
        help="markup written: qwen2-vl <|box_start|> tokens, Qwen-VL <box> tags or qwen3-vl JSON (Qwen3-VL, Qwen3.5)",
    ),
    image_paths: ImagePaths = typer.Option(
        "absolute",
        "--image-paths",
        help="relative: to --out (LLaMA-Factory's default media_dir), so the folder can move",
    ),
    on_error: OnError = typer.Option(
        "skip", "--on-error", help="skip: skip and count bad records; stop: fail on the first"
    ),
):
    """Convert to LLaMA-Factory ShareGPT (messages + images) with a dataset_info.json entry.

    16-bit images (LLaMA-Factory would clip them to white) are written to <out>/images as the 8-bit PNGs clinkd reads.
    """
    from clinkd.data.sharegpt import convert as convert_file
    from clinkd.data.validation import ISSUES_FILE, DataIssues

    issues = DataIssues()
    summary = convert_file(
        input, images, out, name=name, box_style=box_style, on_error=on_error, issues=issues, image_paths=image_paths
    )
    console.print(issues.record(out / ISSUES_FILE))
    console.print(str(summary), markup=False, highlight=False, soft_wrap=True)


@app.command()
@_fail_cleanly
def infer(
    model: Path = typer.Option(..., "--model", help="a trained clinkd or Qwen2-VL checkpoint directory"),
    image: Path = typer.Option(
        ..., "--image", help="PNG/JPEG/… (grayscale and 16-bit are converted) or DICOM (needs pydicom)"
    ),
    question: str = typer.Option(
        "", "--question", help="a question, or only its target: a name (VG) or a box (x1,y1),(x2,y2) (ROC/RC)"
    ),
    task: Optional[str] = typer.Option(None, "--task", help="vg|roc|rc|mia (default: guessed from the question)"),
    select: Optional[str] = typer.Option(
        None,
        "--select",
        help="greedy|beam|sasg: answer through that selector (select.method; the recipe's select: block)",
    ),
    gt: Optional[str] = typer.Option(
        None, "--gt", help='ground-truth box "(x1,y1),(x2,y2)" on the 0–1000 scale, drawn in green'
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", help="PNG with the boxes drawn (default: ./<image stem>.clinkd.png)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of text"),
    config: Optional[Path] = ConfigArg,
    overrides: Optional[list[str]] = OverridesArg,
    preset: Optional[str] = PresetOpt,
):
    """Answer one question about one image; write the image with the answer's boxes drawn on it."""
    import json

    from clinkd.batching import InputFormat
    from clinkd.interactive.infer import (
        load_model,
        parse_ground_truth,
        prepare_request,
        render_overlay,
        run_request,
        without_markup,
    )

    cfg = _load(config, _selecting(overrides, select), preset)
    request = prepare_request(
        image, question, task, cfg.data.max_image_pixels
    )  # every input check before the (slow) model load
    truth = parse_ground_truth(gt)
    selector = _selector(cfg) if select else None  # a missing scorer before the slow model load
    loaded, processor = load_model(model, cfg.model.dtype)
    result = run_request(
        loaded,
        processor,
        request,
        selector,
        input_format=InputFormat.of(cfg),
        max_new_tokens=cfg.predict.max_new_tokens[request.task],
        num_beams=cfg.predict.num_beams,
    )
    out = out or Path(f"{request.image.stem}.clinkd.png")
    render_overlay(result, truth).save(out)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    **result.to_json(),
                    "ground_truth": truth and [truth.x1, truth.y1, truth.x2, truth.y2],
                    "overlay": str(out),
                }
            )
        )
        return
    console.print(f"[bold]{result.task}[/bold] {escape(result.question)}")
    console.print(escape(result.answer_text) or "[dim](empty answer)[/dim]")
    for item in result.boxes:
        console.print(f"  box {escape(item.label)}: {item.box.to_text('plain')}")
    for rank, candidate in enumerate(result.candidates, 1):
        console.print(
            f"  {result.selector} candidate {rank}, score {candidate.score:.4g}: "
            f"{escape(without_markup(candidate.text))}"
        )
    if result.box_error:
        console.print(f"[yellow]the answer's box markup does not parse:[/yellow] {escape(result.box_error)}")
    console.print(f"[green]boxes drawn:[/green] {out}")


@app.command()
@_fail_cleanly
def demo(
    model: Path = typer.Option(..., "--model", help="a trained clinkd or Qwen2-VL checkpoint directory"),
    data: Optional[Path] = typer.Option(
        None,
        "--data",
        help="a dataset folder (test_*.json + images/) to pick examples from (default: the recipe's data.dir when it "
             "exists)",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (127.0.0.1: this machine only)"),
    port: int = typer.Option(7860, "--port"),
    select: Optional[str] = typer.Option(
        None, "--select", help="greedy|beam|sasg: offer that selector (select.method), with its candidates and scores"
    ),
    config: Optional[Path] = ConfigArg,
    overrides: Optional[list[str]] = OverridesArg,
    preset: Optional[str] = PresetOpt,
):
    """A Gradio web demo: upload or pick an image, choose a task, ask; see the answer and its boxes."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        console.print("[red]error:[/red] clinkd demo needs gradio: pip install 'clinkd\\[demo]'")
        raise typer.Exit(2)
    from clinkd.interactive.demo import DemoSettings, build_demo, launch_demo
    from clinkd.interactive.infer import load_model

    cfg = _load(config, _selecting(overrides, select), preset)
    data = data if data is not None else (cfg.data.dir if (cfg.data.dir / "images").is_dir() else None)
    selector = _selector(cfg) if select else None
    loaded, processor = load_model(model, cfg.model.dtype)
    app_ = build_demo(loaded, processor, data_dir=data, selector=selector, settings=DemoSettings.from_config(cfg))
    console.print(f"[green]clinkd demo[/green] on http://{host}:{port} (Ctrl+C stops it)")
    launch_demo(app_, host=host, port=port, data_dir=data, block=True)


@app.command("merge-lora")
@_fail_cleanly
def merge_lora(
    base: Path = typer.Option(..., "--base", help="the 16-bit base checkpoint the adapter was trained on"),
    adapter: Path = typer.Option(..., "--adapter", help="a <stage>/adapter directory (peft)"),
    out: Path = typer.Option(..., "--out", help="folder for the merged checkpoint"),
    dtype: str = typer.Option("bfloat16", "--dtype", help="float32 | bfloat16 | float16"),
):
    """Merge a LoRA/QLoRA adapter into its base and write a plain checkpoint (docs/scaling.md)."""
    from clinkd.model.lora import merge_adapter_checkpoint

    console.print(f"[green]merged → {merge_adapter_checkpoint(base, adapter, out, dtype)}")


@app.command()
@_fail_cleanly
def export(
    run_or_model: Path = typer.Argument(..., help="a clinkd run folder (its final model) or a checkpoint directory"),
    out: Path = typer.Option(..., "--out", help="folder for the exported model (replaced atomically)"),
):
    """Write a model that loads without clinkd: a stock Qwen2-VL checkpoint, or (MCG-RoPE and other non-stock
    positions) the same weights with clinkd's modeling file as remote code (trust_remote_code=True)."""
    from clinkd.model.export import export_model

    exported = export_model(run_or_model, out)
    how = (
        "AutoModelForImageTextToText.from_pretrained(DIR, trust_remote_code=True)"
        if exported.remote_code
        else "stock transformers (plain Qwen2-VL checkpoint)"
    )
    console.print(
        f"[green]exported[/green] {exported.source} → {exported.out}: positions {exported.strategy['name']}; load with "
        f"{how}"
    )


@app.command("config")
@_fail_cleanly
def show_config(
    config: Optional[Path] = ConfigArg, overrides: Optional[list[str]] = OverridesArg, preset: Optional[str] = PresetOpt
):
    """Validate a recipe and print it fully resolved."""
    from clinkd.config import dump_config

    typer.echo(dump_config(_load(config, overrides, preset)), nl=False)  # stdout: clinkd config > resolved.yaml


if __name__ == "__main__":
    app()
