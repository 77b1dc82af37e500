"""Correctors: rewrite a weak model output from its ground truth, and the check every rewrite must pass.

* :class:`TemplateCorrector` (offline default): the ground truth, verbatim, inside a task-specific framing
  sentence drawn per (item, round), so boxes survive by construction and labels gain varied phrasings.
* :class:`OpenAICorrector`: any OpenAI-compatible chat-completions endpoint through
:class:`clinkd.endpoint.ChatEndpoint`
  (per-request timeout; timeouts, connection errors, HTTP 408/409/429/5xx, malformed JSON and empty replies retried
  with backoff, other HTTP errors failing at once), with the prompt below (:data:`SYSTEM_PROMPT`,
  :data:`USER_PROMPT`), on a bounded thread pool. Every well-formed reply is stored in a :class:`ReplyCache` keyed
  by the SHA-256 of the request, so a rerun never sends the same request twice.

:func:`check_correction` accepts a reply only if its tagged boxes are exactly the ground truth's (as a
multiset of :class:`clinkd.boxes.Box`) and its similarity to the ground truth is at least the accept threshold.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Generator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from clinkd.boxes import Box, BoxError, BoxStyle, convert_markup, convert_markup_leniently, parse_boxes
from clinkd.chat import END_OF_TURN_TOKENS, TURN_START
from clinkd.config import ConfigError
from clinkd.endpoint import ChatEndpoint
from clinkd.io import atomic_write_json
from clinkd.reflect.similarity import Similarity

SYSTEM_PROMPT = (
    "You correct the answers of a medical visual question answering model. You are given a question about a "
    "medical image, the ground-truth answer and the model's answer. Write a corrected answer that states exactly "
    "what the ground truth states: keep only its meaning and add no finding of your own. Copy every bounding box "
    "of the ground truth character for character, in the same <box>(x1,y1),(x2,y2)</box> markup, write no other "
    "box and change no coordinate; keep <ref>...</ref> phrases. Vary the wording where you can, stay about as "
    "short as the ground truth, and reply with the corrected answer only: no quotes, no explanation."
)
USER_PROMPT = "Question: {question}\nGround-truth answer: {ground_truth}\nModel answer: {output}\nCorrected answer:"

# Framings around the verbatim ground truth; their words are all in similarity.NEUTRAL_WORDS, so a framed
# answer keeps a lexical score of 1 against its ground truth.
FRAMINGS: dict[str, tuple[str, ...]] = {
    "VG": ("It is {answer}.", "This is {answer}.", "{answer} is shown here.", "Here it is: {answer}"),
    "ROC": ("It is {answer}.", "This is {answer}.", "The object here is {answer}.", "This region shows {answer}."),
    "RC": (
        "This region shows: {answer}",
        "Here is what is seen in this region: {answer}",
        "In this region: {answer}",
        "As seen here: {answer}",
    ),
    "MIA": (
        "This image shows: {answer}",
        "Here is what is seen in this image: {answer}",
        "In this image: {answer}",
        "As seen here: {answer}",
    ),
}
CONTROL_TOKENS = (TURN_START, *END_OF_TURN_TOKENS)


class CorrectorError(ConfigError):
    """A corrector that cannot be built from the config."""


@dataclass(frozen=True)
class CorrectionRequest:
    """One weak output to correct. ``key`` names the training turn, stable across runs."""

    key: str
    round: int
    task: str
    question: str
    ground_truth: str
    output: str


@dataclass(frozen=True)
class CorrectorReply:
    """``text`` is None when every attempt failed (``error`` says why); ``raw`` is what the corrector returned."""

    text: str | None
    raw: str | None
    error: str | None
    attempts: int
    cached: bool = False


class Corrector(Protocol):
    name: str

    def correct(
        self, requests: Sequence[CorrectionRequest]
    ) -> Generator[tuple[CorrectionRequest, CorrectorReply], None, None]:
        """One reply per request, yielded as each finishes (any order)."""
        ...


# ---- acceptance -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str  # empty when accepted
    score: float | None


def tagged_boxes(text: str) -> list[Box]:
    """Every ``<box>``/``<|box_start|>`` box of ``text`` (bare coordinate pairs do not count); BoxError if one is
    malformed."""
    return parse_boxes(convert_markup(text, BoxStyle.QWEN_VL), BoxStyle.QWEN_VL)


def check_correction(text: str | None, ground_truth: str, similarity: Similarity, accept_threshold: float) -> Verdict:
    """Accept ``text`` as a training answer only if it is non-empty, carries no chat control token, keeps the
    ground truth's boxes exactly (same multiset, no extra box) and scores ≥ ``accept_threshold``."""
    if text is None or not text.strip():
        return Verdict(False, "empty reply", None)
    if any(token in text for token in CONTROL_TOKENS):
        return Verdict(False, "chat control token in reply", None)
    try:
        found = Counter(tagged_boxes(text))
    except BoxError as error:
        return Verdict(False, f"malformed box: {error}", None)
    expected = Counter(tagged_boxes(ground_truth))
    if found != expected:
        missing = [box.to_text(BoxStyle.PLAIN) for box in (expected - found).elements()]
        extra = [box.to_text(BoxStyle.PLAIN) for box in (found - expected).elements()]
        return Verdict(False, f"boxes differ from the ground truth (missing {missing}, extra {extra})", None)
    score = similarity.scores([text], [ground_truth])[0]
    if score < accept_threshold:
        return Verdict(False, f"meaning check failed: similarity {score:.3f} < {accept_threshold}", score)
    return Verdict(True, "", score)


