"""Validation of data files: the error policy, the issue collector and the per-record checks.

Every loader reads a JSON list of records and turns each into a :class:`~clinkd.data.records.Sample`.
A problem is reported as a :class:`DataIssue` (file, 0-based record index, record id, kind, message) to
a :class:`DataIssues` collector, then handled by the ``on_error`` policy:

* ``"skip"`` — the record (or, for a malformed file, the whole file) is dropped and counted;
* ``"stop"`` — the first problem raises :class:`DataError`, whose message names the file and record.

A record is checked in this order and the first failing check is its one reported issue:
shape → modality prefix → non-empty texts → box/ref markup → image (the costly check last) → id not seen before in the
file.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_args

from PIL import Image

from clinkd.boxes import BOX_TAGS, REF_TAGS, BoxError, BoxStyle, parse_boxes
from clinkd.data.records import Sample, Turn, UnknownModalityError, modality_of
from clinkd.images import PIL_PIXEL_LIMIT, unusable_reason
from clinkd.io import atomic_write_text, unreachable_reason

logger = logging.getLogger(__name__)

OnError = Literal["skip", "stop"]
ISSUES_FILE = "data_issues.txt"  # every problem, next to the output of the command that read the data
CONSOLE_EXAMPLES = 5  # issues a console summary shows; ISSUES_FILE has them all
ON_ERROR_CHOICES: tuple[str, ...] = get_args(OnError)


class IssueKind(str, Enum):
    """What went wrong; the values are the keys of :attr:`DataIssues.counts`."""

    MALFORMED_JSON = "malformed_json"  # whole file: not UTF-8 JSON, or its top level is not a list
    BAD_RECORD = "bad_record"  # record shape (keys, types, roles, image list) is wrong
    UNKNOWN_MODALITY = "unknown_modality"  # id prefix is not one of the 8 Med-GRIT modalities
    EMPTY_TEXT = "empty_text"  # a question or answer is empty or blank
    BAD_BOX = "bad_box"  # a box does not parse, leaves 0–1000, has x2<x1 or y2<y1, or tags are unbalanced
    MISSING_IMAGE = "missing_image"  # the image file does not exist (or is a broken link, a symlink loop)
    CORRUPT_IMAGE = "corrupt_image"  # PIL cannot identify or verify the image
    UNUSABLE_IMAGE = "unusable_image"  # the model cannot take it: a side below one patch, aspect ratio, too many pixels
    DUPLICATE_ID = "duplicate_id"  # a usable record whose id an earlier record of the file already has


@dataclass(frozen=True)
class DataIssue:
    """One problem. ``index`` is the 0-based position in the file's JSON list (``None`` for the whole file)."""

    file: str
    index: int | None
    record_id: str | None
    kind: IssueKind
    message: str

    @property
    def location(self) -> str:
        """``data/test_VG.json record 17 (id 'ct_…')``, or just the file for a whole-file issue."""
        where = self.file
        if self.index is not None:
            where += f" record {self.index}"
        if self.record_id is not None:
            where += f" (id {self.record_id!r})"
        return where

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class DataError(ValueError):
    """A data problem that stops the run; ``issue`` is set when it comes from one record or file."""

    def __init__(self, message: str, issue: DataIssue | None = None) -> None:
        super().__init__(message)
        self.issue = issue


