"""LLaMA-Factory ShareGPT files: read them, write them (with ``dataset_info.json``), convert to them.

A record is ``{"messages": [{"role": "user", "content": "<image>Q1"}, {"role": "assistant", "content": "A1"},
...], "images": ["<path>"]}``; the older ``{"conversations": [{"from": "human", "value": ...},
{"from": "gpt", ...}], "images": [...]}`` variant is read too. LLaMA-Factory accepts a record when the
roles alternate user/assistant starting with user, the message count is even, and the number of
``<image>`` placeholders equals ``len(images)``; a relative image path is resolved against its
``media_dir``, which defaults to the folder holding ``dataset_info.json``. Med-GRIT samples have
exactly one image, so the reader requires one image and one placeholder, in a user message.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from clinkd.boxes import BoxStyle, convert_markup
from clinkd.data.medgrit import medgrit_samples
from clinkd.data.records import Sample, Turn
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
from clinkd.images import eight_bit_file
from clinkd.io import atomic_write_json

IMAGE_PLACEHOLDER = "<image>"
DATASET_INFO_FILE = "dataset_info.json"
DEFAULT_NAME = "clinkd_medgrit"
CONVERTED_IMAGES_DIR = "images"  # in the output folder: 8-bit copies of 16-bit inputs
InputFormat = Literal["medgrit", "sharegpt"]
ImagePaths = Literal["absolute", "relative"]

# The placeholder, with the "Picture N: " label and newline a converted Qwen-VL prompt may keep.
_PLACEHOLDER = re.compile(r"(?:Picture\s*\d+:\s*)?<image>\n?")


@dataclass(frozen=True)
class _Variant:
    """Key names of one ShareGPT flavour."""

    messages: str
    role: str
    content: str
    user: str
    assistant: str


_VARIANTS = (
    _Variant("messages", "role", "content", "user", "assistant"),  # LLaMA-Factory's OpenAI-style tags
    _Variant("conversations", "from", "value", "human", "gpt"),  # original ShareGPT tags
)
WRITTEN_VARIANT = _VARIANTS[0]


def sharegpt_id(record: Any) -> str | None:
    """The Med-GRIT id of a record (its image's file stem), when it has one image path."""
    images = record.get("images") if isinstance(record, dict) else None
    if isinstance(images, str):
        return Path(images).stem
    if isinstance(images, list) and len(images) == 1 and isinstance(images[0], str):
        return Path(images[0]).stem
    return None


def _variant_of(record: dict) -> _Variant:
    for variant in _VARIANTS:
        if variant.messages in record:
            return variant
    raise RecordProblem(IssueKind.BAD_RECORD, "record has neither 'messages' nor 'conversations'")


def _image_of(record: dict) -> str:
    """The record's single image path (LLaMA-Factory also allows a bare string for one image)."""
    images = record.get("images")
    if isinstance(images, str):
        images = [images]
    if not (isinstance(images, list) and len(images) == 1 and isinstance(images[0], str) and images[0]):
        raise RecordProblem(IssueKind.BAD_RECORD, f"'images' must hold exactly one path, got {images!r:.80}")
    return images[0]


def _turns_of(record: dict) -> list[Turn]:
    """Question/answer turns; the one ``<image>`` placeholder (in a user message) is removed."""
    variant = _variant_of(record)
    messages = record[variant.messages]
    if not isinstance(messages, list) or not messages or len(messages) % 2:
        raise RecordProblem(
            IssueKind.BAD_RECORD, f"'{variant.messages}' must be a non-empty list of even length, got {messages!r:.80}"
        )
    texts = []
    for number, message in enumerate(messages):
        expected = variant.assistant if number % 2 else variant.user
        if not isinstance(message, dict) or not isinstance(message.get(variant.content), str):
            raise RecordProblem(
                IssueKind.BAD_RECORD, f"{variant.messages}[{number}] must have a string '{variant.content}'"
            )
        if message.get(variant.role) != expected:
            raise RecordProblem(
                IssueKind.BAD_RECORD,
                f"{variant.messages}[{number}] has {variant.role} {message.get(variant.role)!r}, expected "
                f"{expected!r} (roles alternate {variant.user}/{variant.assistant}, starting with {variant.user})",
            )
        texts.append(message[variant.content])
    placeholders = [text.count(IMAGE_PLACEHOLDER) for text in texts]
    if sum(placeholders) != 1 or sum(placeholders[1::2]):
        raise RecordProblem(
            IssueKind.BAD_RECORD,
            f"expected one {IMAGE_PLACEHOLDER} placeholder, in a {variant.user} message, for the one image; "
            f"found {sum(placeholders[0::2])} in {variant.user} and {sum(placeholders[1::2])} in "
            f"{variant.assistant} messages",
        )
    return [Turn(_PLACEHOLDER.sub("", question), answer) for question, answer in zip(texts[0::2], texts[1::2])]


def sharegpt_samples(
    records: list,
    path: Path,
    images_dir: Path,
    *,
    checker: ImageChecker,
    on_error: OnError = "skip",
    issues: DataIssues,
) -> list[Sample]:
    """Validated samples from an already-parsed ShareGPT JSON list (see :func:`load_sharegpt`)."""

    def to_sample(index: int, record: Any) -> Sample:
        if not isinstance(record, dict):
            raise RecordProblem(IssueKind.BAD_RECORD, f"record is a {type(record).__name__}, expected an object")
        image = Path(_image_of(record))
        turns = _turns_of(record)
        # Joining keeps an absolute image path as it is.
        return validated_sample(image.stem, images_dir / image, turns, checker, task=None, source=f"{path}#{index}")

    return collect_samples(records, path, to_sample, sharegpt_id, on_error, issues)


def load_sharegpt(
    path: str | Path,
    images_dir: str | Path | None = None,
    *,
    on_error: OnError = "skip",
    issues: DataIssues | None = None,
    check_images: bool | ImageCheck | str | ImageChecker = True,
) -> list[Sample]:
    """Samples of a ShareGPT JSON file, in file order; ``Sample.id`` is the image's file stem.

    Relative image paths are resolved against ``images_dir``, by default the file's own folder
    (LLaMA-Factory's ``media_dir`` default). Box markup of any style is validated and kept as written.
    """
    path = Path(path)
    collector = DataIssues() if issues is None else issues
    records = read_json_records(path, check_on_error(on_error), collector)
    samples = [] if records is None else sharegpt_samples(
        records,
        path,
        path.parent if images_dir is None else Path(images_dir),
        checker=ImageChecker.of(check_images),
        on_error=on_error,
        issues=collector,
    )
    warn_if_unobserved(collector, issues)
    return samples


# ---- writing ----------------------------------------------------------------------------------


def dataset_info_entry(name: str) -> dict:
    """The ``dataset_info.json`` entry that makes LLaMA-Factory read ``<name>.json`` as written here."""
    variant = WRITTEN_VARIANT
    return {
        name: {
            "file_name": f"{name}.json",
            "formatting": "sharegpt",
            "columns": {"messages": variant.messages, "images": "images"},
            "tags": {
                "role_tag": variant.role,
                "content_tag": variant.content,
                "user_tag": variant.user,
                "assistant_tag": variant.assistant,
            },
        }
    }


def sharegpt_record(sample: Sample, box_style: BoxStyle | str, image_path: str) -> dict:
    """One record: ``<image>`` once, at the start of the first user message; markup in ``box_style``."""
    if not sample.turns:
        raise ValueError(f"sample {sample.id!r} ({sample.source or 'no source'}) has no turns to write")
    messages = []
    for number, turn in enumerate(sample.turns):
        if IMAGE_PLACEHOLDER in turn.question + turn.answer:
            raise ValueError(
                f"sample {sample.id!r} ({sample.source or 'no source'}) turn {number} contains a literal "
                f"{IMAGE_PLACEHOLDER}, which LLaMA-Factory would count as a second image"
            )
        prefix = IMAGE_PLACEHOLDER if number == 0 else ""
        messages.append({"role": "user", "content": prefix + convert_markup(turn.question, box_style)})
        messages.append({"role": "assistant", "content": convert_markup(turn.answer, box_style)})
    return {"messages": messages, "images": [image_path]}


def _image_path(image: Path, out_dir: Path, image_paths: ImagePaths) -> str:
    absolute = os.path.abspath(image)
    if image_paths == "absolute":
        return absolute
    if image_paths == "relative":
        return Path(os.path.relpath(absolute, os.path.abspath(out_dir))).as_posix()
    raise ValueError(f"image_paths must be 'absolute' or 'relative', got {image_paths!r}")


def read_dataset_info(out_dir: Path) -> dict:
    """The entries of ``out_dir/dataset_info.json`` (``{}`` when absent); a broken file raises :class:`DataError`."""
    info_path = out_dir / DATASET_INFO_FILE
    if not info_path.exists():
        return {}
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{info_path} is not valid JSON ({error}); not overwriting it") from error
    if not isinstance(info, dict):
        raise DataError(f"{info_path} holds a JSON {type(info).__name__}, expected an object; not overwriting it")
    return info


def write_sharegpt(
    samples: Iterable[Sample],
    out_dir: str | Path,
    *,
    name: str = DEFAULT_NAME,
    box_style: BoxStyle | str = BoxStyle.QWEN2_VL,
    image_paths: ImagePaths = "absolute",
) -> Path:
    """Write ``out_dir/<name>.json`` and add (or replace) its entry in ``out_dir/dataset_info.json``; both atomic.

    Image paths are absolute, or relative to ``out_dir`` (LLaMA-Factory's default ``media_dir`` when
    ``dataset_dir`` is ``out_dir``). Returns the data file's path.
    """
    out_dir, box_style = Path(out_dir), BoxStyle(box_style)
    data_file = out_dir / f"{name}.json"
    records = [
        sharegpt_record(sample, box_style, _image_path(sample.image, out_dir, image_paths)) for sample in samples
    ]
    info = read_dataset_info(out_dir)  # before any write, so a broken info file leaves out_dir untouched
    atomic_write_json(data_file, records)
    atomic_write_json(out_dir / DATASET_INFO_FILE, info | dataset_info_entry(name))  # other entries are kept
    return data_file


# ---- conversion -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertSummary:
    input_path: Path
    input_format: InputFormat
    records_read: int
    samples_written: int
    turns_written: int
    data_file: Path
    dataset_info_file: Path
    images_converted: int = 0
    images_dir: Path | None = None

    @property
    def skipped(self) -> int:
        return self.records_read - self.samples_written

    def __str__(self) -> str:
        lines = [
            f"{self.input_path} ({self.input_format}): {self.records_read} records read, "
            f"{self.samples_written} written ({self.turns_written} turns), {self.skipped} skipped",
            f"  data:    {self.data_file}",
            f"  entry:   {self.data_file.stem} in {self.dataset_info_file}",
        ]
        if self.images_converted:
            lines.append(f"  images:  {self.images_converted} 16-bit images written as 8-bit PNGs to {self.images_dir}")
        return "\n".join(lines)


def detect_format(records: list, path: Path) -> InputFormat:
    """``medgrit`` or ``sharegpt``, from the first record that is an object with a telling key.

    ShareGPT: ``messages``, ``images``, or ``conversations`` holding objects; Med-GRIT: ``conversations``
    holding ``[q, a]`` lists. Raises :class:`DataError` when no record tells.
    """
    for record in records:
        if not isinstance(record, dict):
            continue
        if "messages" in record or "images" in record:
            return "sharegpt"
        conversations = record.get("conversations")
        if isinstance(conversations, list) and conversations:
            if isinstance(conversations[0], dict):
                return "sharegpt"
            if isinstance(conversations[0], list):
                return "medgrit"
    raise DataError(f"{path}: cannot tell Med-GRIT from ShareGPT; no record has messages/images/conversations")


def convert(
    input_path: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str = DEFAULT_NAME,
    box_style: BoxStyle | str = BoxStyle.QWEN2_VL,
    on_error: OnError = "skip",
    issues: DataIssues | None = None,
    check_images: bool | ImageCheck | str | ImageChecker = True,
    image_paths: ImagePaths = "absolute",
) -> ConvertSummary:
    """Read a Med-GRIT or ShareGPT file (detected from content), validate it, write LLaMA-Factory ShareGPT.

    A 16-bit image (which LLaMA-Factory would clip to white) is written to ``out_dir/images/<id>.png`` as the
    8-bit RGB that clinkd's own loader makes of it (:func:`clinkd.images.to_rgb`), and referenced there.

    ``images_dir`` holds ``<id>.png`` for Med-GRIT input, or is the base of relative paths for ShareGPT
    input. Bad records are handled by ``on_error``; a run that would write no sample raises
    :class:`DataError` under either policy, with the issue summary in its message.
    """
    input_path, images_dir = Path(input_path), Path(images_dir)
    collector = DataIssues() if issues is None else issues
    records = read_json_records(input_path, check_on_error(on_error), collector)
    if records is None:
        raise DataError(f"nothing to convert in {input_path}:\n{collector.summary()}")
    input_format = detect_format(records, input_path)
    load = medgrit_samples if input_format == "medgrit" else sharegpt_samples
    samples = load(
        records, input_path, images_dir, checker=ImageChecker.of(check_images), on_error=on_error, issues=collector
    )
    if not samples:
        raise DataError(f"no valid record in {input_path}:\n{collector.summary()}")
    images_out = Path(out_dir) / CONVERTED_IMAGES_DIR
    readable = [replace(sample, image=eight_bit_file(sample.image, images_out)) for sample in samples]
    data_file = write_sharegpt(readable, out_dir, name=name, box_style=box_style, image_paths=image_paths)
    warn_if_unobserved(collector, issues)
    return ConvertSummary(
        input_path=input_path,
        input_format=input_format,
        records_read=len(records),
        samples_written=len(samples),
        turns_written=sum(len(sample.turns) for sample in samples),
        data_file=data_file,
        dataset_info_file=Path(out_dir) / DATASET_INFO_FILE,
        images_converted=sum(new.image != old.image for new, old in zip(readable, samples)),
        images_dir=images_out,
    )
