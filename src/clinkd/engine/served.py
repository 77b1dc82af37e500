"""Predictions from a model behind an OpenAI-compatible endpoint (``clinkd predict --endpoint``, docs/served.md).

Each test record is one chat request: the user turn holds the image as a base64 PNG data URL (the image as clinkd
reads it) and the question in the recipe's box markup (boxes in pixels of the resized image for ``boxes:
qwen2.5-vl``), followed on a new line by the task's instruction when the recipe gives one; greedy (temperature 0),
``max_tokens`` = ``predict.max_new_tokens[task]``. ``concurrency`` requests are in flight at once, each with
:class:`clinkd.endpoint.ChatEndpoint`'s timeout and retries. An answer is appended (fsynced) to the ``<TASK>.jsonl``
a local model writes as soon as it arrives, so a killed run loses only the requests in flight and a rerun asks only
the records without a row (:func:`clinkd.engine.generate.pending_samples`). A row's ``response`` is the answer with
its boxes on 0–1000 (:func:`clinkd.model.box_convention.read_served_answer`), so ``clinkd evaluate`` scores it as
any other; the row also keeps the answer as served (``raw_response``), how its boxes were read, the reply's token
counts and attempts. A request that still fails after its retries stops the run with
:class:`clinkd.endpoint.EndpointError` once the requests in flight are written. ``<out>/served.json`` records the
endpoint, every invocation (requests, answers, seconds, requests/s, tokens) and totals over the files' rows.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from clinkd.batching import InputFormat, build_messages
from clinkd.config import ServedModelConfig
from clinkd.data.records import Sample
from clinkd.endpoint import ChatEndpoint, ChatReply, EndpointError
from clinkd.engine.generate import pending_samples, prediction_row, renumber
from clinkd.io import append_jsonl, atomic_write_json, read_jsonl
from clinkd.model.box_convention import PixelBoxes, image_size, read_served_answer
from clinkd.model.processor import MERGE_SIZE, PATCH_SIZE, load_image
from clinkd.progress import make_progress

RECORD_FILE = "served.json"


def image_data_url(path: Path, square_size: int | None = None) -> str:
    """The image as clinkd reads it (RGB, 8 bits, resampled to ``square_size``), as a base64 PNG data URL."""
    buffer = io.BytesIO()
    load_image(path, square_size).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ServedModel:
    """A served model's side of prediction: the request for a test record, and the prediction row of its reply."""

    def __init__(
        self, endpoint: ChatEndpoint, cfg: ServedModelConfig, max_new_tokens: dict[str, int], input_format: InputFormat
    ):
        self.endpoint = endpoint
        self.cfg = cfg
        self.max_new_tokens = max_new_tokens
        self.input_format = input_format  # its square_size only: the served model's own budget resizes what it is sent
        # Qwen2.5-VL's resize (factor 28 = patch 14 × merge 2) with the served model's budget.
        self.pixels = (
            PixelBoxes(PATCH_SIZE * MERGE_SIZE, cfg.min_pixels, cfg.max_pixels)
            if cfg.min_pixels and cfg.max_pixels
            else None
        )

    def payload(self, task: str, sample: Sample) -> dict:
        """The chat-completions body for one test record (module docstring)."""
        size = image_size(sample.image, self.input_format.square_size)
        to_model = partial(self.pixels.to_model, image_size=size) if self.cfg.boxes == "qwen2.5-vl" else None
        [message] = build_messages(sample.turns[:1], self.input_format.box_style, False, to_model)
        question = message["content"][-1]["text"]
        instruction = self.cfg.instructions.get(task)
        content = [
            {"type": "image_url", "image_url": {"url": image_data_url(sample.image, self.input_format.square_size)}},
            {"type": "text", "text": f"{question}\n{instruction}" if instruction else question},
        ]
        return {
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": self.max_new_tokens[task],
        }

    def answer(self, task: str, index: int, sample: Sample) -> tuple[dict | None, ChatReply]:
        """The reply to the record at position ``index`` of ``task``, and its prediction row (None when it failed)."""
        reply = self.endpoint.complete(self.payload(task, sample))
        if reply.text is None:
            return None, reply
        read = read_served_answer(
            reply.text,
            self.cfg.boxes,
            self.input_format.box_style,
            image_size(sample.image, self.input_format.square_size),
            self.pixels,
        )
        extra = {
            "raw_response": reply.text,
            "box_format": read.box_format,
            "box_scale": read.box_scale,
            "box_ambiguous": read.ambiguous,
            "usage": reply.usage,
            "attempts": reply.attempts,
        }
        return prediction_row(task, index, sample, read.response, extra), reply


