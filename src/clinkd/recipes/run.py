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
    comparisons/<row>/<TASK>.jsonl         teacher/, student-distilled/, plain-sft/, clinkd-greedy/ (report.*)
    metrics.json, report.md, tables/, figures/

Each stage is skipped when its output is already complete, so a killed run picks up where it stopped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import transformers

from clinkd.batching import InputFormat
from clinkd.config import ModelConfig, RecipeConfig, dump_config
from clinkd.data.validation import ISSUES_FILE
from clinkd.distill.report import render_distill
from clinkd.engine.distributed import is_main_process, main_process_first, write_predictions_sharded
from clinkd.io import atomic_write_text
from clinkd.markdown import table
from clinkd.model.loading import WEIGHT_SUFFIXES, CheckpointError, first_damaged, folder_damage, load_checkpoint
from clinkd.recipes.clip_train import ensure_embedded_clip
from clinkd.recipes.distill import run_distill
from clinkd.recipes.evaluate import evaluation_scorers, run_evaluate
from clinkd.recipes.inputs import all_tests, ensure_synth, initial_model, load_dataset
from clinkd.recipes.reflect import run_reflect
from clinkd.recipes.stage_clock import STAGE_TIMES_FILE, StageClock
from clinkd.recipes.train import sft_model
from clinkd.sasg.pipeline import selector_for

GREEDY_ROW = "ClinKD, greedy"  # the final model without selection (report.greedy)


def model_description(model: ModelConfig) -> str:
    if model.path is not None:
        return f"`{model.path}`"
    return f"tiny `{model.size}`, " + (
        "the shipped pretrained base (`model.init: base`)" if model.init == "base" else "built from a config"
    )


def recipe_section(cfg: RecipeConfig) -> str:
    """What produced the final predictions, in one table (the full recipe is in config.resolved.yaml)."""
    rope = cfg.rope
    rope_text = f"`{rope.name}`" + (f" (α = {rope.alpha}, rounding {rope.rounding})" if rope.name == "mcg" else "")
    rows = [
        ("model", model_description(cfg.model)),
        ("RoPE strategy", f"{rope_text}, frequencies `{rope.frequency}`"),
        ("training", "distillation (teacher → pseudo labels → student)" if cfg.distill.enabled else "plain SFT"),
        (
            "reflective correction",
            f"{cfg.reflect.rounds} rounds, corrector `{cfg.reflect.corrector}`"
            if cfg.reflect.enabled and cfg.reflect.rounds
            else "off",
        ),
        (
            "selection",
            f"`{cfg.select.method}`"
            + (
                f" (N = {cfg.select.num_return_sequences}, {cfg.select.candidates}, scorer `{cfg.select.scorer}`)"
                if cfg.select.method == "sasg"
                else ""
            ),
        ),
    ]
    return "## Recipe\n\n" + table(["part", "setting"], rows, "l")


def check_finished_outputs(cfg: RecipeConfig) -> None:
    """Before any stage runs: a damaged weight file of a finished stage in the run folder (the newest Trainer checkpoint
    falls back on its own, ``clinkd.engine.sft.resume_point``), or of a model the recipe names, is a
    :class:`CheckpointError` naming it, not a crash when that model is loaded hours later."""
    finished = (
        path
        for path in sorted(cfg.run_dir.rglob("*"))
        if path.suffix in WEIGHT_SUFFIXES
        and not any(part == "checkpoints" or part.startswith(".") for part in path.relative_to(cfg.run_dir).parts)
    )
    damaged = first_damaged(finished)
    if damaged is not None:
        raise CheckpointError(f"{damaged}; delete {damaged.path.parent} to redo the stage that wrote it")
    for key, folder in (
        ("model.path", cfg.model.path),
        ("distill.teacher", cfg.distill.teacher),
        ("distill.teacher_init", cfg.distill.teacher_init),
    ):
        damaged = folder_damage(folder) if folder is not None and Path(folder).is_dir() else None
        if damaged is not None:
            raise CheckpointError(f"{key}: {damaged}")


