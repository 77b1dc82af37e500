"""Recipe: the main job, the whole ClinKD pipeline from one YAML recipe.

    synthesise (if needed) → distil (teacher → pseudo labels → student) or plain SFT
    → reflective correction rounds → Med-CLIP training → SASG prediction → evaluation

Each stage is a recipe of its own (``clinkd distill``, ``clinkd reflect``, ``clinkd clip-train``, ...);
this module only wires them, with the loop in plain sight. Everything lands in ``<output_dir>/<name>/``::

    config.resolved.yaml   the exact recipe that ran (reload it with ``clinkd run`` to reproduce)
    data_issues.txt        every problem found in the data files (the console shows the first few)
    distill/               teacher/, pseudo/, cache/, student/ (distill.enabled)
    sft/                   checkpoints/ and model/ (plain SFT: the model, or the baseline row)
    reflect/               one folder per round, and the final model (reflect.enabled)
    clip/                  the embedded Med-CLIP (select.method: sasg)
    logs/                  TensorBoard event files
    predictions/<TASK>.jsonl               the final model (with SASG candidates and scores)
    comparisons/<row>/<TASK>.jsonl         teacher, student, plain SFT (report.*)
    metrics.json, report.md, tables/, figures/

Each stage is skipped when its output is already complete, so a killed run picks up where it stopped.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import transformers

from clinkd.batching import training_examples
from clinkd.boxes import convert_markup
from clinkd.config import ConfigError, ModelConfig, RecipeConfig, dump_config
from clinkd.data.medgrit import load_medgrit, load_test_split
from clinkd.data.records import Sample
from clinkd.data.validation import ISSUES_FILE, DataIssues
from clinkd.distributed import is_main_process, main_process_first, predict_sharded
from clinkd.io import atomic_write_json, atomic_write_text
from clinkd.model.loading import DTYPES, build_tiny, is_checkpoint, load_checkpoint
from clinkd.progress import console, make_progress

STAGE_TIMES_FILE = "stage_times.json"


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
    train = []
    if with_train:
        train = load_medgrit(data.dir / data.train_file, data.images_dir, on_error=data.on_error, issues=issues)
        if data.max_train_samples:
            train = train[: data.max_train_samples]
    tests = load_test_split(data.dir, data.images_dir, on_error=data.on_error, issues=issues)
    if data.max_test_per_task:
        tests = {task: samples[: data.max_test_per_task] for task, samples in tests.items()}
    if issues_file is not None:
        console.print(issues.record(issues_file))
    issues.raise_for_unusable_files()
    return Dataset(train, tests, issues)


def tokenizer_corpus(samples: list[Sample], box_style: str) -> list[str]:
    """The texts a tiny model's tokenizer is trained on, in the markup the model will see."""
    return [convert_markup(text, box_style) for s in samples for turn in s.turns for text in (turn.question, turn.answer)]


def initial_model(cfg: RecipeConfig, train: list[Sample]):
    """A fresh ``(model, processor)``: the local checkpoint of ``model.path`` (quantised for QLoRA), or a tiny
    model built from a config."""
    from clinkd.model.lora import quantization_config

    lora = cfg.train.lora
    quantization = None if lora is None else quantization_config(lora, DTYPES[cfg.model.dtype])
    model_cfg = cfg.model
    if model_cfg.checkpoint is not None:
        return load_checkpoint(
            model_cfg.checkpoint, model_cfg.dtype, model_cfg.min_pixels, model_cfg.max_pixels, cfg.rope, quantization, model_cfg.allow_partial
        )
    if quantization is not None:
        raise ConfigError("train.lora.quantize: QLoRA quantises a checkpoint; set model.path (the tiny model is built in memory)")
    return build_tiny(cfg.model, tokenizer_corpus(train, cfg.data.box_style), cfg.seed, cfg.rope)


