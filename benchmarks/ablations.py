"""The paper's ablations on the embedded default, over seeds: mean ± std of each task headline, and the paired
difference of each comparison (docs/benchmarks.md, "Ablations over three seeds").

    python benchmarks/ablations.py --seeds 0 1 2 --out runs/ablations --threads 1    # runs what is missing, then the
    table
    python benchmarks/ablations.py --seeds 0 1 2 --out runs/ablations --collect      # only the table, from finished
    runs

Three ``clinkd run`` folders per seed, on the same data (``data.synth.seed`` stays 0; ``seed`` moves the
initialisation, the sampling of the teacher's and reflection's subsets, and the training order):

* ``clinkd-s<seed>``: the default recipe with ``report.sft_baseline`` and ``report.greedy``, whose report holds
  ClinKD (SASG), the same final model greedy, the distilled student before reflection (greedy) and plain SFT
  from the same initialisation for the student's optimiser steps (greedy);
* ``stock-s<seed>``: the default recipe with ``rope.name=qwen2vl`` (stock positions), no extra rows;
* ``unfiltered-s<seed>``: the default recipe with ``distill.pseudo_filter=false`` (every usable pseudo label teaches),
  stopped after the distilled student (``reflect.enabled=false select.method=greedy``: its answers are the
  student's, greedy). Its teacher and pseudo labels are those of ``clinkd-s<seed>`` (the same seed and recipe
  up to the filter, which acts after them), copied in before it runs so that they are not trained twice.

Each comparison pairs two rows of the same seed:

* MCG-RoPE vs stock positions: ClinKD against the stock run's ClinKD (the whole pipeline);
* KD student vs plain SFT: the distilled student against plain SFT (both greedy, equal optimiser steps);
* reflective correction on vs off: the final model greedy against the distilled student greedy (the model that
  entered reflection);
* SASG vs greedy: ClinKD against the final model greedy (the same weights);
* pseudo-label filter on vs off: the distilled student (greedy) against the unfiltered run's distilled student.

A run folder already complete is reused (``clinkd run`` skips finished stages), so the script can be stopped and
started again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from clinkd.data.records import TASKS
from clinkd.markdown import table
from clinkd.recipes.run import GREEDY_ROW

HEADLINES = {"VG": "VG R@0.5", "ROC": "ROC Recall", "RC": "RC SPICE-approx", "MIA": "MIA mBMR", "average": "average"}
COLUMNS = tuple(HEADLINES)  # the four task headlines, then their mean
RUNS = {
    "clinkd": ["report.sft_baseline=true", "report.greedy=true"],
    "stock": ["rope.name=qwen2vl", "report.teacher=false", "report.student=false"],
    "unfiltered": [
        "distill.pseudo_filter=false",
        "reflect.enabled=false",
        "select.method=greedy",
        "report.teacher=false",
    ],
}
# (comparison, (run, row) with the part, (run, row) without it); row "model" is the run's final answers.
COMPARISONS = (
    ("MCG-RoPE vs stock positions", ("clinkd", "model"), ("stock", "model")),
    ("KD student vs plain SFT", ("clinkd", "student (distilled)"), ("clinkd", "plain SFT")),
    ("reflective correction on vs off", ("clinkd", GREEDY_ROW), ("clinkd", "student (distilled)")),
    ("SASG vs greedy", ("clinkd", "model"), ("clinkd", GREEDY_ROW)),
    ("pseudo-label filter on vs off", ("clinkd", "student (distilled)"), ("unfiltered", "model")),
)
ROW_NAMES = {
    ("clinkd", "model"): "ClinKD (MCG-RoPE, KD, reflection, SASG)",
    ("clinkd", GREEDY_ROW): "same model, greedy",
    ("clinkd", "student (distilled)"): "KD student before reflection, greedy",
    ("clinkd", "plain SFT"): "plain SFT, greedy",
    ("clinkd", "teacher"): "teacher (11.1 % of the data), greedy",
    ("stock", "model"): "ClinKD with stock positions",
    ("unfiltered", "model"): "KD student without the pseudo-label filter, greedy",
}


def headlines(metrics: dict, row: str) -> dict[str, float]:
    """One row's task headlines ×100 (``metrics.json`` keeps fractions), plus their mean as ``average``."""
    document = metrics["model"] if row == "model" else metrics["others"][row]
    scores = {task: 100 * document["tasks"][task]["headline"]["value"] for task in TASKS}
    return scores | {"average": statistics.fmean(scores.values())}