# ---- template (offline) ---------------------------------------------------------------------------


def _draw(key: str, round_index: int, n: int) -> int:
    """A deterministic choice in ``range(n)`` from the item key and round (stable across runs and machines)."""
    return int(hashlib.sha256(f"{key}|{round_index}".encode()).hexdigest(), 16) % n


def frame(template: str, answer: str) -> str:
    """``template`` around ``answer`` without doubling the answer's final punctuation."""
    return re.sub(r"([.!?])\.$", r"\1", template.format(answer=answer.strip()))


class TemplateCorrector:
    """Offline corrector: the ground truth in one of :data:`FRAMINGS` for its task, drawn per (key, round)."""

    name = "template"

    def rewrite(self, request: CorrectionRequest) -> str:
        framings = FRAMINGS[request.task]
        return frame(framings[_draw(request.key, request.round, len(framings))], request.ground_truth)

    def correct(
        self, requests: Sequence[CorrectionRequest]
    ) -> Generator[tuple[CorrectionRequest, CorrectorReply], None, None]:
        for request in requests:
            text = self.rewrite(request)
            yield request, CorrectorReply(text, text, None, 1)


# ---- OpenAI-compatible endpoint -------------------------------------------------------------------


def prompt_text(text: str) -> str:
    """Text in ``<ref>``/``<box>`` markup for the prompt; a model output with a broken box is sent as it is."""
    return convert_markup_leniently(text, BoxStyle.QWEN_VL)


def render_messages(request: CorrectionRequest) -> list[dict]:
    """The chat messages sent for one request (docs/reflect.md shows them)."""
    user = USER_PROMPT.format(
        question=prompt_text(request.question),
        ground_truth=prompt_text(request.ground_truth),
        output=prompt_text(request.output),
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


class ReplyCache:
    """Well-formed replies on disk, one JSON file per request hash (``<root>/<h[:2]>/<h>.json``), written atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # a damaged entry is a miss: the request is sent again and the entry rewritten

    def put(self, key: str, entry: dict) -> None:
        atomic_write_json(self.path(key), entry)


class OpenAICorrector:
    """Corrections from an OpenAI-compatible chat endpoint (module docstring: retries, backoff, cache)."""

    name = "openai"

    def __init__(
        self,
        endpoint: ChatEndpoint,
        *,
        model: str,
        cache_dir: str | Path,
        concurrency: int = 4,
        temperature: float = 0.7,
        max_tokens: int = 256,
    ):
        self.endpoint = endpoint
        self.base_url = endpoint.base_url
        self.model = model
        self.concurrency = concurrency
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.cache = ReplyCache(cache_dir)

    @property
    def requests_sent(self) -> int:
        """HTTP requests actually made (cache hits excluded)."""
        return self.endpoint.requests_sent

    @classmethod
    def from_config(cls, cfg, default_cache_dir: Path) -> "OpenAICorrector":
        """From a :class:`clinkd.config.OpenAICorrectorConfig`; the key is read from ``cfg.api_key_env``."""
        return cls(
            ChatEndpoint.from_config(cfg, "reflect.openai"),
            model=cfg.model,
            cache_dir=cfg.cache_dir or default_cache_dir,
            concurrency=cfg.concurrency,
            temperature=cfg.temperature,
            max_tokens=cfg.max_tokens,
        )

    def payload(self, request: CorrectionRequest) -> dict:
        return {
            "model": self.model,
            "messages": render_messages(request),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def cache_key(self, payload: dict) -> str:
        """SHA-256 of the endpoint and the exact request body."""
        return hashlib.sha256(json.dumps({"base_url": self.base_url, **payload}, sort_keys=True).encode()).hexdigest()

    def correct(
        self, requests: Sequence[CorrectionRequest]
    ) -> Generator[tuple[CorrectionRequest, CorrectorReply], None, None]:
        executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="corrector")
        try:
            futures = {executor.submit(self.complete, request): request for request in requests}
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            # On an interrupt, queued requests are dropped and those in flight finish into the cache,
            # so the rerun gets them for free.
            executor.shutdown(wait=True, cancel_futures=True)

    def complete(self, request: CorrectionRequest) -> CorrectorReply:
        """One request: from the cache, else from the endpoint (up to ``1 + retries`` attempts)."""
        payload = self.payload(request)
        key = self.cache_key(payload)
        hit = self.cache.get(key)
        if hit is not None:
            return CorrectorReply(hit["text"], hit["raw"], None, 0, cached=True)
        reply = self.endpoint.complete(payload)
        if reply.text is None:
            return CorrectorReply(None, None, reply.error, reply.attempts)
        self.cache.put(key, {"request": payload, "raw": reply.raw, "text": reply.text})
        return CorrectorReply(reply.text, reply.raw, None, reply.attempts)


def build_corrector(reflect_cfg, default_cache_dir: Path) -> Corrector | None:
    """The corrector named by ``reflect.corrector`` (None for ``none``)."""
    kind = reflect_cfg.corrector
    if kind == "none":
        return None
    if kind == "template":
        return TemplateCorrector()
    if kind == "openai":
        return OpenAICorrector.from_config(reflect_cfg.openai, default_cache_dir)
    raise CorrectorError(f"reflect.corrector: unknown kind {kind!r}; expected template, openai or none")
