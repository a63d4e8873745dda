"""A headless ComfyUI server on 127.0.0.1: a base directory of its own (models/, output/, input/, user/),
a free port, and only the custom-node folders it is told to link into custom_nodes/.

Used by scripts/demo.py and, loaded by path, by the tests (tests/http_server.py). Needs only the standard
library; ComfyUI runs in a child process with this interpreter.
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_FOLDER = "comfyui-psa"  # the folder name the pack gets in custom_nodes/ (ComfyUI names modules after it)
MODEL_FOLDERS = ("psa", "psa_embeddings", "diffusion_models", "checkpoints", "loras")


class ServerError(RuntimeError):
    """The server did not start, or a prompt was refused, failed or timed out."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_comfyui() -> Path:
    """scripts/fetch_comfyui.py's folder for the newest tested ComfyUI (loaded by path: scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("psa_fetch_comfyui", Path(__file__).with_name("fetch_comfyui.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tree_path(module.NEWEST)


def find_comfyui(path: str | Path | None = None) -> Path:
    """`path`, else $COMFYUI_PATH, else the newest tested ComfyUI that scripts/bootstrap.sh extracts to .cache/."""
    found = Path(path or os.environ.get("COMFYUI_PATH") or _default_comfyui()).resolve()
    if not (found / "main.py").is_file():
        raise ServerError(f"no ComfyUI at {found} (no main.py): run `bash scripts/bootstrap.sh`, or set COMFYUI_PATH "
                          "to a ComfyUI checkout")
    return found


class ComfyServer:
    """`links` are custom-node folders linked into the base directory's custom_nodes/; `packs` are the folder
    names loaded (default: the linked ones). Nothing else in custom_nodes/ is loaded. `cpu` adds --cpu;
    `environment` adds variables to the server's environment; the log goes to `log_path` (default
    base/server.log); `front_end_root` serves that frontend build (its static folder) instead of the bundled one."""

    def __init__(self, base: Path, comfyui: Path, links: dict[str, Path], packs: list[str] | None = None,
                 cpu: bool = True, environment: dict[str, str] | None = None, client_id: str = "psa",
                 log_path: Path | None = None, front_end_root: Path | None = None):
        self.base = Path(base)
        self.comfyui = Path(comfyui)
        self.links = dict(links)
        self.packs = list(self.links) if packs is None else list(packs)
        self.cpu = cpu
        self.environment = dict(environment or {})
        self.client_id = client_id
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else self.base / "server.log"
        self.front_end_root = Path(front_end_root) if front_end_root else None
        self.process: subprocess.Popen | None = None

    @property
    def models(self) -> Path:
        return self.base / "models"

    @property
    def output(self) -> Path:
        return self.base / "output"

    def command(self) -> list[str]:
        return [sys.executable, str(self.comfyui / "main.py"), *(["--cpu"] if self.cpu else []),
                "--listen", "127.0.0.1", "--port", str(self.port), "--base-directory", str(self.base),
                "--disable-all-custom-nodes", "--whitelist-custom-nodes", *self.packs, "--disable-metadata",
                "--dont-print-server", "--disable-api-nodes", "--database-url", "sqlite:///:memory:",
                "--disable-auto-launch",
                *(["--front-end-root", str(self.front_end_root)] if self.front_end_root else [])]

    def start(self, timeout: float = 180.0) -> ComfyServer:
        custom_nodes = self.base / "custom_nodes"
        custom_nodes.mkdir(parents=True, exist_ok=True)
        for name, source in self.links.items():
            (custom_nodes / name).symlink_to(source, target_is_directory=True)
        for folder in MODEL_FOLDERS:
            (self.models / folder).mkdir(parents=True, exist_ok=True)
        environment = dict(os.environ, PYTHONUNBUFFERED="1", **self.environment)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("w") as log:  # the child keeps its own handle
            self.process = subprocess.Popen(self.command(), cwd=str(self.comfyui), stdout=log,
                                            stderr=subprocess.STDOUT, env=environment)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.process.returncode} while starting; "
                                  f"its log ({self.log_path}) ends:\n{self.log_tail()}")
            try:
                self.get("/object_info/KSampler")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout:.0f} s; "
                          f"its log ({self.log_path}) ends:\n{self.log_tail()}")

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

    def log_tail(self, characters: int = 4000) -> str:
        return self.log()[-characters:]

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
            raise ServerError(f"GET {path}: HTTP {status}: {body}")
        return body

    def queue_prompt(self, prompt: dict) -> str:
        """Queue an API-format prompt; returns its id. A prompt ComfyUI refuses raises with its node errors."""
        status, body = self.request("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise ServerError(f"/prompt refused the prompt: HTTP {status}: {json.dumps(body, indent=1)}")
        return body["prompt_id"]

    def wait_for(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """The history entry of a queued prompt once it has finished; raises if it failed or timed out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") != "success":
                    raise ServerError(f"prompt failed: {json.dumps(entry['status'], indent=1)}\n{self.log_tail()}")
                return entry
            if self.process and self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.process.returncode} while running the prompt; "
                                  f"its log ends:\n{self.log_tail()}")
            time.sleep(0.25)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s\n{self.log_tail()}")

    def run_prompt(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue an API-format prompt and wait for it; returns its history entry (raises on error)."""
        return self.wait_for(self.queue_prompt(prompt), timeout)

    def saved_images(self, entry: dict) -> list[Path]:
        """The files of every image a finished prompt saved to output/ (SaveImage outputs), in node order."""
        paths = []
        for output in entry.get("outputs", {}).values():
            for image in output.get("images", []):
                if image.get("type", "output") == "output":
                    paths.append(self.output / image.get("subfolder", "") / image["filename"])
        return paths