def mean_std(values: Sequence[float]) -> str:
    """``mean ± sample std`` to two decimals (a single value has no spread: ``± –``)."""
    spread = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "–"
    return f"{round(statistics.fmean(values), 2) + 0.0:.2f} ± {spread}"  # + 0.0: no "-0.00"


def seed_rows(seeded: dict[int, dict[str, dict]]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Per row, per column: the list of values over the seeds (in seed order)."""
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for seed in sorted(seeded):
        for key in ROW_NAMES:
            run, row = key
            values = headlines(seeded[seed][run], row)
            for column, value in values.items():
                rows.setdefault(key, {}).setdefault(column, []).append(value)
    return rows


def scores_table(rows: dict[tuple[str, str], dict[str, list[float]]]) -> str:
    body = [[ROW_NAMES[key], *(mean_std(rows[key][column]) for column in COLUMNS)] for key in ROW_NAMES]
    return table(["row (mean ± std over seeds)", *HEADLINES.values()], body, "lr")


def comparisons_table(rows: dict[tuple[str, str], dict[str, list[float]]]) -> str:
    """Each comparison's per-seed paired difference (with − without), as mean ± std."""
    body = []
    for name, with_part, without_part in COMPARISONS:
        cells = []
        for column in COLUMNS:
            differences = [a - b for a, b in zip(rows[with_part][column], rows[without_part][column], strict=True)]
            cells.append(mean_std(differences))
        body.append([name, *cells])
    return table(["comparison (with − without, paired by seed)", *HEADLINES.values()], body, "lr")


SHARED_STAGES = {"unfiltered": ("clinkd", ("distill/teacher", "distill/pseudo"))}  # run: (run it copies from, parts)


def share_stages(out: Path, run: str, seed: int) -> None:
    """Copy the finished stages ``run`` shares with another run of the same seed; ``clinkd run`` then reuses them."""
    source_run, parts = SHARED_STAGES.get(run, (None, ()))
    for part in parts:
        source, target = out / f"{source_run}-s{seed}" / part, out / f"{run}-s{seed}" / part
        if source.is_dir() and not target.exists():
            shutil.copytree(source, target)


def run_folder(out: Path, run: str, seed: int, threads: int | None, config: str) -> Path:
    """``clinkd run`` for one run and seed unless its ``metrics.json`` exists; returns the folder."""
    folder = out / f"{run}-s{seed}"
    if not (folder / "metrics.json").is_file():
        share_stages(out, run, seed)
        command = [
            str(Path(sys.executable).with_name("clinkd")),
            "run",
            config,
            f"name={folder.name}",
            f"seed={seed}",
            f"output_dir={out}",
            *RUNS[run],
        ]
        if threads:
            command.append(f"train.threads={threads}")
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    parser.add_argument("--collect", action="store_true", help="only read finished runs; run nothing")
    args = parser.parse_args(argv)

    seeded = {}
    for seed in args.seeds:
        folders = {
            run: (args.out / f"{run}-s{seed}")
            if args.collect
            else run_folder(args.out, run, seed, args.threads, args.config)
            for run in RUNS
        }
        seeded[seed] = {run: json.loads((folder / "metrics.json").read_text()) for run, folder in folders.items()}
    rows = seed_rows(seeded)
    print(f"seeds {args.seeds}, runs under {args.out}\n")
    print(scores_table(rows))
    print()
    print(comparisons_table(rows))


if __name__ == "__main__":
    main()
