"""One OpenAI-compatible chat-completions endpoint over HTTP (httpx): vLLM, SGLang, llama.cpp server, a hosted API.

:class:`ChatEndpoint` posts one request body to ``<base_url>/chat/completions`` with a per-request timeout and makes
up to ``1 + retries`` attempts. Timeouts, connection errors (a refused or dropped connection), HTTP 408/409/429/5xx,
malformed JSON and a reply without ``choices[0].message.content`` are retried; other HTTP errors fail at once. Before
retry ``k`` it waits the server's ``Retry-After`` when the reply has one, else ``backoff · 2^(k−1)`` seconds, at most
:data:`MAX_BACKOFF_S`. The API key only ever goes into the ``Authorization`` header.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field

import httpx

from clinkd.config import ConfigError, EndpointConfig

RETRYABLE_STATUS = frozenset({408, 409, 429})
MAX_BACKOFF_S = 60.0


class EndpointError(RuntimeError):
    """An endpoint that kept failing after its retries; the message says which request and why."""


class EndpointFault(Exception):
    """One failed attempt; ``retryable`` faults are tried again, after ``retry_after`` seconds when the server said
    so."""

    def __init__(self, message: str, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True)
class ChatReply:
    """``text`` is None when every attempt failed (``error`` says why); ``raw`` is the body of the last reply read;
    ``usage`` the reply's token counts (``prompt_tokens``, ``completion_tokens``) when the server sent them."""

    text: str | None
    raw: str | None
    error: str | None
    attempts: int
    usage: dict = field(default_factory=dict)


def chat_completions_url(base_url: str) -> str:
    """``<base_url>/chat/completions`` (an OpenAI client's ``base_url``, e.g. ``http://127.0.0.1:8000/v1``); a URL that
    already ends there is kept."""
    base = base_url.rstrip("/")
    return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


def parse_reply(raw: str, allow_empty: bool = False) -> tuple[str, dict]:
    """``choices[0].message.content`` of a chat-completions body, stripped, and its token counts (the ``usage`` keys
    ``prompt_tokens`` and ``completion_tokens`` the server sent). EndpointFault when malformed, and when the content is
    empty unless ``allow_empty`` (a null content, e.g. a refusal, is then the empty answer)."""
    try:
        body = json.loads(raw)
    except ValueError as error:
        raise EndpointFault(f"malformed JSON reply: {error}") from None
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise EndpointFault("reply has no choices[0].message.content") from None
    if content is None and allow_empty:
        content = ""
    if not isinstance(content, str) or not (content.strip() or allow_empty):
        raise EndpointFault("empty reply")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return content.strip(), {
        key: usage[key] for key in ("prompt_tokens", "completion_tokens") if isinstance(usage.get(key), int)
    }


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (fractions accepted); None when absent or a date (then the backoff
    applies)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def api_key_from_env(variable: str | None, where: str) -> str | None:
    """The key held by the environment variable ``variable`` (None: a keyless local server); ConfigError naming the
    recipe key ``where`` when the variable is unset or empty."""
    if variable is None:
        return None
    api_key = os.environ.get(variable, "")
    if not api_key:
        raise ConfigError(f"{where}: environment variable {variable} is not set")
    return api_key


class ChatEndpoint:
    """Chat completions from one endpoint with timeouts and retries (module docstring); safe to share between
    threads."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 1.0,
        connections: int = 4,
        allow_empty: bool = False,
    ):
        self.base_url = base_url
        self.url = chat_completions_url(base_url)
        self.retries = retries
        self.backoff = backoff
        self.allow_empty = allow_empty
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout), limits=limits)
        self._lock = threading.Lock()
        self.requests_sent = 0  # HTTP requests actually made, retries included

    @classmethod
    def from_config(cls, cfg: EndpointConfig, where: str, allow_empty: bool = False) -> "ChatEndpoint":
        """The endpoint of the recipe section ``where`` (e.g. ``predict.endpoint``), its key read from
        ``cfg.api_key_env``."""
        api_key = api_key_from_env(cfg.api_key_env, f"{where}.api_key_env")
        return cls(
            cfg.base_url,
            api_key,
            timeout=cfg.timeout,
            retries=cfg.retries,
            backoff=cfg.backoff,
            connections=cfg.concurrency,
            allow_empty=allow_empty,
        )

    def complete(self, payload: dict) -> ChatReply:
        """Up to ``1 + retries`` attempts at one request body."""
        attempts, error, raw = 0, None, None
        while attempts <= self.retries:
            attempts += 1
            try:
                raw = self._send(payload)
                text, usage = parse_reply(raw, self.allow_empty)
                return ChatReply(text, raw, None, attempts, usage)
            except EndpointFault as fault:
                error = str(fault)
                if not fault.retryable:
                    break
                if attempts <= self.retries:
                    time.sleep(self.wait_before_retry(attempts, fault.retry_after))
        return ChatReply(None, raw, error, attempts)

    def wait_before_retry(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before the retry that follows failed attempt ``attempt``: the server's Retry-After, else the
        backoff."""
        return min(retry_after if retry_after is not None else self.backoff * 2 ** (attempt - 1), MAX_BACKOFF_S)

    def _send(self, payload: dict) -> str:
        """The body of one POST; transport and HTTP errors become :class:`EndpointFault`."""
        with self._lock:
            self.requests_sent += 1
        try:
            response = self.client.post(self.url, json=payload)
        except httpx.TimeoutException:
            raise EndpointFault("timeout") from None
        except httpx.TransportError as error:  # refused, reset or dropped connections
            raise EndpointFault(f"connection error: {type(error).__name__}: {error}") from None
        status = response.status_code
        if status >= 400:
            retryable = status in RETRYABLE_STATUS or status >= 500
            raise EndpointFault(f"HTTP {status}", retryable, retry_after_seconds(response.headers.get("Retry-After")))
        return response.text

    def close(self) -> None:
        self.client.close()
