"""The judge on an OpenAI-compatible chat-completions server (psa_core/evaluation/judge_endpoint.py, `--judge-url`):
a stand-in server on 127.0.0.1 records what `score` and `compare` send and answers as a server would; what it gets
is the judge's prompt, the images as PNG data URLs, temperature 0 and the key from the environment; a failing
server is a per-image error, never a verdict. Issue 20: a redirect is not followed (its target gets nothing), a
server echoing the key gets it into no file or log of a real `score` run, a server dripping a byte a second is cut
off at --judge-timeout, a URL with credentials is refused without repeating them."""
from __future__ import annotations

import base64
import io
import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from comfy_env import REPO
from PIL import Image

from psa_core.evaluation import EvaluationError, VLMJudge
from psa_core.evaluation.judge_endpoint import (
    ERROR_TEXT,
    MAX_ANSWER_BYTES,
    EndpointVLM,
    check_endpoint_url,
    scrub,
)
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


# --- issue 20: the key stays with the configured server; one deadline per request -------------------------------

KEY = "sk-test-0123456789abcdefSECRET"
MARKER = "[PSA_JUDGE_API_KEY]"


def serve(handler):
    """A ThreadingHTTPServer on 127.0.0.1 with `handler`, in a daemon thread; (base URL, stop function)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop():
        httpd.shutdown()
        httpd.server_close()
    return f"http://127.0.0.1:{httpd.server_address[1]}", stop


class Target(BaseHTTPRequestHandler):
    """The redirect's target: records every request it gets, whatever the method."""
    seen: list[dict] = []

    def _record(self):
        type(self).seen.append({"method": self.command, "auth": self.headers.get("Authorization")})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = _record  # noqa: N815 - http.server's names

    def log_message(self, *args):
        pass