class RecordProblem(Exception):
    """Raised by a check on one record; the loader turns it into a :class:`DataIssue`."""

    def __init__(self, kind: IssueKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class FileTally:
    records_read: int = 0
    records_kept: int = 0


def check_on_error(on_error: str) -> OnError:
    """``on_error`` itself, or ValueError if it is not ``skip``/``stop``."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}")
    return on_error  # type: ignore[return-value]


class DataIssues:
    """Collects issues and per-file record tallies; one instance may span several files and loaders."""

    def __init__(self) -> None:
        self.issues: list[DataIssue] = []
        self.files: dict[str, FileTally] = {}

    def report(self, issue: DataIssue, on_error: OnError) -> None:
        """Record ``issue``; under ``stop`` raise it as a :class:`DataError`."""
        self.issues.append(issue)
        if check_on_error(on_error) == "stop":
            raise DataError(str(issue), issue)

    def tally(self, file: str, records_read: int, records_kept: int) -> None:
        counts = self.files.setdefault(file, FileTally())
        counts.records_read += records_read
        counts.records_kept += records_kept

    @property
    def total(self) -> int:
        return len(self.issues)

    @property
    def counts(self) -> dict[str, int]:
        """Issue count per kind value, in :class:`IssueKind` order, kinds with no issue left out."""
        by_kind = Counter(issue.kind for issue in self.issues)
        return {kind.value: by_kind[kind] for kind in IssueKind if by_kind[kind]}

    def summary(self, examples: int | None = CONSOLE_EXAMPLES) -> str:
        """A short table: record tallies, issue counts by kind, and the first ``examples`` issues (``None``: all)."""
        read = sum(tally.records_read for tally in self.files.values())
        kept = sum(tally.records_kept for tally in self.files.values())
        lines = [f"{len(self.files)} file(s), {read} record(s) read, {kept} kept, {read - kept} skipped"]
        if not self.issues:
            return lines[0] + ", no problems"
        width = max(len(kind) for kind in self.counts)
        lines.append(f"{'problem':<{width}}  count")
        lines += [f"{kind:<{width}}  {count:>5}" for kind, count in self.counts.items()]
        shown = self.issues if examples is None else self.issues[:examples]
        lines.append(f"all {self.total}:" if len(shown) == self.total else f"first {len(shown)} of {self.total}:")
        lines += [f"  [{issue.kind.value}] {issue}" for issue in shown]
        return "\n".join(lines)

    def raise_for_unusable_files(self) -> None:
        """Stop (:class:`DataError` naming the file) when a file gave no usable record: a hole in a split must not
        surface as a torch error, or as an empty task, after hours of training."""
        for file, tally in self.files.items():
            if tally.records_kept == 0:
                raise DataError(
                    f"{file}: no usable record ({self._why_empty(file, tally)}); nothing was trained or predicted"
                )

    def _why_empty(self, file: str, tally: FileTally) -> str:
        problems = [issue for issue in self.issues if issue.file == file]
        if not problems:
            return "the file holds an empty list"
        first = problems[0]
        if first.index is None:
            return first.message
        return f"{len(problems)} of {tally.records_read} records skipped, e.g. record {first.index}: {first.message}"

    def record(self, path: Path) -> str:
        """Write every issue to ``path`` (``data_issues.txt``); returns the console summary, pointing there when cut
        short."""
        atomic_write_text(path, self.summary(examples=None) + "\n")
        summary = self.summary()
        return summary + f"\n(every problem: {path})" if self.total > CONSOLE_EXAMPLES else summary


def read_json_records(path: Path, on_error: OnError, issues: DataIssues) -> list | None:
    """The JSON list in ``path``; ``None`` (after reporting) when the file is not such a list under ``skip``.

    A missing file is a usage error, not a data issue: it raises FileNotFoundError under either policy.
    """
    reason = unreachable_reason(path)
    if reason is not None:
        raise FileNotFoundError(f"data file {path} {reason}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        message = f"malformed JSON: {error}"
    else:
        if isinstance(records, list):
            return records
        message = f"top level is a JSON {type(records).__name__}, expected a list of records"
    issues.report(DataIssue(str(path), None, None, IssueKind.MALFORMED_JSON, message), on_error)
    issues.tally(str(path), 0, 0)
    return None


def collect_samples(
    records: list,
    path: Path,
    to_sample: Callable[[int, Any], Sample],
    id_of: Callable[[Any], str | None],
    on_error: OnError,
    issues: DataIssues,
) -> list[Sample]:
    """``to_sample(index, record)`` for every record; a :class:`RecordProblem` becomes an issue.

    Ids are unique per file: a usable record whose id an earlier usable one has is a ``DUPLICATE_ID`` issue (an id
    names one image, one prediction row and one score).
    """
    samples = []
    first_with: dict[str, int] = {}
    for index, record in enumerate(records):
        try:
            sample = to_sample(index, record)
            check_first_with_id(sample.id, index, first_with)
            samples.append(sample)
        except RecordProblem as problem:
            issues.report(DataIssue(str(path), index, id_of(record), problem.kind, problem.message), on_error)
    issues.tally(str(path), len(records), len(samples))
    return samples


def check_first_with_id(record_id: str, index: int, first_with: dict[str, int]) -> None:
    """Raise ``DUPLICATE_ID`` when ``first_with`` (id → record index, filled here) already has ``record_id``."""
    if record_id in first_with:
        raise RecordProblem(
            IssueKind.DUPLICATE_ID,
            f"id {record_id!r} is already record {first_with[record_id]}'s; only the first is kept",
        )
    first_with[record_id] = index


def warn_if_unobserved(issues: DataIssues, caller_issues: DataIssues | None) -> None:
    """Log the summary when records were skipped and the caller passed no collector to see them."""
    if caller_issues is None and issues.total:
        logger.warning("skipped records:\n%s", issues.summary())


# ---- per-record checks ------------------------------------------------------------------------

# Opening/closing markup that must pair up; a dangling tag would silently drop a box from scoring.
_TAGGED_STYLES = (BoxStyle.QWEN_VL, BoxStyle.QWEN2_VL)


def check_markup(text: str) -> None:
    """Raise ``BAD_BOX`` unless every box in ``text`` is valid and every box/ref tag is paired.

    Valid means what :func:`clinkd.boxes.parse_boxes` accepts (0 ≤ coords ≤ 1000, x1 ≤ x2, y1 ≤ y2),
    and for each tag style ``#open == #close == #well-formed boxes of that style``.
    """
    try:
        parse_boxes(text)
        for style in _TAGGED_STYLES:
            open_tag, close_tag = BOX_TAGS[style]
            well_formed = len(parse_boxes(text, style))
            if not text.count(open_tag) == text.count(close_tag) == well_formed:
                raise BoxError(f"unbalanced or misplaced {open_tag}…{close_tag} tags in {text!r}")
        for open_tag, close_tag in (REF_TAGS[style] for style in _TAGGED_STYLES):
            if text.count(open_tag) != text.count(close_tag):
                raise BoxError(f"unbalanced {open_tag}…{close_tag} tags in {text!r}")
    except BoxError as error:
        raise RecordProblem(IssueKind.BAD_BOX, f"bad box: {error}") from error


def check_turns(turns: Iterable[Turn]) -> None:
    """Raise for the first blank question/answer or bad markup; turns are named by 0-based index."""
    for number, turn in enumerate(turns):
        for part, text in (("question", turn.question), ("answer", turn.answer)):
            if not text.strip():
                raise RecordProblem(IssueKind.EMPTY_TEXT, f"turn {number} {part} is empty")
            try:
                check_markup(text)
            except RecordProblem as problem:
                raise RecordProblem(problem.kind, f"turn {number} {part}: {problem.message}") from problem


def check_modality(record_id: str) -> str:
    try:
        return modality_of(record_id)
    except UnknownModalityError as error:
        raise RecordProblem(IssueKind.UNKNOWN_MODALITY, str(error)) from error


class ImageCheck(str, Enum):
    """How much of each image file is checked (costs measured in ``docs/data.md``)."""

    NONE = "none"  # nothing; for reading annotations where images are absent
    EXISTS = "exists"  # the file exists
    # exists, PIL identifies it, verify() passes, the model can take its size; non-PNG files are also decoded
    VERIFY = "verify"


class ImageChecker:
    """Checks image files at one :class:`ImageCheck` level, each path once (results are cached); under ``verify`` an
    image above ``max_pixels`` (``data.max_image_pixels``) is refused from its header, never decoded."""

    def __init__(self, level: ImageCheck | str | bool = ImageCheck.VERIFY, max_pixels: int = PIL_PIXEL_LIMIT) -> None:
        if isinstance(level, bool):
            level = ImageCheck.VERIFY if level else ImageCheck.NONE
        self.level = ImageCheck(level)
        self.max_pixels = max_pixels
        self._outcomes: dict[Path, RecordProblem | None] = {}

    @classmethod
    def of(cls, check: ImageChecker | ImageCheck | str | bool) -> ImageChecker:
        """``check`` itself when it is a checker (shared across loaders), else a new checker at that level."""
        return check if isinstance(check, ImageChecker) else cls(check)

    def check(self, path: Path) -> None:
        """Raise ``MISSING_IMAGE``, ``CORRUPT_IMAGE`` or ``UNUSABLE_IMAGE`` for a bad file."""
        if self.level is ImageCheck.NONE:
            return
        if path not in self._outcomes:
            self._outcomes[path] = self._problem(path)
        if self._outcomes[path] is not None:
            raise self._outcomes[path]

    def _problem(self, path: Path) -> RecordProblem | None:
        missing = unreachable_reason(path) or (None if path.is_file() else "is not a file")
        if missing is not None:
            return RecordProblem(IssueKind.MISSING_IMAGE, f"image {path} {missing}")
        if self.level is ImageCheck.EXISTS:
            return None
        try:
            with Image.open(path) as image:
                unusable = unusable_reason(image.size, self.max_pixels)
                if unusable is not None:  # before any decode: a huge image is refused from its header
                    return RecordProblem(
                        IssueKind.UNUSABLE_IMAGE, f"image {path} cannot be fed to the model: {unusable}"
                    )
                image_format = image.format
                image.verify()  # PNG: reads every chunk to IEND and checks its CRC, so truncation fails here
            if image_format != "PNG":
                with Image.open(path) as image:
                    image.draft(
                        image.mode, (image.width // 8, image.height // 8)
                    )  # JPEG: decodes every block, at 1/8 scale
                    image.load()  # other formats' verify() skips pixel data; decode to catch truncation
        except (
            Image.DecompressionBombError
        ) as error:  # above PIL's own limit, which data.max_image_pixels never exceeds
            return RecordProblem(IssueKind.UNUSABLE_IMAGE, f"image {path} cannot be fed to the model: {error}")
        except Exception as error:  # PIL reports damage as OSError, SyntaxError, ValueError, struct.error…
            reason = f"{type(error).__name__}: {error}"
            return RecordProblem(IssueKind.CORRUPT_IMAGE, f"image {path} is unreadable: {reason}")
        return None


def validated_sample(
    record_id: str,
    image: Path,
    turns: list[Turn],
    checker: ImageChecker,
    *,
    task: str | None,
    source: str,
) -> Sample:
    """A :class:`Sample` after the modality, text, markup and image checks (in that order)."""
    modality = check_modality(record_id)
    check_turns(turns)
    checker.check(image)
    return Sample(id=record_id, image=image, modality=modality, turns=turns, task=task, source=source)
