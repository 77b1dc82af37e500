"""BiRD / Med-GRIT-270k files: read them as they are shipped, and write them back.

A file is a JSON list of ``{"id": str, "conversations": [[question, answer], ...]}``. The image is
``<images_dir>/<id>.png``, the modality is the id prefix before the first ``_``, and the first question
carries the Qwen-VL image reference ``Picture 1: <img>…</img>\\n``, which the loader strips. Boxes are
Qwen-VL ``<ref>X</ref><box>(x1,y1),(x2,y2)</box>`` on the 0–1000 scale. Test data comes as one file per
task (``test_VG|ROC|RC|MIA.json`` or BiRD's ``test_VG|RO|GC|MII.json``) and only each record's first
conversation is scored (BiRD's "OneConv" rule).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clinkd.boxes import BoxStyle, convert_markup
from clinkd.data.records import TASKS, Sample, Turn, UnknownTaskError, canonical_task
from clinkd.data.validation import (
    DataError,
    DataIssues,
    ImageCheck,
    ImageChecker,
    IssueKind,
    OnError,
    RecordProblem,
    check_on_error,
    collect_samples,
    read_json_records,
    validated_sample,
    warn_if_unobserved,
)
from clinkd.io import atomic_write_json, unreachable_reason

# Qwen-VL's image reference: an optional "Picture N: " label, the tag, and one following newline.
_IMAGE_TAG = re.compile(r"(?:Picture\s*\d+:\s*)?<img>.*?</img>\n?", re.DOTALL)
_TEST_FILE = re.compile(r"test_([a-z]+)\.json", re.IGNORECASE)


def strip_image_tag(question: str) -> str:
    """``question`` without its ``[Picture N: ]<img>…</img>[\\n]`` references."""
    return _IMAGE_TAG.sub("", question)


def image_tag(image: Path) -> str:
    """The reference BiRD puts before the first question: ``Picture 1: <img>NAME</img>\\n``."""
    return f"Picture 1: <img>{image.name}</img>\n"


def medgrit_id(record: Any) -> str | None:
    """The record's id when it has a string one (for issue reports on malformed records)."""
    if isinstance(record, dict) and isinstance(record.get("id"), str):
        return record["id"]
    return None


def _conversation_pairs(record: Any, first_only: bool) -> list[tuple[str, str]]:
    """The ``[question, answer]`` string pairs of a record, or ``BAD_RECORD``."""
    if not isinstance(record, dict):
        raise RecordProblem(IssueKind.BAD_RECORD, f"record is a {type(record).__name__}, expected an object")
    if not medgrit_id(record):
        raise RecordProblem(IssueKind.BAD_RECORD, f"'id' must be a non-empty string, got {record.get('id')!r}")
    if any(part in record["id"] for part in ("/", "\\", "..")):  # the id names the image file <images>/<id>.png
        raise RecordProblem(
            IssueKind.BAD_RECORD,
            f"'id' {record['id']!r} holds a path separator or '..'; it must name a file in the image folder",
        )
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise RecordProblem(
            IssueKind.BAD_RECORD, f"'conversations' must be a non-empty list, got {conversations!r:.80}"
        )
    pairs = conversations[:1] if first_only else conversations
    for number, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(text, str) for text in pair)):
            raise RecordProblem(
                IssueKind.BAD_RECORD, f"conversations[{number}] must be [question, answer] strings, got {pair!r:.80}"
            )
    return [(question, answer) for question, answer in pairs]


def medgrit_samples(
    records: list,
    path: Path,
    images_dir: Path,
    *,
    checker: ImageChecker,
    task: str | None = None,
    first_conversation_only: bool = False,
    on_error: OnError = "skip",
    issues: DataIssues,
) -> list[Sample]:
    """Validated samples from an already-parsed Med-GRIT JSON list (see :func:`load_medgrit`)."""

    def to_sample(index: int, record: Any) -> Sample:
        pairs = _conversation_pairs(record, first_conversation_only)
        turns = [Turn(strip_image_tag(question), answer) for question, answer in pairs]
        record_id = record["id"]
        return validated_sample(
            record_id, images_dir / f"{record_id}.png", turns, checker, task=task, source=f"{path}#{index}"
        )

    return collect_samples(records, path, to_sample, medgrit_id, on_error, issues)


