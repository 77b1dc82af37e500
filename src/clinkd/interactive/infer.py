"""One question about one image: input checks, task and question completion, the answer and its boxes.

:func:`prepare_request` checks everything a user types before any model is loaded; :func:`infer`
runs a loaded model on a request (or on raw inputs) and returns an :class:`InferResult`.

Task completion (``task=None`` guesses it from the question):

===========================  ==============================  ===============================================
question                     guessed task                    question sent (when only a target is given)
===========================  ==============================  ===============================================
``liver`` (a name)           VG                              ``Where is the <ref>liver</ref> in this image?``
``(120,300),(480,700)``      ROC (RC with ``--task rc``)     ``What is the object in <box>(120,300),(480,700)</box>?``
a box + describe/caption…    RC                              unchanged
``<ref>…`` or where/locate…  VG                              unchanged
anything else                MIA                             unchanged (empty with ``--task mia``: the MIA template)
===========================  ==============================  ===============================================

The templates are the first of :data:`clinkd.synth.tasks.TEMPLATES`, the wording the models are
trained on. Bare ``(x1,y1),(x2,y2)`` boxes in a question are tagged ``<box>…</box>`` before sending.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from clinkd.batching import InputFormat, PromptCollator, collator_for
from clinkd.boxes import (
    ANY_REF,
    BOX_PATTERNS,
    Box,
    BoxError,
    BoxStyle,
    convert_markup,
    convert_markup_leniently,
    either_group,
    format_ref,
    parse_boxes,
)
from clinkd.config import PredictConfig
from clinkd.data.records import MODALITY_NAMES, Sample, Turn, UnknownTaskError, canonical_task
from clinkd.engine.generate import Selector, generate_responses
from clinkd.images import PIL_PIXEL_LIMIT, VIEW_PIXELS, unusable_reason
from clinkd.interactive.overlay import BoxRole, LabelledBox, draw_boxes
from clinkd.io import unreachable_reason
from clinkd.model.loading import CheckpointError, load_checkpoint
from clinkd.model.processor import load_image
from clinkd.synth.tasks import TEMPLATES

DICOM_MAGIC_OFFSET = 128  # DICOM Part 10: a 128-byte preamble, then "DICM"
DEFAULT_MAX_NEW_TOKENS = PredictConfig().max_new_tokens  # the recipe's per-task budgets, not a second copy
QUESTION_WORDS = frozenset(
    "where what which who how why is are can could does do find locate give please show describe".split()
)
DESCRIBE = re.compile(r"\b(describe|description|caption|say about|tell me about)\b", re.IGNORECASE)
LOCATE = re.compile(r"\b(where|locate|find|bounding box|which region|position of)\b", re.IGNORECASE)
MAX_TARGET_WORDS = 5
MAX_LABEL_CHARS = 40


class InferInputError(ValueError):
    """A user input that infer cannot use: missing or unreadable image, empty or malformed question."""


@dataclass(frozen=True)
class RankedCandidate:
    """One candidate response of a selector, with its score (SASG: its CLIP score)."""

    text: str
    score: float


@dataclass(frozen=True)
class InferRequest:
    """A checked request: the image file to feed, the task, and the question as it will be sent."""

    image: Path
    task: str
    question: str


@dataclass(frozen=True)
class InferResult:
    """The answer to one request.

    ``answer`` is the model's text with its box and ref tokens; ``boxes`` are the boxes it gave
    (labelled with the phrase each follows, when there is one); ``query_boxes`` the boxes of the
    question (ROC/RC). ``candidates`` is empty without a selector; ``box_error`` tells why
    ``boxes`` is empty although the answer had box markup.
    """

    image: Path
    task: str
    question: str
    answer: str
    boxes: tuple[LabelledBox, ...]
    query_boxes: tuple[LabelledBox, ...]
    candidates: tuple[RankedCandidate, ...] = ()
    selector: str | None = None
    box_error: str | None = None

    @property
    def answer_text(self) -> str:
        """The answer without markup tokens (see :func:`without_markup`)."""
        return without_markup(self.answer)

    def overlay_boxes(self, ground_truth: Box | None = None) -> list[LabelledBox]:
        """What to draw: the query boxes, the ground truth, then the answer's boxes on top."""
        truth = [LabelledBox(ground_truth, "ground truth", BoxRole.GROUND_TRUTH)] if ground_truth else []
        return [*self.query_boxes, *truth, *self.boxes]

    def to_json(self) -> dict:
        return {
            "image": str(self.image),
            "task": self.task,
            "question": self.question,
            "answer": self.answer,
            "answer_text": self.answer_text,
            "boxes": [item.to_json() for item in self.boxes],
            "query_boxes": [item.to_json() for item in self.query_boxes],
            "candidates": [
                {"text": c.text, "score": c.score if math.isfinite(c.score) else None} for c in self.candidates
            ],
            "selector": self.selector,
            "box_error": self.box_error,
        }


