"""The Gradio web demo: upload an image or pick a test record, choose a task, ask; see the answer and its boxes.

Layout: on the left the image (upload, or picked from a dataset's test records), the task (``auto``
guesses it from the question), the question and an optional ground-truth box; on the right the
answer, the image with the boxes drawn (:mod:`clinkd.interactive.overlay` colours: red answer,
blue asked region, green ground truth) and, when a selector is given and ticked, its candidates
with their scores, best first.

A selector is any :class:`clinkd.engine.generate.Selector` (``clinkd.sasg.pipeline.SELECTORS``: beam or SASG); its
ranked candidates, when it gives them, are listed.

The server binds 127.0.0.1 unless told otherwise; gradio's analytics are off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from clinkd.batching import InputFormat
from clinkd.boxes import Box, BoxError
from clinkd.engine.generate import Selector
from clinkd.images import PIL_PIXEL_LIMIT
from clinkd.interactive.infer import (
    DEFAULT_MAX_NEW_TOKENS,
    InferInputError,
    InferResult,
    parse_ground_truth,
    prepare_request,
    render_overlay,
    run_request,
    without_markup,
)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home, before gradio is imported

TASK_CHOICES = ("auto", "VG", "ROC", "RC", "MIA")
CANDIDATE_HEADERS = ["rank", "candidate", "score"]  # SASG: the raw CLIP score τ·cos; "invalid" for an unscorable one
EXAMPLES_PER_CELL = 2


@dataclass(frozen=True)
class DemoSettings:
    """Generation settings; take them from the recipe the model was trained with (:meth:`from_config`)."""

    input_format: InputFormat = InputFormat()
    max_new_tokens: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MAX_NEW_TOKENS))
    num_beams: int = 1
    max_image_pixels: int = PIL_PIXEL_LIMIT

    @classmethod
    def from_config(cls, cfg) -> "DemoSettings":
        return cls(
            InputFormat.of(cfg), dict(cfg.predict.max_new_tokens), cfg.predict.num_beams, cfg.data.max_image_pixels
        )

    def run_options(self, task: str) -> dict:
        """Keyword arguments of :func:`run_request` for ``task``."""
        return {
            "input_format": self.input_format,
            "max_new_tokens": self.max_new_tokens.get(task, DEFAULT_MAX_NEW_TOKENS[task]),
            "num_beams": self.num_beams,
        }


@dataclass(frozen=True)
class Example:
    """A test record offered in the picker: its image, task, question and reference answer."""

    label: str
    image: Path
    task: str
    question: str
    reference: str
    ground_truth: Box | None


def load_examples(data_dir: str | Path, per_cell: int = EXAMPLES_PER_CELL) -> list[Example]:
    """The first ``per_cell`` test records of every (task, modality) in ``data_dir``; VG ones carry their answer box."""
    from clinkd.data.medgrit import load_test_split

    examples = []
    for task, samples in load_test_split(data_dir, check_images="exists").items():
        taken: dict[str, int] = {}
        for sample in samples:
            if taken.get(sample.modality, 0) >= per_cell:
                continue
            taken[sample.modality] = taken.get(sample.modality, 0) + 1
            turn = sample.turns[0]
            truth = Box.from_text(turn.answer) if task == "VG" else None
            examples.append(Example(f"{task} · {sample.id}", sample.image, task, turn.question, turn.answer, truth))
    return examples


@dataclass(frozen=True)
class DemoAnswer:
    """What the page shows after a question: answer text, drawn image, candidate rows, a status line."""

    answer: str
    overlay: Image.Image | None
    candidates: list[list]
    status: str


def answer_question(
    model,
    processor,
    image: str | Path | None,
    question: str,
    task: str = "auto",
    ground_truth: str = "",
    selector: Selector | None = None,
    settings: DemoSettings = DemoSettings(),
) -> DemoAnswer:
    """One click of *Ask*: bad input becomes an ``error:`` status instead of an exception."""
    if not image:
        return DemoAnswer("", None, [], "**error:** upload an image or pick an example first")
    try:
        request = prepare_request(image, question or "", None if task == "auto" else task, settings.max_image_pixels)
        truth = parse_ground_truth(ground_truth)
        result = run_request(model, processor, request, selector, **settings.run_options(request.task))
    except (InferInputError, BoxError) as error:
        return DemoAnswer("", None, [], f"**error:** {error}")
    rows = [
        [rank, without_markup(c.text), round(c.score, 4) if math.isfinite(c.score) else "invalid"]
        for rank, c in enumerate(result.candidates, 1)
    ]
    return DemoAnswer(result.answer_text, render_overlay(result, truth), rows, _status(result))


def _status(result: InferResult) -> str:
    boxes = ", ".join(f"{item.label} {item.box.to_text('plain')}" for item in result.boxes) or "none"
    line = f"**{result.task}** · sent: `{result.question}` · boxes: {boxes}"
    if result.selector:
        line += f" · selected by {result.selector} from {len(result.candidates)} candidates"
    if result.box_error:
        line += f" · the answer's box markup does not parse: {result.box_error}"
    return line


def build_demo(
    model,
    processor,
    data_dir: str | Path | None = None,
    selector: Selector | None = None,
    settings: DemoSettings = DemoSettings(),
):
    """The ``gradio.Blocks`` app (not launched). ``data_dir`` adds the test-record picker."""
    import gradio as gr

    examples = {example.label: example for example in load_examples(data_dir)} if data_dir else {}
    with gr.Blocks(title="ClinKD demo", analytics_enabled=False) as blocks:
        gr.Markdown(
            "## ClinKD: ask about a medical image\nRed: the answer's boxes · blue: the asked region · green: ground "
            "truth"
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", sources=["upload"], label="Image", elem_id="image-input")
                picker = gr.Dropdown(
                    choices=list(examples),
                    value=None,
                    label="…or pick a test record",
                    visible=bool(examples),
                    elem_id="picker",
                )
                task = gr.Radio(list(TASK_CHOICES), value="auto", label="Task", elem_id="task")
                question = gr.Textbox(
                    label="Question",
                    placeholder="Where is the <ref>liver</ref>?  ·  liver  ·  (120,300),(480,700)",
                    elem_id="question",
                )
                truth = gr.Textbox(
                    label="Ground-truth box (optional)", placeholder="(x1,y1),(x2,y2) on 0–1000", elem_id="ground-truth"
                )
                use_selector = gr.Checkbox(
                    value=selector is not None,
                    label=f"{getattr(selector, 'name', 'SASG')} selection",
                    visible=selector is not None,
                )
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                reference = gr.Textbox(
                    label="Reference answer", interactive=False, visible=bool(examples), elem_id="reference"
                )
                overlay = gr.Image(type="pil", label="Answer with boxes", interactive=False, elem_id="overlay")
                candidates = gr.Dataframe(
                    headers=CANDIDATE_HEADERS,
                    label="Candidates (best first)",
                    visible=selector is not None,
                    elem_id="candidates",
                )
                status = gr.Markdown(elem_id="status")

        def pick(label):
            example = examples.get(label)
            if example is None:
                return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
            truth_text = example.ground_truth.to_text("plain") if example.ground_truth else ""
            return str(example.image), example.task, example.question, truth_text, without_markup(example.reference)

        def ask_click(image_path, question_text, task_choice, truth_text, selecting):
            shown = answer_question(
                model,
                processor,
                image_path,
                question_text,
                task_choice,
                truth_text,
                selector if selecting else None,
                settings,
            )
            return shown.answer, shown.overlay, shown.candidates, shown.status

        picker.change(pick, inputs=picker, outputs=[image, task, question, truth, reference])
        ask.click(
            ask_click,
            inputs=[image, question, task, truth, use_selector],
            outputs=[answer, overlay, candidates, status],
        )
        question.submit(
            ask_click,
            inputs=[image, question, task, truth, use_selector],
            outputs=[answer, overlay, candidates, status],
        )
    return blocks


def launch_demo(
    blocks, host: str = "127.0.0.1", port: int | None = None, data_dir: str | Path | None = None, block: bool = False
) -> str:
    """Serve ``blocks`` on ``host:port`` and return its URL; ``block=False`` returns at once (tests).

    Of ``data_dir`` only the example images are served (the picker loads them), not its annotations or other images;
    server-side rendering is off, so no Node process is started.
    """
    allowed: Sequence[str] = [str(example.image.resolve()) for example in load_examples(data_dir)] if data_dir else []
    blocks.queue(default_concurrency_limit=1)  # one generation at a time: the model is not shared across threads
    blocks.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        allowed_paths=list(allowed),
        ssr_mode=False,
        quiet=True,
        show_error=True,
    )
    return blocks.local_url
