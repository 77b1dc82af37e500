"""Write the synthetic benchmark in the Med-GRIT/BiRD layout.

``out_dir/images/<id>.png``, ``train.json`` (one record per image, one turn per task in shuffled order),
``test_{VG,ROC,RC,MIA}.json`` (one single-turn record per test image), ``meta.json`` and
``objects.jsonl`` (every drawn object with its attributes). Ids are ``<modality>_synth--<split>--<index>``.

Determinism: image ``index`` of ``split`` is drawn from ``SeedSequence([seed, stream(split), index])``
alone, so files are byte-identical for a seed whatever the generation order, train and test images
come from independent streams, and growing ``images`` keeps the existing images unchanged.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clinkd.data.medgrit import write_medgrit
from clinkd.data.records import MODALITIES, TASKS, Sample, Turn
from clinkd.io import atomic_write_json, atomic_write_text
from clinkd.synth.modalities import MODALITY_SPECS
from clinkd.synth.scene import LESION_RATE, Scene, render_scene
from clinkd.synth.tasks import DEFAULT_TURNS, TEMPLATES, single_turn, train_turns

SYNTH_VERSION = 1
GENERATOR = "clinkd.synth"  # meta.json's mark of a generated folder (real data is never regenerated)
SPLIT_STREAMS: dict[str, int] = {"train": 1, "test": 2}
_SYNTH_PNG = re.compile(r"[a-z]+_synth--(?:train|test)--\d{6}\.png")
MIN_IMAGE_SIZE = 32
PNG_COMPRESS_LEVEL = 1  # noisy pixels barely compress: half the encoding time of level 6 for ~10% more bytes


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate` wrote."""

    out_dir: Path
    seed: int
    image_size: int
    train_images: int
    train_turns: int
    test_records: dict[str, int]

    @property
    def test_images(self) -> int:
        return sum(self.test_records.values())

    def __rich__(self) -> str:  # what `console.print(summary)` in the CLI shows
        return str(self)

    def __str__(self) -> str:
        tests = ", ".join(f"{task} {count}" for task, count in self.test_records.items())
        return (
            f"synthetic benchmark (seed {self.seed}, {self.image_size}px) in {self.out_dir}: "
            f"{self.train_images} train images / {self.train_turns} turns; test records {tests}"
        )


@dataclass(frozen=True)
class ImageJob:
    """One image to draw; ``task`` is set for test images (each test image serves one task)."""

    split: str
    index: int
    modality: str
    task: str | None = None

    @property
    def id(self) -> str:
        return synth_id(self.modality, self.split, self.index)


def synth_id(modality: str, split: str, index: int) -> str:
    """``ct_synth--train--000000``: the modality prefix first, so ``modality_of`` reads it."""
    return f"{modality}_synth--{split}--{index:06d}"


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image: ``SeedSequence([seed, stream(split), index])``."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_STREAMS[split], index]))


def plan(images: int, test_per_cell: int) -> list[ImageJob]:
    """Train images round-robin over the modalities, then ``test_per_cell`` test images per (task, modality)."""
    train = [ImageJob("train", index, MODALITIES[index % len(MODALITIES)]) for index in range(images)]
    cells = [(task, modality) for task in TASKS for modality in MODALITIES]
    test = [
        ImageJob("test", number * test_per_cell + k, modality, task)
        for number, (task, modality) in enumerate(cells)
        for k in range(test_per_cell)
    ]
    return train + test


def draw(
    job: ImageJob, seed: int, image_size: int, turns_per_task: dict[str, int] | None = None
) -> tuple[Scene, list[Turn]]:
    """The scene of ``job`` and its turns (``turns_per_task`` for train, the job's task for test)."""
    rng = image_rng(seed, job.split, job.index)
    scene = render_scene(job.modality, rng, image_size)
    turns = train_turns(scene, rng, turns_per_task) if job.task is None else [single_turn(job.task, scene, rng)]
    return scene, turns