def without_markup(text: str) -> str:
    """``text`` with its ref/box markup dropped (``liver(120,300),(480,700)``); as it is when a box is broken."""
    return convert_markup_leniently(text, BoxStyle.PLAIN)


# ---- input checks ------------------------------------------------------------------------------
def is_dicom(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(DICOM_MAGIC_OFFSET + 4)
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def open_image(path: str | Path, max_pixels: int = PIL_PIXEL_LIMIT) -> Image.Image:
    """The image at ``path`` as RGB (grayscale, 16-bit and, with pydicom, DICOM files are converted), decoded reduced to
    :data:`~clinkd.images.VIEW_PIXELS` when it is much larger.

    Raises :class:`InferInputError` naming the file when it is missing, not a file, not an image, or an image the model
    cannot take (:func:`~clinkd.images.unusable_reason`, ``max_pixels``: ``data.max_image_pixels``).
    """
    path = Path(path)
    missing = unreachable_reason(path)
    if missing is not None:
        raise InferInputError(f"image file {path} {missing}")
    if not path.is_file():
        raise InferInputError(f"image path {path} is not a file")
    if is_dicom(path):
        with tempfile.TemporaryDirectory(prefix="clinkd-dicom-") as scratch:
            return open_image(dicom_to_png(path, Path(scratch)), max_pixels)
    try:
        with Image.open(path) as image:
            unusable = unusable_reason(image.size, max_pixels)
        if unusable is None:
            return load_image(path, max_pixels=VIEW_PIXELS)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InferInputError(f"{path} is not an image that PIL can read ({type(error).__name__}: {error})") from None
    raise InferInputError(f"image {path} cannot be fed to the model: {unusable}")


def dicom_to_png(path: Path, out_dir: Path) -> Path:
    """Write a DICOM file's first frame as ``out_dir/<stem>.png`` (16-bit when its pixels need it).

    The stored values are used as they are, after the rescale slope/intercept; :func:`load_image`
    then stretches the used range to 8 bits (no windowing).
    """
    try:
        import pydicom
    except ImportError:
        raise InferInputError(f"{path} is a DICOM file: reading it needs pydicom (pip install pydicom)") from None
    import numpy as np

    try:
        dataset = pydicom.dcmread(str(path))
        pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
    except Exception as error:  # pydicom raises many types for broken or compressed files
        raise InferInputError(f"{path}: cannot read the DICOM pixels ({type(error).__name__}: {error})") from None
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[0]  # a multi-frame file: its first frame
    pixels = pixels * float(getattr(dataset, "RescaleSlope", 1)) + float(getattr(dataset, "RescaleIntercept", 0))
    if pixels.ndim == 3:
        image = Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")[..., :3])
    else:
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 65535.0 if high > low else np.zeros_like(pixels)
        image = Image.fromarray(scaled.astype("uint16"))  # mode I;16: load_image stretches it to 8 bits
    out = out_dir / f"{path.stem}.png"
    image.save(out)
    return out


def parse_ground_truth(text: str | None) -> Box | None:
    """``"(x1,y1),(x2,y2)"`` (any box style) on the 0–1000 scale, or ``None`` for no text."""
    if not text or not text.strip():
        return None
    try:
        return Box.from_text(text)
    except BoxError as error:
        raise InferInputError(f"ground-truth box: {error}") from None


# ---- task and question -------------------------------------------------------------------------
def question_boxes(question: str) -> list[Box]:
    try:
        return parse_boxes(question)
    except BoxError as error:
        raise InferInputError(f"question: {error}") from None


def tag_bare_boxes(question: str) -> str:
    """Write bare ``(x1,y1),(x2,y2)`` pairs as ``<box>(x1,y1),(x2,y2)</box>`` (already tagged text is kept)."""
    if "<box>" in question or "<|box_start|>" in question:
        return question
    plain = BOX_PATTERNS[BoxStyle.PLAIN]
    return plain.sub(lambda match: Box.from_text(match.group(0)).to_text(BoxStyle.QWEN_VL), question)


def is_target_only(question: str) -> bool:
    """A bare name (``right kidney``): at most 5 words, no punctuation, not opening with a question word."""
    words = question.split()
    return (
        0 < len(words) <= MAX_TARGET_WORDS
        and re.fullmatch(r"[\w\s'-]+", question) is not None
        and words[0].lower() not in QUESTION_WORDS
    )


def is_box_only(question: str) -> bool:
    """Nothing but one box (and punctuation/space)."""
    rest = BOX_PATTERNS[BoxStyle.PLAIN].sub("", convert_markup(question, BoxStyle.PLAIN))
    return not re.sub(r"[\s.,;:?!]", "", rest)


def guess_task(question: str) -> str:
    """VG, ROC, RC or MIA from the wording (see the module docstring's table)."""
    if question_boxes(question):
        return "RC" if DESCRIBE.search(question) else "ROC"
    if ANY_REF.search(question) or LOCATE.search(question) or is_target_only(question):
        return "VG"
    return "MIA"


def complete_question(task: str, question: str) -> str:
    """The question to send for ``task``: a template around a bare target, else ``question`` with tagged boxes."""
    boxes = question_boxes(question)
    if task == "MIA":
        return question or TEMPLATES["MIA"][0]
    if not question:
        raise InferInputError(f"empty question: task {task} needs {'a name to find' if task == 'VG' else 'a box'}")
    if task == "VG":
        if boxes:
            raise InferInputError(f"task VG finds a named object; the question has a box instead: {question!r}")
        target = convert_markup(question, BoxStyle.PLAIN)  # `<ref>liver</ref>` alone is a target too
        return TEMPLATES["VG"][0].format(ref=format_ref(target)) if is_target_only(target) else question
    if len(boxes) != 1:
        raise InferInputError(
            f"task {task} asks about one region: give exactly one box like (120,300),(480,700) in the question "
            f"(found {len(boxes)})"
        )
    if is_box_only(question):
        return TEMPLATES[task][0].format(box=boxes[0].to_text(BoxStyle.QWEN_VL))
    return tag_bare_boxes(question)


def prepare_request(
    image: str | Path, question: str, task: str | None = None, max_image_pixels: int = PIL_PIXEL_LIMIT
) -> InferRequest:
    """Check the inputs (no model needed) and complete the task and question.

    Raises :class:`InferInputError` for a missing/unreadable image or one the model cannot take (see
    :func:`open_image`), an empty question (unless the task is MIA), an unknown task, or a question that does not fit
    the task.
    """
    image = Path(image)
    open_image(image, max_image_pixels)
    question = " ".join(question.split())
    if task:
        try:
            task = canonical_task(task)
        except UnknownTaskError as error:
            raise InferInputError(str(error)) from None
    elif not question:
        raise InferInputError("empty question: ask something, or give --task mia for a whole-image analysis")
    else:
        task = guess_task(question)
    return InferRequest(image=image, task=task, question=complete_question(task, question))


# ---- the model ---------------------------------------------------------------------------------
def load_model(path: str | Path, dtype: str = "float32"):
    """:func:`load_checkpoint`, with every way a directory can fail to be a checkpoint as one
    :class:`CheckpointError`."""
    try:
        return load_checkpoint(path, dtype)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a loadable clinkd or Qwen2-VL checkpoint: {first_line}") from None


def labelled_answer_boxes(answer: str) -> tuple[tuple[LabelledBox, ...], str | None]:
    """The answer's boxes, each labelled with its ``<ref>`` phrase when refs and boxes pair up one to one
    (``box 1``, ``box 2``… otherwise), and the parse error when the box markup is broken."""
    try:
        boxes = parse_boxes(answer)
    except BoxError as error:
        return (), str(error)
    refs = [either_group(m).strip() for m in ANY_REF.finditer(answer)]
    labels = refs if len(refs) == len(boxes) else [f"box {index + 1}" for index in range(len(boxes))]
    return tuple(LabelledBox(box, label) for box, label in zip(boxes, labels)), None


def _modality_guess(image: Path) -> str:
    """The Med-GRIT modality when the file name starts with one (``ct_…png``), else ``unknown``."""
    prefix = image.stem.split("_", 1)[0].lower()
    return prefix if prefix in MODALITY_NAMES else "unknown"


def run_request(
    model,
    processor,
    request: InferRequest,
    select: Selector | None = None,
    *,
    input_format: InputFormat = InputFormat(),
    max_new_tokens: int | None = None,
    num_beams: int = 1,
) -> InferResult:
    """Generate the answer to a checked request (greedy/beam with ``num_beams``, or ``select``'s choice)."""
    model.eval()
    collator = collator_for(PromptCollator, model, processor, input_format)
    tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS[request.task]
    image = request.image
    with tempfile.TemporaryDirectory(prefix="clinkd-infer-") as scratch:
        if is_dicom(image):
            image = dicom_to_png(image, Path(scratch))  # the collator reads image files
        sample = Sample("infer", image, _modality_guess(request.image), [Turn(request.question, "")], task=request.task)
        if select is None:
            answer = generate_responses(model, processor, collator, [sample], tokens, num_beams)[0]
            candidates: tuple[RankedCandidate, ...] = ()
        else:
            choice = select(model, processor, collator, request.task, [sample], tokens)[0]
            candidates = tuple(RankedCandidate(c.text, float(c.score)) for c in choice.ranked)
            answer = choice.response
    boxes, box_error = labelled_answer_boxes(answer)
    short_answer = without_markup(answer)
    # A ROC answer is the region's class name: the asked box is the place to show it.
    is_name = 0 < len(short_answer) <= MAX_LABEL_CHARS and "<" not in short_answer
    label = f"asked: {short_answer}" if request.task == "ROC" and is_name else "asked"
    query = tuple(LabelledBox(box, label, BoxRole.QUERY) for box in question_boxes(request.question))
    return InferResult(
        image=request.image,
        task=request.task,
        question=request.question,
        answer=answer,
        boxes=boxes,
        query_boxes=query,
        candidates=candidates,
        selector=getattr(select, "name", None),
        box_error=box_error,
    )


def infer(
    model,
    processor,
    image_path: str | Path,
    question: str,
    task: str | None = None,
    select: Selector | None = None,
    **options,
) -> InferResult:
    """Check the inputs, complete the question, answer it; ``options`` go to :func:`run_request`."""
    return run_request(model, processor, prepare_request(image_path, question, task), select, **options)


def render_overlay(result: InferResult, ground_truth: Box | None = None) -> Image.Image:
    """The request's image with the result's boxes (and ``ground_truth``) drawn on it."""
    return draw_boxes(open_image(result.image), result.overlay_boxes(ground_truth))