class Redirector(BaseHTTPRequestHandler):
    location = ""
    status = 307

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(self.status)
        self.send_header("Location", self.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_not_followed_the_target_gets_nothing_and_the_run_goes_on(status, tmp_path, monkeypatch):
    Target.seen = []
    target, stop_target = serve(Target)
    Redirector.location, Redirector.status = f"{target}/v1/chat/completions", status
    origin, stop_origin = serve(Redirector)
    try:
        monkeypatch.setenv("PSA_JUDGE_API_KEY", KEY)
        folder = images(tmp_path / "images", ["a.png", "b.png"])
        out = tmp_path / "report" / "r.json"
        assert main(["score", "--images", str(folder), "--out", str(out), "--profile", "level_0", "--judge-url",
                     f"{origin}/v1", "--judge-model", "m"]) == 1  # the report is written; the judge answered for none
    finally:
        stop_origin()
        stop_target()
    assert Target.seen == []  # urllib's default would have re-sent (307: the same POST) to the target
    records = json.loads(out.read_text())["images"]
    assert len(records) == 2  # the run went on past the first image
    for record in records:
        assert record["judge"] is None
        assert f"the server redirected (HTTP {status}" in record["judge_error"]
        assert "redirects are not followed" in record["judge_error"]


class Echo(BaseHTTPRequestHandler):
    """Hands the Authorization header back in turn: in a 401 body (with it straddling the 300 characters a message
    keeps), in a 200 answer that is not JSON, and inside a verdict's explanation."""
    count = 0

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        auth = self.headers.get("Authorization", "")
        turn, type(self).count = type(self).count % 3, type(self).count + 1
        if turn == 0:
            status, payload = 401, ("\x1b[2J" + "x" * 270 + f"bad credentials: {auth} / {auth.split()[-1]}").encode()
        elif turn == 1:
            status, payload = 200, f"<html>proxy says {auth}</html>".encode()
        else:
            answer = json.dumps({**VERDICT, "explanation": f"you sent {auth}"})
            status = 200
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def leaks(text: str) -> list[str]:
    """Each 8-character piece of KEY found in `text` (a cut-off key leaks too)."""
    return [KEY[i:i + 8] for i in range(len(KEY) - 7) if KEY[i:i + 8] in text]


def test_a_server_echoing_the_key_never_gets_it_into_a_file_or_the_log_of_a_score_run(tmp_path):
    Echo.count = 0
    origin, stop = serve(Echo)
    folder = images(tmp_path / "images", ["a.png", "b.png", "c.png"])
    out = tmp_path / "report" / "r.json"
    env = {**os.environ, "PSA_JUDGE_API_KEY": KEY, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    try:
        run = subprocess.run([sys.executable, "-m", "trainer", "score", "--images", str(folder), "--out", str(out),
                              "--profile", "level_3", "--judge-url", f"{origin}/v1", "--judge-model", "m"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    finally:
        stop()
    assert run.returncode == 0, run.stderr
    assert Echo.count == 3  # every way of echoing was used
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.parent != folder)
    assert {p.suffix for p in written} >= {".json", ".csv", ".png"}
    for path in written:
        assert leaks(path.read_bytes().decode("latin-1")) == [], path
    assert leaks(run.stdout + run.stderr) == []
    report = json.loads(out.read_text())
    errors = [r["judge_error"] for r in report["images"] if r["judge_error"]]
    assert len(errors) == 2 and any("HTTP 401" in e for e in errors) and any("chat-completions" in e for e in errors)
    assert any(MARKER in e for e in errors)  # the echo reached the message, scrubbed
    assert not any("\x1b" in e for e in errors) and "\x1b" not in run.stderr  # no terminal escape either
    verdict = next(r["judge"] for r in report["images"] if r["judge"])
    assert verdict["explanation"] == f"you sent {MARKER}" and MARKER in verdict["raw"]


class Drip(BaseHTTPRequestHandler):
    """Sends its answer one byte a second (in the status line, or in the body after complete headers), for at most
    DRIP_BYTES seconds, then stops by itself."""
    in_body = False

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"
        stream = head
        try:
            if self.in_body:
                self.wfile.write(head)
                self.wfile.flush()
                stream = b"{" * 100
            for byte in stream[:DRIP_BYTES]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(1)
        except OSError:
            pass  # the client hung up: that is the point
        self.close_connection = True

    def log_message(self, *args):
        pass


DRIP_BYTES = 12  # seconds of dripping, well past the deadline; a per-read timeout would wait for all of them
DEADLINE = 2.0
SLACK = 1.5  # the watchdog fires at the deadline; the rest is closing the socket and encoding one 8x8 PNG


@pytest.mark.parametrize("in_body", [False, True], ids=["status-line", "body"])
def test_a_dripping_server_is_cut_off_at_the_deadline(in_body):
    Drip.in_body = in_body
    origin, stop = serve(Drip)
    judge = VLMJudge(EndpointVLM(f"{origin}/v1", "m", 16, timeout=DEADLINE, api_key=""))
    try:
        start = time.monotonic()
        with pytest.raises(EvaluationError, match=rf"no complete answer within {DEADLINE:g} s \(--judge-timeout\)"):
            judge.judge(Image.new("RGB", (8, 8)), EVALUATION_USERS["level_0"])
        elapsed = time.monotonic() - start
    finally:
        stop()
    assert DEADLINE - 0.05 <= elapsed <= DEADLINE + SLACK, elapsed


class DripTLS(socketserver.BaseRequestHandler):
    """For an https:// URL: answers the TLS handshake one byte a second (the start of a record that never ends)."""

    def handle(self):
        try:
            for byte in b"\x16\x03\x03\x40\x00"[:DRIP_BYTES] + b"\x02" * DRIP_BYTES:
                self.request.sendall(bytes([byte]))
                time.sleep(1)
        except OSError:
            pass


def test_a_dripping_tls_handshake_is_cut_off_at_the_deadline():
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), DripTLS)
    tcp.daemon_threads = True
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    endpoint = EndpointVLM(f"https://127.0.0.1:{tcp.server_address[1]}/v1", "m", 16, timeout=DEADLINE, api_key="")
    try:
        start = time.monotonic()
        with pytest.raises(EvaluationError, match=rf"no complete answer within {DEADLINE:g} s"):
            endpoint("prompt", [])
        elapsed = time.monotonic() - start
    finally:
        tcp.shutdown()
        tcp.server_close()
    assert DEADLINE - 0.05 <= elapsed <= DEADLINE + SLACK, elapsed


def test_judge_timeout_flag_reaches_the_request_and_is_bounded(tmp_path, capsys):
    Drip.in_body = False
    origin, stop = serve(Drip)
    folder = images(tmp_path / "images", ["a.png"])
    out = tmp_path / "r.json"
    try:
        start = time.monotonic()
        assert main(["score", "--images", str(folder), "--out", str(out), "--profile", "level_0", "--judge-url",
                     f"{origin}/v1", "--judge-model", "m", "--judge-timeout", "1"]) == 1  # no answer: exit 1
        elapsed = time.monotonic() - start
    finally:
        stop()
    report = json.loads(out.read_text())
    assert report["settings"]["judge"]["timeout_s"] == 1.0
    assert "no complete answer within 1 s" in report["images"][0]["judge_error"]
    assert elapsed < DRIP_BYTES  # bounded by the flag, not by the server giving up
    for value in ["0", "nan", "inf", "3601"]:
        assert main(["score", "--images", str(folder), "--out", str(out), "--profile", "level_0", "--judge-url",
                     f"{origin}/v1", "--judge-model", "m", "--judge-timeout", value]) == 2
        assert "--judge-timeout" in (err := capsys.readouterr().err) and "allowed: 1 to 3600 seconds" in err
    b = images(tmp_path / "b", ["a.png"])
    assert main(["compare", "--a", str(folder), "--b", str(b), "--out", str(out), "--judge-url", f"{origin}/v1",
                 "--judge-model", "m", "--judge-timeout", "0.5"]) == 2
    assert "allowed: 1 to 3600 seconds" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["http://user:hunter2pass@127.0.0.1:{port}/v1", "http://:hunter2pass@127.0.0.1:{port}",
                                 "https://hunter2pass@example.org/v1", "ftp://u:hunter2pass@h/v1",
                                 "http:/u:hunter2pass@h/v1"])
