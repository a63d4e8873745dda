"""The judge's answer function on an OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp's server,
a hosted API), for people who already run one: `VLMJudge(EndpointVLM(url, model))`.

Only the command line offers it (`--judge-url`), never a node: a node's inputs come from anyone who can post to a
ComfyUI server, and a URL input would let them make that server send requests anywhere. Nothing is sent unless a
URL is given. Each call posts the prompt text and the images (PNG data URLs) as one user message with the
sampling settings of judge_settings.py: `temperature`, `max_tokens` of the call's kind (one image or a pair) and,
with JSON mode, `response_format` `{"type": "json_object"}` (reference mode: 0.1, JSON mode, 800 / 1200 tokens, as
the paper's scripts sent; blind: 0, no JSON mode, 512). The API key, when the server wants one, is read from the environment variable
`PSA_JUDGE_API_KEY`, never from a flag or the URL (command lines are visible to other users of the machine) and
never logged.

The key goes to the configured origin and nowhere else (docs/evaluation.md, "A judge server"): the request is made
with http.client to that host and port only, so no redirect is followed (a 3xx answer is an error for the image)
and no proxy sees it. Every text of the server that can reach a report, a CSV, a log line or an error message (the
answer, an HTTP error body, a malformed answer) passes through `scrub`, here and only here, so no consumer has to.
One request has one deadline (`timeout`, `--judge-timeout`) for connecting, sending and reading together, and at
most MAX_ANSWER_BYTES are read. A failed request raises EvaluationError; the scoring loop records it for that
image and goes on.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import math
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Sequence

from PIL import Image

from .errors import EvaluationError
from .judge_settings import IMAGE, JudgeSettings, check_max_tokens

API_KEY_VARIABLE = "PSA_JUDGE_API_KEY"
DEFAULT_TIMEOUT = 120.0
TIMEOUT_RANGE = (1.0, 3600.0)  # seconds: --judge-timeout's allowed values
MAX_ANSWER_BYTES = 1 << 20
MAX_ERROR_BYTES = 4096  # of an HTTP error body; its first ERROR_TEXT characters (after scrubbing) reach the message
ERROR_TEXT = 300
KEY_MARKER = f"[{API_KEY_VARIABLE}]"
_CHUNK = 1 << 16


def check_endpoint_url(url: str) -> str:
    """The chat-completions URL for `url` (a server's base such as http://127.0.0.1:8000/v1, or the full
    .../chat/completions URL); EvaluationError for anything but http(s) with a host. A URL holding credentials
    (user:password@host) is refused without repeating it: the key belongs in PSA_JUDGE_API_KEY."""
    if "@" in url:  # checked before anything can repeat the URL, whatever shape it has
        raise EvaluationError(f"the judge URL holds '@' (credentials, user:password@host, are not allowed; the URL "
                              f"is neither used nor repeated); allowed: http(s)://host[:port]/path, with the API key "
                              f"in the environment variable {API_KEY_VARIABLE}")
    parts = urllib.parse.urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query or parts.fragment:
        raise EvaluationError(f"judge URL {url!r} is not allowed; allowed: http:// or https:// with a host and no "
                              f"query, e.g. http://127.0.0.1:8000/v1 (an OpenAI-compatible server)")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def check_timeout(seconds: float, flag: str = "--judge-timeout") -> float:
    """`seconds` as a float when it is within TIMEOUT_RANGE; EvaluationError naming `flag` otherwise."""
    low, high = TIMEOUT_RANGE
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and low <= seconds <= high):
        raise EvaluationError(f"{flag} {seconds!r} is not allowed; allowed: {low:g} to {high:g} seconds (the whole "
                              f"request to the judge server: connecting, sending and the answer)")
    return float(seconds)


def scrub(text: str, key: str | None) -> str:
    """`text` with the key (and the header value `Bearer <key>`, and its JSON- and URL-escaped forms) replaced by
    KEY_MARKER."""
    if not key:
        return text
    forms = {f"Bearer {key}", key, json.dumps(key)[1:-1], urllib.parse.quote(key, safe=""),
             urllib.parse.quote_plus(key)}
    for form in sorted(forms, key=len, reverse=True):
        if form:
            text = text.replace(form, KEY_MARKER)
    return text


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class _Deadline:
    """The time left of one request; at the deadline a watchdog shuts the watched socket down, so a blocked read
    returns then: a server that sends a byte now and then (in the status line, the headers or the body) is cut off.
    The TLS handshake needs no watchdog: the ssl module bounds the whole handshake by the socket's timeout, which is
    the time left when it starts."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._expired = self._stopped = False
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0 or self._expired:
            raise TimeoutError
        return left

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socket = sock
        if self._expired:
            self._cut()

    def _cut(self) -> None:
        with self._lock:
            self._expired = True
            if self._socket is not None and not self._stopped:
                try:
                    self._socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def passed(self) -> bool:
        return self._expired or time.monotonic() >= self.end

    def stop(self) -> None:
        """Before the socket is closed: after this the watchdog touches nothing."""
        with self._lock:
            self._stopped = True
        self._timer.cancel()