def run(cfg: RecipeConfig) -> dict | None:
    """Run the whole recipe; returns the evaluation document (``None`` on ranks other than 0)."""
    transformers.set_seed(cfg.seed)
    transformers.utils.logging.disable_progress_bar()
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    check_finished_outputs(cfg)
    if is_main_process():  # the rank holding the folder's lock; the others wait for it below
        atomic_write_text(run_dir / "config.resolved.yaml", dump_config(cfg))
    clock = StageClock(run_dir / STAGE_TIMES_FILE)

    with main_process_first():
        clock.time("data", lambda: ensure_synth(cfg))
    dataset = clock.time("data", lambda: load_dataset(cfg, issues_file=run_dir / ISSUES_FILE))

    sections: list[str] = [recipe_section(cfg)]
    comparisons: dict[str, Callable[[], tuple]] = {}
    if cfg.distill.enabled:
        build = lambda recipe: initial_model(recipe, dataset.train)  # noqa: E731 (the student and teacher start here)
        model, processor, info = clock.time("distill", lambda: run_distill(cfg, dataset.train, run_dir, build))
        sections.append(render_distill(info))
        if cfg.report.teacher:
            comparisons["teacher"] = lambda: load_checkpoint(info["teacher"]["dir"], cfg.model.dtype)
        if cfg.report.student and cfg.reflect.enabled and cfg.reflect.rounds:
            comparisons["student (distilled)"] = lambda: load_checkpoint(info["student"]["dir"], cfg.model.dtype)
        if cfg.report.sft_baseline:  # equal optimiser steps: the student's turns include the pseudo labels
            equal_steps = cfg.model_copy(
                update={"train": cfg.train.model_copy(update={"max_steps": info["student"]["steps"]})}
            )
            comparisons["plain SFT"] = lambda: clock.time(
                "sft baseline", lambda: sft_model(equal_steps, dataset.train, run_dir / "sft")
            )
    else:
        model, processor = clock.time("sft", lambda: sft_model(cfg, dataset.train, run_dir / "sft"))

    if cfg.reflect.enabled and cfg.reflect.rounds:
        reflected = clock.time(
            "reflect", lambda: run_reflect(cfg, model, processor, dataset.train, run_dir / "reflect")
        )
        model, processor = reflected.model, reflected.processor
        sections.append(reflected.markdown())
    if cfg.report.greedy and cfg.select.method != "greedy":
        comparisons[GREEDY_ROW] = lambda final=(model, processor): final

    clock.time("clip", lambda: ensure_embedded_clip(cfg, dataset.train, processor.tokenizer, all_tests(dataset)))
    selector = selector_for(cfg.select, cfg.clip.crop_margin, cfg.seed, run_dir, model.device)
    paths = clock.time(
        "predict",
        lambda: write_predictions_sharded(
            model, processor, dataset.tests, run_dir / "predictions", cfg.predict, InputFormat.of(cfg), selector
        ),
    )

    others = {}
    for label, load in comparisons.items():
        other, other_processor = load()
        out_dir = run_dir / "comparisons" / slug(label)
        others[label] = clock.time(
            "predict",
            lambda: write_predictions_sharded(
                other, other_processor, dataset.tests, out_dir, cfg.predict, InputFormat.of(cfg)
            ),
        ).values()

    if not is_main_process():
        return None
    sections.append(clock.markdown())
    evaluation = cfg.evaluate
    return run_evaluate(
        paths.values(),
        run_dir,
        title=f"clinkd run `{cfg.name}`",
        tests=dataset.tests,
        train=dataset.train,
        label=f"ClinKD ({cfg.model.path or 'tiny-' + cfg.model.size + ('-base' if cfg.model.init == 'base' else '')})",
        others=others,
        extra_sections=sections,
        scorers=evaluation_scorers(evaluation),
        bird_exact=evaluation.bird_exact,
        figures=evaluation.figures,
        run_dir=run_dir,
    )


def slug(label: str) -> str:
    """A comparison row's folder: its whole label in lower case, each run of other characters one ``-``
    (``plain SFT`` → ``plain-sft``, ``student (distilled)`` → ``student-distilled``)."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