@pytest.mark.parametrize("command", ["score", "compare"])
def test_a_url_with_credentials_is_refused_without_repeating_them(url, command, server, tmp_path, capsys):
    port = server.rsplit(":", 1)[1].split("/")[0]
    url = url.format(port=port)
    a, b = images(tmp_path / "a", ["x.png"]), images(tmp_path / "b", ["x.png"])
    out = tmp_path / "r.json"
    folders = ["--images", str(a)] if command == "score" else ["--a", str(a), "--b", str(b)]
    assert main([command, *folders, "--out", str(out), "--profile", "level_0", "--judge-url", url,
                 "--judge-model", "m"]) == 2
    captured = capsys.readouterr()
    assert "PSA_JUDGE_API_KEY" in captured.err and "credentials, user:password@host, are not allowed" in captured.err
    assert "hunter2" not in captured.out + captured.err
    assert Recorder.requests == [] and not out.exists()


def test_a_key_inside_the_url_is_refused_without_repeating_it(monkeypatch):
    monkeypatch.setenv("PSA_JUDGE_API_KEY", KEY)
    with pytest.raises(EvaluationError, match="holds the key of PSA_JUDGE_API_KEY") as caught:
        EndpointVLM(f"https://example.org/{KEY}/v1", "m", 16)
    assert leaks(str(caught.value)) == []


class Big(BaseHTTPRequestHandler):
    """Answers 200 (or 500) with a body of 2 MiB, twice MAX_ANSWER_BYTES."""
    status = 200

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(self.status)
        self.send_header("Content-Length", str(2 << 20))
        self.end_headers()
        try:
            self.wfile.write(b"x" * (2 << 20))
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [200, 500])
def test_at_most_a_bounded_number_of_bytes_is_read(status):
    Big.status = status
    origin, stop = serve(Big)
    try:
        with pytest.raises(EvaluationError) as caught:
            EndpointVLM(f"{origin}/v1", "m", 16, api_key="")("prompt", [])
    finally:
        stop()
    message = str(caught.value)
    if status == 200:
        assert f"answer larger than {MAX_ANSWER_BYTES} bytes" in message
    else:  # the error body: its first ERROR_TEXT characters, after the URL and the status
        assert "HTTP 500" in message and message.count("x") <= ERROR_TEXT


def test_the_scrub_replaces_every_form_of_the_key():
    assert scrub(f"a Bearer {KEY} b {KEY}", KEY) == f"a {MARKER} b {MARKER}"
    assert scrub('{"k": "x\\"y"}', 'x"y') == '{"k": "' + MARKER + '"}'  # the JSON-escaped form
    assert scrub("nothing here", KEY) == "nothing here" and scrub(f"{KEY}", None) == KEY
    cut = EndpointVLM("http://127.0.0.1:1/v1", "m", 16, api_key=KEY)._server_text("x" * 290 + f"Bearer {KEY}")
    assert len(cut) == ERROR_TEXT and leaks(cut) == []  # scrubbed before it is cut: no piece of the key is left


# --- issue 22: the paper's judge settings (docs/evaluation.md §8, "Sampling settings") ----------------------------

# The reference scripts' values (evaluate_images.py and compare_images.py in the reference tree): 0.1, json_object,
# 800 tokens for one image and 1200 for a pair. Written out here, not imported, so a drift in judge_settings fails.
JSON_OBJECT = {"type": "json_object"}


def sent(request: dict) -> tuple:
    body = request["body"]
    return body["temperature"], body["max_tokens"], body.get("response_format")


