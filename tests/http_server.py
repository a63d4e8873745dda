"""A headless ComfyUI server on 127.0.0.1 with only this pack (and the test-only helper nodes) loaded."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from comfy_env import REPO, comfyui_path

PACK_FOLDER = "comfyui-psa"
TEST_NODES_FOLDER = "psa_test_nodes"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DEFAULT_LINKS = {PACK_FOLDER: REPO, TEST_NODES_FOLDER: REPO / "tests" / "http_support" / TEST_NODES_FOLDER}


class ComfyServer:
    """`links` are custom-node folders linked into the base directory; `packs` are the custom-node folder
    names loaded (default: the linked ones). Nothing else in custom_nodes/ is loaded."""

    def __init__(self, base: Path, links: dict[str, Path] | None = None, packs: list[str] | None = None):
        self.base = base
        self.links = DEFAULT_LINKS if links is None else links
        self.packs = list(self.links) if packs is None else packs
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def models(self) -> Path:
        return self.base / "models"

    @property
    def output(self) -> Path:
        return self.base / "output"

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        custom_nodes = self.base / "custom_nodes"
        custom_nodes.mkdir(parents=True, exist_ok=True)
        for name, source in self.links.items():
            (custom_nodes / name).symlink_to(source, target_is_directory=True)
        for folder in ("psa", "psa_embeddings", "diffusion_models", "checkpoints", "loras"):
            (self.models / folder).mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(comfyui_path() / "main.py"), "--cpu", "--listen", "127.0.0.1",
                   "--port", str(self.port), "--base-directory", str(self.base), "--disable-all-custom-nodes",
                   "--whitelist-custom-nodes", *self.packs, "--disable-metadata",
                   "--dont-print-server", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
                   "--disable-auto-launch"]
        environment = dict(os.environ, PYTHONUNBUFFERED="1")
        log = self.log_path.open("w")
        self.process = subprocess.Popen(command, cwd=str(comfyui_path()), stdout=log, stderr=subprocess.STDOUT,
                                        env=environment)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.get("/object_info/KSampler")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(self, path: str, payload: dict | None = None) -> tuple[int, dict]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            body = error.read()
            return error.code, json.loads(body) if body.strip().startswith(b"{") else {"text": body.decode()}

    def get(self, path: str):
        status, body = self.request(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body}")
        return body

    def run_prompt(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue an API-format prompt and wait for it; returns its history entry (fails on error)."""
        status, body = self.request("/prompt", {"prompt": prompt, "client_id": "psa-tests"})
        if status != 200:
            raise AssertionError(f"/prompt refused the prompt: HTTP {status}: {json.dumps(body, indent=1)}")
        prompt_id = body["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") != "success":
                    raise AssertionError(f"prompt failed: {json.dumps(entry['status'], indent=1)}\n{self.log()[-4000:]}")
                return entry
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s\n{self.log()[-4000:]}")