class EndpointVLM:
    """`(prompt_text, images, kind=IMAGE) -> answer` through an OpenAI-compatible `chat/completions` endpoint, with
    `settings` (default: greedy, `max_new_tokens` for each kind, no JSON mode)."""

    takes_kind = True

    def __init__(self, url: str, model: str, max_new_tokens: int, timeout: float = DEFAULT_TIMEOUT,
                 api_key: str | None = None, settings: JudgeSettings | None = None):
        if not model or not model.strip():
            raise EvaluationError("the judge server needs a model name (--judge-model), as the server lists it")
        self.url, self.model = check_endpoint_url(url), model
        self.judge_settings = settings or JudgeSettings.greedy(check_max_tokens(max_new_tokens))
        self.timeout = check_timeout(timeout)
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_VARIABLE) or None
        if self.api_key and scrub(self.url, self.api_key) != self.url:
            raise EvaluationError(f"the judge URL holds the key of {API_KEY_VARIABLE} (the URL is neither used nor "
                                  f"repeated: it would be written into the report); allowed: the server's address "
                                  f"without the key, which goes in the Authorization header")

    def settings(self) -> dict:
        return {"backend": "openai-compatible endpoint", "url": self.url, "model": self.model,
                "decoding": f"the server's, at temperature {self.judge_settings.temperature:g}",
                **self.judge_settings.to_dict(), "timeout_s": self.timeout,
                "api_key": f"from {API_KEY_VARIABLE}" if self.api_key else None}

    def request_body(self, prompt: str, images: Sequence[Image.Image], kind: str = IMAGE) -> dict:
        content = [{"type": "text", "text": prompt},
                   *({"type": "image_url", "image_url": {"url": _data_url(image)}} for image in images)]
        settings = self.judge_settings
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "temperature": settings.temperature, "max_tokens": settings.tokens_for(kind)}
        if settings.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def scrub(self, text: str) -> str:
        return scrub(text, self.api_key)

    def _server_text(self, text: str, limit: int = ERROR_TEXT) -> str:
        """A text of the server for a message: scrubbed before it is cut short (no piece of the key is left), on one
        line, control characters (terminal escapes) made spaces."""
        return "".join(c if c.isprintable() else " " for c in self.scrub(text)).strip()[:limit]

    def _fail(self, detail: str) -> EvaluationError:
        return EvaluationError(self.scrub(f"judge server {self.url}: {detail}"))

    def __call__(self, prompt: str, images: Sequence[Image.Image], kind: str = IMAGE) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        payload = json.dumps(self.request_body(prompt, images, kind)).encode()
        status, reason, location, body = self._post(payload, headers)
        if 300 <= status < 400:
            target = f" to {self._server_text(location)!r}" if location else ""
            raise self._fail(f"the server redirected (HTTP {status}{target}); redirects are not followed (the key "
                             f"goes to the configured URL only): give --judge-url the server's own address")
        if status >= 400 or status < 200:
            detail = self._server_text(body.decode("utf-8", "replace"))
            raise self._fail(f"HTTP {status} {self._server_text(reason, 100)}: {detail}")
        if len(body) > MAX_ANSWER_BYTES:
            raise self._fail(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, RecursionError):
            text = self._server_text(body.decode("utf-8", "replace"), 200)
            raise self._fail(f"not a chat-completions answer ({text!r})") from None
        if not isinstance(content, str):
            raise self._fail("the answer's content is not text")
        return self.scrub(content)

    def _post(self, payload: bytes, headers: dict) -> tuple[int, str, str, bytes]:
        """(status, reason, Location header, body read: up to MAX_ANSWER_BYTES + 1, or MAX_ERROR_BYTES for an
        error) of one POST to self.url, all within self.timeout."""
        parts = urllib.parse.urlsplit(self.url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        deadline = _Deadline(self.timeout)
        connection = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(parts.hostname, port)
        sock = None
        try:
            sock = socket.create_connection((parts.hostname, port), timeout=deadline.left())
            deadline.watch(sock)
            if https:
                sock.settimeout(deadline.left())
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
                deadline.watch(sock)
            connection.sock = sock  # connected here, so that the watchdog sees the socket from the start
            sock.settimeout(deadline.left())
            connection.request("POST", parts.path, body=payload, headers=headers)
            sock.settimeout(deadline.left())
            response = connection.getresponse()
            limit = MAX_ANSWER_BYTES + 1 if 200 <= response.status < 300 else MAX_ERROR_BYTES
            chunks, size = [], 0
            while size < limit:
                sock.settimeout(deadline.left())
                chunk = response.read1(min(_CHUNK, limit - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if deadline.passed():
                raise TimeoutError
            return response.status, response.reason, response.getheader("Location") or "", b"".join(chunks)
        except TimeoutError:
            raise self._fail(f"no complete answer within {self.timeout:g} s (--judge-timeout)") from None
        except (http.client.HTTPException, OSError, ValueError) as error:
            if deadline.passed():
                raise self._fail(f"no complete answer within {self.timeout:g} s (--judge-timeout)") from None
            raise self._fail(f"no answer ({error.__class__.__name__}: {error})") from None
        finally:
            deadline.stop()
            connection.close()
            if sock is not None:
                sock.close()
