"""The judge's answer function on an OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp's server,
a hosted API), for people who already run one: `VLMJudge(EndpointVLM(url, model))`.

Only the command line offers it (`--judge-url`), never a node: a node's inputs come from anyone who can post to a
ComfyUI server, and a URL input would let them make that server send requests anywhere. Nothing is sent unless a
URL is given. Each call posts the prompt text and the images (PNG data URLs) as one user message with
temperature 0; the API key, when the server wants one, is read from the environment variable
`PSA_JUDGE_API_KEY`, never from a flag (command lines are visible to other users of the machine) and never logged.
A failed request raises EvaluationError; the scoring loop records it for that image and goes on.
"""
from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

from PIL import Image

from .errors import EvaluationError

API_KEY_VARIABLE = "PSA_JUDGE_API_KEY"
DEFAULT_TIMEOUT = 120.0
MAX_ANSWER_BYTES = 1 << 20


def check_endpoint_url(url: str) -> str:
    """The chat-completions URL for `url` (a server's base such as http://127.0.0.1:8000/v1, or the full
    .../chat/completions URL); EvaluationError for anything but http(s) with a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise EvaluationError(f"judge URL {url!r} is not allowed; allowed: http:// or https:// with a host and no "
                              f"query, e.g. http://127.0.0.1:8000/v1 (an OpenAI-compatible server)")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class EndpointVLM:
    """`(prompt_text, images) -> answer` through an OpenAI-compatible `chat/completions` endpoint."""

    def __init__(self, url: str, model: str, max_new_tokens: int, timeout: float = DEFAULT_TIMEOUT,
                 api_key: str | None = None):
        if not model or not model.strip():
            raise EvaluationError("the judge server needs a model name (--judge-model), as the server lists it")
        self.url, self.model = check_endpoint_url(url), model
        self.max_new_tokens, self.timeout = max_new_tokens, timeout
        self.api_key = api_key if api_key is not None else os.environ.get(API_KEY_VARIABLE) or None

    def settings(self) -> dict:
        return {"backend": "openai-compatible endpoint", "url": self.url, "model": self.model,
                "decoding": "temperature 0", "max_new_tokens": self.max_new_tokens,
                "api_key": f"from {API_KEY_VARIABLE}" if self.api_key else None}

    def request_body(self, prompt: str, images: Sequence[Image.Image]) -> dict:
        content = [{"type": "text", "text": prompt},
                   *({"type": "image_url", "image_url": {"url": _data_url(image)}} for image in images)]
        return {"model": self.model, "messages": [{"role": "user", "content": content}], "temperature": 0,
                "max_tokens": self.max_new_tokens}

    def __call__(self, prompt: str, images: Sequence[Image.Image]) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(self.request_body(prompt, images)).encode(),
                                         headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) only
                body = response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as error:
            detail = error.read(300).decode("utf-8", "replace").strip()
            raise EvaluationError(f"judge server {self.url}: HTTP {error.code} {error.reason}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise EvaluationError(f"judge server {self.url}: no answer ({getattr(error, 'reason', error)})") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise EvaluationError(f"judge server {self.url}: answer larger than {MAX_ANSWER_BYTES} bytes")
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise EvaluationError(f"judge server {self.url}: not a chat-completions answer "
                                  f"({body[:200].decode('utf-8', 'replace')!r})") from None
        if not isinstance(content, str):
            raise EvaluationError(f"judge server {self.url}: the answer's content is not text")
        return content