def sft_model(cfg: RecipeConfig, train: list[Sample], stage_dir: Path):
    """Plain SFT from the initial model into ``stage_dir/model``; reused when it is already there."""
    from clinkd.recipes.train import run_sft

    model_dir = stage_dir / "model"
    if is_checkpoint(model_dir):
        console.print(f"[green]sft: reusing {model_dir}")
        return load_checkpoint(model_dir, cfg.model.dtype)
    model, processor = initial_model(cfg, train)
    result = run_sft(cfg, model, processor, training_examples(train, cfg.data.train_turns), stage_dir)
    if cfg.train.lora is not None:  # the object in memory carries unmerged adapters: use what was saved
        return load_checkpoint(result.model_dir, cfg.model.dtype)
    return model, processor


class StageClock:
    """Seconds per stage for the report, summed over every invocation on one run folder.

    With ``path`` (``<run>/stage_times.json``) the sums are saved while a stage runs (every ``save_every``
    seconds) and when it ends, failed or not, and read back by the next invocation: a resumed run reports what
    its outputs cost in all, a killed stage included, not the seconds of the last restart; a stage whose
    outputs are reused adds almost nothing.
    """

    def __init__(self, path: Path | None = None, save_every: float = 30.0):
        self.path = path
        self.save_every = save_every
        self.seconds: dict[str, float] = self._recorded(path) if path is not None else {}

    @staticmethod
    def _recorded(path: Path) -> dict[str, float]:
        if not path.is_file():
            return {}
        try:
            return {str(stage): float(seconds) for stage, seconds in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError, TypeError):
            console.print(f"[yellow]{path}: unreadable stage times, counting from zero[/]")
            return {}

    def time(self, stage: str, work: Callable):
        before, started = self.seconds.get(stage, 0.0), time.perf_counter()

        def record() -> None:
            self.seconds[stage] = before + time.perf_counter() - started
            if self.path is not None and is_main_process():
                atomic_write_json(self.path, self.seconds)

        ticker = _Ticker(self.save_every, record) if self.path is not None else None  # a killed stage keeps its time
        try:
            return work()
        finally:
            if ticker is not None:
                ticker.stop()
            record()

    def markdown(self) -> str:
        rows = "\n".join(f"| {stage} | {seconds:.1f} |" for stage, seconds in self.seconds.items())
        total = sum(self.seconds.values())
        note = "Summed over every invocation on this run folder (`stage_times.json`); a reused stage adds almost nothing."
        return f"## Stage times\n\n{note}\n\n| stage | seconds |\n|---|---:|\n{rows}\n| **total** | **{total:.1f}** |"


class _Ticker:
    """Calls ``tick`` every ``every`` seconds on a daemon thread until :meth:`stop`."""

    def __init__(self, every: float, tick: Callable[[], None]):
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every, tick), daemon=True)
        self._thread.start()

    def _run(self, every: float, tick: Callable[[], None]) -> None:
        while not self._stopped.wait(every):
            tick()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def model_description(model: ModelConfig) -> str:
    if model.path is not None:
        return f"`{model.path}`"
    return f"tiny `{model.size}`, " + ("the shipped pretrained base (`model.init: base`)" if model.init == "base" else "built from a config")


def recipe_section(cfg: RecipeConfig) -> str:
    """What produced the final predictions, in one table (the full recipe is in config.resolved.yaml)."""
    rope = cfg.rope
    rope_text = f"`{rope.name}`" + (f" (α = {rope.alpha}, rounding {rope.rounding})" if rope.name == "mcg" else "")
    rows = [
        ("model", model_description(cfg.model)),
        ("RoPE strategy", f"{rope_text}, frequencies `{rope.frequency}`"),
        ("training", "distillation (teacher → pseudo labels → student)" if cfg.distill.enabled else "plain SFT"),
        ("reflective correction", f"{cfg.reflect.rounds} rounds, corrector `{cfg.reflect.corrector}`" if cfg.reflect.enabled and cfg.reflect.rounds else "off"),
        ("selection", f"`{cfg.select.method}`" + (f" (N = {cfg.select.num_return_sequences}, {cfg.select.candidates}, scorer `{cfg.select.scorer}`)" if cfg.select.method == "sasg" else "")),
    ]
    return "## Recipe\n\n| part | setting |\n|---|---|\n" + "\n".join(f"| {part} | {value} |" for part, value in rows)