def generate(
    out_dir: str | Path,
    seed: int = 0,
    images: int = 1600,
    test_per_cell: int = 25,
    image_size: int = 112,
    progress: Callable[[int, int], None] | None = None,
    turns_per_task: dict[str, int] | None = None,
) -> SynthSummary:
    """Generate the benchmark into ``out_dir`` (see the module docstring); ``train.json`` is written last.

    ``images`` training images are spread round-robin over the 8 modalities; ``test_per_cell`` test
    images are drawn per (task, modality). ``progress(done, total)`` is called after every image, with
    ``total = images + 32·test_per_cell``. ``turns_per_task`` sets the training turn mix per image
    (default one turn per task; a referring task asks at most one turn per object). Test files are
    always one turn per record.
    Stale ``*_synth--*.png`` files from an earlier, larger run in ``out_dir/images`` are removed.
    """
    if seed < 0:
        raise ValueError(f"synth seed must be >= 0, got {seed}")
    if images < 1 or test_per_cell < 0:
        raise ValueError(f"synth needs images >= 1 and test_per_cell >= 0, got {images} and {test_per_cell}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"synth image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    turns_per_task = validate_turn_mix(turns_per_task)
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    # train.json marks a finished dataset: drop an old one so an interrupted re-run never looks complete.
    (out_dir / "train.json").unlink(missing_ok=True)
    jobs = plan(images, test_per_cell)
    train: list[Sample] = []
    tests: dict[str, list[Sample]] = {task: [] for task in TASKS}
    object_rows: list[dict] = []
    for done, job in enumerate(jobs, start=1):
        scene, turns = draw(job, seed, image_size, turns_per_task)
        path = image_dir / f"{job.id}.png"
        Image.fromarray(scene.pixels).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        sample = Sample(job.id, path, job.modality, turns, task=job.task)
        (train if job.task is None else tests[job.task]).append(sample)
        object_rows.append(_object_row(job, scene))
        if progress is not None:
            progress(done, len(jobs))
    _remove_stale_images(image_dir, {f"{job.id}.png" for job in jobs})
    atomic_write_text(out_dir / "objects.jsonl", "".join(json.dumps(row) + "\n" for row in object_rows))
    atomic_write_json(out_dir / "meta.json", _meta(seed, images, test_per_cell, image_size, turns_per_task, jobs))
    for task, samples in tests.items():
        write_medgrit(samples, out_dir / f"test_{task}.json")
    write_medgrit(train, out_dir / "train.json")
    return SynthSummary(
        out_dir=out_dir,
        seed=seed,
        image_size=image_size,
        train_images=len(train),
        train_turns=sum(len(sample.turns) for sample in train),
        test_records={task: len(samples) for task, samples in tests.items()},
    )


def validate_turn_mix(turns_per_task: dict[str, int] | None) -> dict[str, int]:
    """The full per-task turn counts (missing tasks: 0); refuses unknown tasks, negatives and an empty mix."""
    counts = dict(DEFAULT_TURNS if turns_per_task is None else turns_per_task)
    unknown = sorted(set(counts) - set(TASKS))
    if unknown:
        raise ValueError(f"synth turns: unknown task(s) {', '.join(unknown)}; expected {', '.join(TASKS)}")
    if any(count < 0 for count in counts.values()) or not any(counts.values()):
        raise ValueError(f"synth turns: counts must be >= 0 and not all 0, got {counts}")
    return {task: counts.get(task, 0) for task in TASKS}


def synth_parameters(
    seed: int, images: int, test_per_cell: int, image_size: int, turns_per_task: dict[str, int] | None
) -> dict:
    """What determines the generated files (kept in ``meta.json``, compared before reusing a folder)."""
    return {
        "version": SYNTH_VERSION,
        "seed": seed,
        "image_size": image_size,
        "train_images": images,
        "test_per_cell": test_per_cell,
        "train_turns_per_task": validate_turn_mix(turns_per_task),
    }


def read_meta(out_dir: str | Path) -> dict | None:
    """``meta.json`` of a folder this module generated, or None (no such file, or not written by it)."""
    path = Path(out_dir) / "meta.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == GENERATOR else None


def _object_row(job: ImageJob, scene: Scene) -> dict:
    row = {"id": job.id, "split": job.split, "modality": job.modality, "task": job.task}
    row["objects"] = [obj.to_json() for obj in scene.objects]
    return row


def _remove_stale_images(image_dir: Path, keep: set[str]) -> None:
    for path in image_dir.iterdir():
        if _SYNTH_PNG.fullmatch(path.name) and path.name not in keep:
            path.unlink()


def _meta(
    seed: int, images: int, test_per_cell: int, image_size: int, turns_per_task: dict[str, int], jobs: list[ImageJob]
) -> dict:
    train_counts = Counter(job.modality for job in jobs if job.split == "train")
    return {
        "generator": GENERATOR,
        **synth_parameters(seed, images, test_per_cell, image_size, turns_per_task),
        "test_images": len(jobs) - images,
        "lesion_rate": LESION_RATE,
        "counts": {
            "train": {modality: train_counts[modality] for modality in MODALITIES},
            "test": {task: {modality: test_per_cell for modality in MODALITIES} for task in TASKS},
        },
        "classes": {
            key: {
                "lead": spec.lead,
                "structures": [cls.name for cls in spec.structures],
                "lesions": [cls.name for cls in spec.lesions],
            }
            for key, spec in MODALITY_SPECS.items()
        },
        "templates": {task: list(templates) for task, templates in TEMPLATES.items()},
    }
