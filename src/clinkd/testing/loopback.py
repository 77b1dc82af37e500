"""A chat-completions endpoint on 127.0.0.1 for the tests: the standard library only, a free port, one thread per
request, each request answered by a function of its body (a fixture), faults included: slow answers, HTTP errors
with headers (429 with Retry-After), malformed bodies and dropped connections."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    """How to answer one request: after ``delay`` seconds, ``status`` with ``body`` and ``headers``, or (``drop``) close
    the connection without a word."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


def completion(content: str | None, usage: dict | None = None) -> bytes:
    """A chat-completions body whose ``choices[0].message.content`` is ``content``."""
    body = {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "test",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}
    return json.dumps({**body, **({"usage": usage} if usage else {})}).encode()


class LoopbackChatServer:
    """``respond(body, headers)`` answers each POST; every request's JSON body and headers are kept in ``requests``."""

    def __init__(self, respond: Callable[[dict, dict], Reply]):
        self.respond = respond
        self.requests: list[tuple[dict, dict]] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: a dropped connection is then a real fault

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append((body, dict(self.headers)))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.answer(self, server.respond(body, dict(self.headers)))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @staticmethod
    def answer(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        time.sleep(reply.delay)
        if reply.drop:
            handler.close_connection = True
            handler.connection.close()
            return
        handler.send_response(reply.status)
        for name, value in {
            "Content-Type": "application/json",
            **reply.headers,
            "Content-Length": str(len(reply.body)),
        }.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(reply.body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "LoopbackChatServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