@dataclass
class ServedStats:
    """One invocation: answers written, HTTP requests made (retries included), tokens, wall time."""

    started: str
    answers: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    failed: str | None = None  # the error that stopped the run

    def add(self, reply: ChatReply) -> None:
        self.answers += 1
        self.prompt_tokens += reply.usage.get("prompt_tokens", 0)
        self.completion_tokens += reply.usage.get("completion_tokens", 0)

    def to_json(self) -> dict:
        per_second = {
            name: round(count / self.seconds, 3) if self.seconds else None
            for name, count in (("requests_per_s", self.requests), ("answers_per_s", self.answers))
        }
        return {**asdict(self), "seconds": round(self.seconds, 3), **per_second}


def write_served_predictions(
    served: ServedModel, tests: dict[str, list[Sample]], out_dir: Path
) -> tuple[dict[str, Path], dict]:
    """Every task's missing rows from ``served`` (module docstring); returns the JSONL path per task and the run record.
    Raises EndpointError, after writing what arrived and the run record, when a request failed after its retries."""
    paths = {task: out_dir / f"{task}.jsonl" for task in tests}
    stats = ServedStats(datetime.now(timezone.utc).isoformat(timespec="seconds"))
    clock, sent_before = time.monotonic(), served.endpoint.requests_sent
    stats.failed = _ask_missing(served, tests, paths, stats, out_dir)
    stats.seconds, stats.requests = time.monotonic() - clock, served.endpoint.requests_sent - sent_before
    record = record_run(out_dir, served.cfg, served.endpoint.url, stats, paths.values())
    if stats.failed:
        raise EndpointError(stats.failed)
    for task, samples in tests.items():
        renumber(paths[task], samples)
    return paths, record


def _ask_missing(
    served: ServedModel, tests: dict[str, list[Sample]], paths: dict[str, Path], stats: ServedStats, out_dir: Path
) -> str | None:
    """Ask every record without a row, ``concurrency`` at a time, appending each answer as it arrives; the first
    failure cancels the requests not yet sent and is returned."""
    todo = {task: pending_samples(paths[task], samples) for task, samples in tests.items()}
    clock, failure = time.monotonic(), None
    pool = ThreadPoolExecutor(max_workers=served.cfg.concurrency, thread_name_prefix="served")
    try:
        with make_progress() as progress:
            bars = {
                task: progress.add_task(
                    f"ask {task}", total=len(tests[task]), completed=len(tests[task]) - len(todo[task]), info=""
                )
                for task in tests
            }
            futures = {
                pool.submit(served.answer, task, index, sample): (task, sample)
                for task, pending in todo.items()
                for index, sample in pending
            }
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                (row, reply), (task, sample) = future.result(), futures[future]
                if row is None:
                    failure = failure or _failure_message(served, task, sample, reply, out_dir)
                    for waiting in futures:
                        waiting.cancel()  # those in flight still finish, and are written
                    continue
                append_jsonl(paths[task], [row])
                stats.add(reply)
                progress.update(
                    bars[task], advance=1, info=f"{stats.answers / (time.monotonic() - clock):.1f} answers/s"
                )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an interrupt drops the queued requests
    return failure


def _failure_message(served: ServedModel, task: str, sample: Sample, reply: ChatReply, out_dir: Path) -> str:
    return (
        f"{task} record {sample.id} ({sample.source or sample.image.name}): {served.endpoint.url} failed "
        f"{reply.attempts} "
        f"time(s), last with {reply.error}; the answers received are saved in {out_dir}: rerun the same command to ask "
        "only the records still missing"
    )


def record_run(out_dir: Path, cfg: ServedModelConfig, url: str, stats: ServedStats, paths: Sequence[Path]) -> dict:
    """Add ``stats`` to ``<out_dir>/served.json`` with the endpoint's settings (never a key: only the name of its
    variable) and totals over every row of ``paths``; returns the record."""
    path = out_dir / RECORD_FILE
    previous = json.loads(path.read_text(encoding="utf-8")).get("invocations", []) if path.is_file() else []
    rows = [row for task_path in paths if task_path.is_file() for row in read_jsonl(task_path)]
    record = {
        "endpoint": {"url": url, **cfg.model_dump(mode="json", exclude={"base_url"})},
        "invocations": [*previous, stats.to_json()],
        "rows": served_row_totals(rows),
    }
    atomic_write_json(path, record)
    return record


def served_row_totals(rows: Sequence[dict]) -> dict:
    """Rows, tokens, box readings (format × scale, ambiguous) and multi-line answers over served prediction rows."""
    usage = Counter()
    for row in rows:
        usage.update(row.get("usage") or {})
    readings = Counter(
        f"{row['box_format']} on {row['box_scale']}" if row.get("box_format") else "no box" for row in rows
    )
    return {
        "answers": len(rows),
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "box_readings": dict(sorted(readings.items())),
        "ambiguous": sum(bool(row.get("box_ambiguous")) for row in rows),
        # BiRD's clean-up keeps only the text between an answer's first two newlines (clinkd.metrics.cleanup).
        "multi_line": sum("\n" in row.get("response", "") for row in rows),
    }
