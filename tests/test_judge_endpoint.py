"""The judge on an OpenAI-compatible chat-completions server (psa_core/evaluation/judge_endpoint.py, `--judge-url`):
a stand-in server on 127.0.0.1 records what `score` and `compare` send and answers as a server would; what it gets
is the judge's prompt, the images as PNG data URLs, temperature 0 and the key from the environment; a failing
server is a per-image error, never a verdict."""
from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from psa_core.evaluation import EvaluationError, VLMJudge
from psa_core.evaluation.judge_endpoint import EndpointVLM, check_endpoint_url
from psa_core.profile import EVALUATION_USERS
from trainer.__main__ import main

VERDICT = {"banned_categories_respected": True, "banned_categories_found": [], "allowed_categories_respected": True,
           "quality_score": 60, "appropriateness_score": 95, "overall_assessment": "PASS", "explanation": "calm"}
ASSESSMENT = {k: VERDICT[k] for k in ("banned_categories_respected", "banned_categories_found",
                                      "allowed_categories_respected", "quality_score", "appropriateness_score")}


class Recorder(BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        text = body["messages"][0]["content"][0]["text"]
        answer = json.dumps({"image_a_assessment": ASSESSMENT, "image_b_assessment": ASSESSMENT,
                             "comparison_explanation": "second", "better_content_control": "B"}) \
            if "image_a_assessment" in text else json.dumps(VERDICT)
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Recorder.requests, Recorder.status = [], 200
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def images(folder, names):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_score_with_a_judge_server_sends_the_prompt_and_images_and_counts_its_verdicts(server, tmp_path, capsys,
                                                                                       monkeypatch):
    monkeypatch.setenv("PSA_JUDGE_API_KEY", "secret-key")
    folder = images(tmp_path / "images", ["a.png", "b.png"])
    out = tmp_path / "report" / "r.json"
    assert main(["score", "--images", str(folder), "--out", str(out), "--profile", "level_3", "--judge-url", server,
                 "--judge-model", "qwen2.5-vl", "--max-new-tokens", "300"]) == 0
    assert f"sending each image and its profile to {server}/chat/completions" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["summary"]["pass_rate"] == 1.0 and report["summary"]["judged"] == 2
    assert report["settings"]["judge"]["api_key"] == "from PSA_JUDGE_API_KEY"
    assert "secret-key" not in out.read_text()
    assert len(Recorder.requests) == 2
    for request in Recorder.requests:
        body = request["body"]
        assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer secret-key"
        assert body["model"] == "qwen2.5-vl" and body["temperature"] == 0 and body["max_tokens"] == 300
        text, picture = body["messages"][0]["content"]
        assert "Propaganda" in text["text"] and "overall_assessment" in text["text"]
        prefix = "data:image/png;base64,"
        assert picture["type"] == "image_url" and picture["image_url"]["url"].startswith(prefix)
        sent = Image.open(io.BytesIO(base64.b64decode(picture["image_url"]["url"][len(prefix):])))
        assert sent.size == (40, 40)


def test_compare_with_a_judge_server_asks_both_orders(server, tmp_path):
    a = images(tmp_path / "a", ["x.png"])
    b = images(tmp_path / "b", ["x.png"])
    out = tmp_path / "r.json"
    assert main(["compare", "--a", str(a), "--b", str(b), "--out", str(out), "--profile", "level_1", "--judge-url",
                 server, "--judge-model", "m"]) == 0
    assert len(Recorder.requests) == 2  # blind: (A, B) and (B, A)
    summary = json.loads(out.read_text())["summary"]
    assert summary["ties"] == 1 and summary["order_disagreements"] == 1  # "B" both times: the orders disagree


def test_a_failing_server_is_an_error_per_image_never_a_verdict(server, tmp_path):
    Recorder.status = 500
    judge = VLMJudge(EndpointVLM(server, "m", 16, api_key=""))
    with pytest.raises(EvaluationError, match=r"judge server .*: HTTP 500"):
        judge.judge(Image.new("RGB", (8, 8)), EVALUATION_USERS["level_0"])
    folder = images(tmp_path / "images", ["a.png"])
    out = tmp_path / "r.json"
    assert main(["score", "--images", str(folder), "--out", str(out), "--profile", "level_0", "--judge-url", server,
                 "--judge-model", "m"]) == 1  # the report is written; the judge answered for no image (exit 1)
    record = json.loads(out.read_text())["images"][0]
    assert record["judge"] is None and "HTTP 500" in record["judge_error"]
    unreachable = VLMJudge(EndpointVLM("http://127.0.0.1:9/v1", "m", 16, timeout=5))
    with pytest.raises(EvaluationError, match="no answer"):
        unreachable.judge(Image.new("RGB", (8, 8)), EVALUATION_USERS["level_0"])


@pytest.mark.parametrize("url", ["ftp://host/v1", "file:///etc/passwd", "http:///v1", "http://h/v1?x=1", "h:80"])
def test_only_http_urls_with_a_host_are_accepted(url):
    with pytest.raises(EvaluationError, match="is not allowed; allowed: http:// or https://"):
        check_endpoint_url(url)
    assert check_endpoint_url("https://example.org/v1/") == "https://example.org/v1/chat/completions"
    assert check_endpoint_url("http://127.0.0.1:8000/v1/chat/completions") == \
        "http://127.0.0.1:8000/v1/chat/completions"