def load_medgrit(
    path: str | Path,
    images_dir: str | Path,
    *,
    task: str | None = None,
    first_conversation_only: bool = False,
    on_error: OnError = "skip",
    issues: DataIssues | None = None,
    check_images: bool | ImageCheck | str | ImageChecker = True,
) -> list[Sample]:
    """Samples of a BiRD/Med-GRIT JSON file, in file order.

    ``task`` (a paper name or BiRD tag) is stored canonicalised on every sample;
    ``first_conversation_only`` keeps ``conversations[0]`` (the test-file rule). ``check_images``:
    ``True``/``"verify"``, ``"exists"`` or ``False``/``"none"`` (see :class:`ImageCheck`), or an :class:`ImageChecker`
    (its pixel limit, and its cache shared with other loaders).
    """
    path = Path(path)
    collector = DataIssues() if issues is None else issues
    records = read_json_records(path, check_on_error(on_error), collector)
    samples = (
        []
        if records is None
        else medgrit_samples(
            records,
            path,
            Path(images_dir),
            checker=ImageChecker.of(check_images),
            task=None if task is None else canonical_task(task),
            first_conversation_only=first_conversation_only,
            on_error=on_error,
            issues=collector,
        )
    )
    warn_if_unobserved(collector, issues)
    return samples


def find_test_files(data_dir: str | Path) -> dict[str, Path]:
    """``{task: path}`` for the per-task test files directly in ``data_dir``, in :data:`TASKS` order.

    Matches ``test_<TAG>.json`` with any letter case, TAG a paper task (VG, ROC, RC, MIA) or a BiRD tag
    (VG, RO, GC, MII). Files with other tags are ignored; two files for one task raise :class:`DataError`.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data directory {data_dir} {unreachable_reason(data_dir) or 'is not a directory'}")
    found: dict[str, Path] = {}
    for path in sorted(data_dir.iterdir()):
        match = _TEST_FILE.fullmatch(path.name)
        if match is None or not path.is_file():
            continue
        try:
            task = canonical_task(match.group(1))
        except UnknownTaskError:
            continue
        if task in found:
            raise DataError(f"two test files for task {task}: {found[task]} and {path}")
        found[task] = path
    return {task: found[task] for task in TASKS if task in found}


def load_test_split(
    data_dir: str | Path,
    images_dir: str | Path | None = None,
    *,
    tasks: Iterable[str] | None = None,
    on_error: OnError = "skip",
    issues: DataIssues | None = None,
    check_images: bool | ImageCheck | str | ImageChecker = True,
) -> dict[str, list[Sample]]:
    """``{task: samples}`` from the per-task test files, first conversation only, ``Sample.task`` set.

    ``images_dir`` defaults to ``data_dir/images``; ``tasks`` (paper names or BiRD tags) defaults to every
    task that has a file. A requested task without a file raises FileNotFoundError.
    """
    data_dir = Path(data_dir)
    images_dir = data_dir / "images" if images_dir is None else Path(images_dir)
    files = find_test_files(data_dir)
    wanted = list(files) if tasks is None else [canonical_task(name) for name in tasks]
    missing = [task for task in wanted if task not in files]
    if missing or not wanted:
        raise FileNotFoundError(
            f"no test file for {', '.join(missing) or 'any task'} in {data_dir} "
            "(expected test_VG|ROC|RC|MIA.json or test_VG|RO|GC|MII.json)"
        )
    collector = DataIssues() if issues is None else issues
    checker = ImageChecker.of(check_images)  # shared, so an image used by several tasks is checked once
    split = {}
    for task in wanted:
        records = read_json_records(files[task], check_on_error(on_error), collector)
        split[task] = (
            []
            if records is None
            else medgrit_samples(
                records,
                files[task],
                images_dir,
                checker=checker,
                task=task,
                first_conversation_only=True,
                on_error=on_error,
                issues=collector,
            )
        )
    warn_if_unobserved(collector, issues)
    return split


def medgrit_record(sample: Sample) -> dict:
    """The Med-GRIT record of ``sample``: image tag before the first question, Qwen-VL box markup."""
    if not sample.turns:
        raise ValueError(f"sample {sample.id!r} ({sample.source or 'no source'}) has no turns to write")
    conversations = [
        [convert_markup(turn.question, BoxStyle.QWEN_VL), convert_markup(turn.answer, BoxStyle.QWEN_VL)]
        for turn in sample.turns
    ]
    conversations[0][0] = image_tag(sample.image) + conversations[0][0]
    return {"id": sample.id, "conversations": conversations}


def write_medgrit(samples: Iterable[Sample], path: str | Path) -> None:
    """Write ``samples`` as a Med-GRIT JSON list, atomically; :func:`load_medgrit` reads it back unchanged."""
    atomic_write_json(path, [medgrit_record(sample) for sample in samples])