def run(cfg: RecipeConfig) -> dict | None:
    """Run the whole recipe; returns the evaluation document (``None`` on ranks other than 0)."""
    from clinkd.metrics.backends import BackendChoice, caption_scorers
    from clinkd.recipes.evaluate import run_evaluate
    from clinkd.sasg.pipeline import ensure_embedded_clip, selector_for

    transformers.set_seed(cfg.seed)
    transformers.utils.logging.disable_progress_bar()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.resolved.yaml", dump_config(cfg))
    clock = StageClock(run_dir / STAGE_TIMES_FILE)

    with main_process_first():
        clock.time("data", lambda: ensure_synth(cfg))
    dataset = clock.time("data", lambda: load_dataset(cfg, issues_file=run_dir / ISSUES_FILE))

    sections: list[str] = [recipe_section(cfg)]
    comparisons: dict[str, Callable[[], tuple]] = {}
    if cfg.distill.enabled:
        from clinkd.recipes.distill import run_distill

        build = lambda recipe: initial_model(recipe, dataset.train)  # noqa: E731 (the student and teacher start here)
        model, processor, info = clock.time("distill", lambda: run_distill(cfg, dataset, run_dir, build))
        if cfg.report.teacher:
            comparisons["teacher"] = lambda: load_checkpoint(info["teacher"]["dir"], cfg.model.dtype)
        if cfg.report.student and cfg.reflect.enabled and cfg.reflect.rounds:
            comparisons["student (distilled)"] = lambda: load_checkpoint(info["student"]["dir"], cfg.model.dtype)
        if cfg.report.sft_baseline:
            comparisons["plain SFT"] = lambda: clock.time("sft baseline", lambda: sft_model(cfg, dataset.train, run_dir / "sft"))
    else:
        model, processor = clock.time("sft", lambda: sft_model(cfg, dataset.train, run_dir / "sft"))

    if cfg.reflect.enabled and cfg.reflect.rounds:
        from clinkd.recipes.reflect import run_reflect

        reflected = clock.time("reflect", lambda: run_reflect(cfg, model, processor, dataset.train, run_dir / "reflect"))
        model, processor = reflected.model, reflected.processor
        sections.append(reflected.markdown())

    clock.time("clip", lambda: ensure_embedded_clip(cfg, dataset.train, processor.tokenizer, _all_tests(dataset)))
    selector = selector_for(cfg, model.device)
    paths = clock.time("predict", lambda: predict_sharded(
        model, processor, dataset.tests, run_dir / "predictions", cfg.predict, cfg.data.box_style, cfg.model.square_size, selector
    ))

    others = {}
    for label, load in comparisons.items():
        other, other_processor = load()
        out_dir = run_dir / "comparisons" / label.split(" ")[0].lower()
        others[label] = clock.time("predict", lambda: predict_sharded(
            other, other_processor, dataset.tests, out_dir, cfg.predict, cfg.data.box_style, cfg.model.square_size
        )).values()

    if not is_main_process():
        return None
    sections.append(clock.markdown())
    evaluation = cfg.evaluate
    return run_evaluate(
        paths.values(),
        run_dir,
        title=f"clinkd run `{cfg.name}`",
        tests=dataset.tests,
        label=f"ClinKD ({cfg.model.path or 'tiny-' + cfg.model.size + ('-base' if cfg.model.init == 'base' else '')})",
        others=others,
        extra_sections=sections,
        scorers=caption_scorers(BackendChoice(evaluation.meteor, evaluation.spice, evaluation.corenlp_dir)),
        bird_exact=evaluation.bird_exact,
        figures=evaluation.figures,
        run_dir=run_dir,
    )


def _all_tests(dataset: Dataset) -> list[Sample]:
    return [sample for samples in dataset.tests.values() for sample in samples]