@pytest.mark.parametrize("flags, single, pair, recorded", [
    (["--judge-mode", "reference"], (0.1, 800, JSON_OBJECT), (0.1, 1200, JSON_OBJECT),
     {"temperature": 0.1, "max_tokens": {"image": 800, "pair": 1200}, "json_mode": True}),
    ([], (0.0, 512, None), (0.0, 512, None),  # blind keeps greedy decoding, no JSON mode, 512 tokens
     {"temperature": 0.0, "max_tokens": {"image": 512, "pair": 512}, "json_mode": False}),
    (["--judge-mode", "reference", "--judge-temperature", "0", "--judge-max-tokens", "300", "--judge-json-mode",
      "off"], (0.0, 300, None), (0.0, 300, None),  # every explicit flag overrides the mode's setting
     {"temperature": 0.0, "max_tokens": {"image": 300, "pair": 300}, "json_mode": False}),
    (["--judge-temperature", "0.7", "--judge-json-mode", "on", "--max-new-tokens", "64"], (0.7, 64, JSON_OBJECT),
     (0.7, 64, JSON_OBJECT), {"temperature": 0.7, "max_tokens": {"image": 64, "pair": 64}, "json_mode": True}),
])
def test_the_judge_settings_reach_the_server_and_the_report(flags, single, pair, recorded, server, tmp_path):
    folder = images(tmp_path / "images", ["a.png"])
    out = tmp_path / "score.json"
    assert main(["score", "--images", str(folder), "--out", str(out), "--profile", "level_3", "--judge-url", server,
                 "--judge-model", "m", *flags]) == 0
    assert [sent(request) for request in Recorder.requests] == [single]
    assert {k: json.loads(out.read_text())["settings"]["judge"][k] for k in recorded} == recorded

    Recorder.requests = []
    a, b = images(tmp_path / "a", ["x.png"]), images(tmp_path / "b", ["x.png"])
    compared = tmp_path / "compare.json"
    mode = ["--mode", "reference"] if "reference" in flags else []
    rest = [flag for flag in flags if flag not in ("--judge-mode", "reference")]
    assert main(["compare", "--a", str(a), "--b", str(b), "--out", str(compared), "--profile", "level_1",
                 "--judge-url", server, "--judge-model", "m", *mode, *rest]) == 0
    assert [sent(request) for request in Recorder.requests] == [pair] * (1 if mode else 2)  # blind: both orders
    assert {k: json.loads(compared.read_text())["settings"]["judge"][k] for k in recorded} == recorded


@pytest.mark.parametrize("flag, value, allowed", [
    ("--judge-temperature", "-0.1", "allowed: 0 to 2"),
    ("--judge-temperature", "2.01", "allowed: 0 to 2"),
    ("--judge-temperature", "nan", "allowed: 0 to 2"),
    ("--judge-temperature", "inf", "allowed: 0 to 2"),
    ("--judge-max-tokens", "0", "allowed: 1 to 8192"),
    ("--judge-max-tokens", "8193", "allowed: 1 to 8192"),
    ("--judge-json-mode", "yes", "allowed: on, off"),
])
@pytest.mark.parametrize("command", ["score", "compare"])
def test_the_judge_settings_flags_are_bounded(flag, value, allowed, command, server, tmp_path, capsys):
    a, b = images(tmp_path / "a", ["x.png"]), images(tmp_path / "b", ["x.png"])
    where = ["--images", str(a)] if command == "score" else ["--a", str(a), "--b", str(b)]
    assert main([command, *where, "--out", str(tmp_path / "r.json"), "--profile", "level_1", "--judge-url", server,
                 "--judge-model", "m", flag, value]) == 2
    err = capsys.readouterr().err
    assert flag in err and allowed in err and len(err.strip().splitlines()) == 1
    assert Recorder.requests == [] and not (tmp_path / "r.json").exists()


def test_json_mode_on_is_refused_for_a_local_model_and_off_there_in_reference_mode(tmp_path, capsys):
    from psa_core.evaluation.judge_settings import JudgeSettings
    from trainer.score import judge_settings, parse_score_args

    folder = images(tmp_path / "images", ["a.png"])
    vlm = tmp_path / "vlm"  # the flags are checked before the folder is: any folder name will do for the refusal
    assert main(["score", "--images", str(folder), "--out", str(tmp_path / "r.json"), "--judge", str(vlm),
                 "--judge-json-mode", "on"]) == 2
    assert "--judge-json-mode on needs --judge-url" in capsys.readouterr().err
    config = parse_score_args(["--images", str(folder), "--out", str(tmp_path / "r.json"), "--judge-mode",
                               "reference"])  # no judge: the settings a local model would get
    assert judge_settings(config) == JudgeSettings(0.1, (("image", 800), ("pair", 1200)), False)
