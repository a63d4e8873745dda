"""The pack in ComfyUI's real web UI: a headless ComfyUI server driven in headless Chromium (Debian's
chromium + chromium-driver, via Selenium WebDriver).

Proves that every example workflow loads in the page with no missing node types and no warning dialog,
that every PSA node renders the widgets /object_info declares, and that the SD1.5 workflow queued with
the page's own Run button produces an image, shown on the SaveImage node and written to output/.
The SD1.5 checkpoint is a real single-file checkpoint with random weights (scripts/demo_assets.py).

Every browser test runs once per frontend: the one the ComfyUI ships ("bundled"), then each entry of
$PSA_TEST_FRONTENDS, a space-separated list of NAME=STATIC_DIR (a frontend build's static folder, served
with ComfyUI's --front-end-root), e.g. PSA_TEST_FRONTENDS="1.58.1=/path/to/comfyui_frontend_package/static".
The page is driven as a user sees it: controls by their visible text or accessible name, dialogs and
warnings by their ARIA role and text; the graph is loaded and read through the frontend's extension API
(window.app, window.LiteGraph).
Screenshots go to $PSA_TEST_ARTIFACTS/browser (default .cache/test-artifacts/browser), named per frontend.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from PIL import Image

from comfy_env import REPO
from http_server import PACK_FOLDER, ComfyServer

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


def _load_demo_assets():
    """scripts/demo_assets.py, loaded by path (scripts/ is not a package and stays off sys.path)."""
    spec = importlib.util.spec_from_file_location("psa_demo_assets", REPO / "scripts" / "demo_assets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


demo_assets = _load_demo_assets()

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1920,1080")
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
SD15_WORKFLOW = REPO / "workflows" / "psa_sd15_text_to_image.json"
EMBEDDING = "0000001.npy"
# Loader nodes whose first widget names a model file, and the models/ folder it is looked up in.
LOADER_FOLDERS = {"CheckpointLoaderSimple": "checkpoints", "PSALoadAdapter": "psa",
                  "PSALoadEmbedding": "psa_embeddings",
                  "PSALoadPromptPairs": "../input"}  # relative to models/: prompt-pair files live in input/
# Input types the frontend draws as widgets; every other input type is a link socket.
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Graph edits before queueing, to keep a CPU run short: (node type, widget, value).
FAST_RUN_EDITS = (("EmptyLatentImage", "width", 64), ("EmptyLatentImage", "height", 64), ("KSampler", "steps", 2))
# Frontend settings for the test user: no first-run template browser; screenshots without the minimap and
# with full detail (text) at any zoom.
PAGE_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                 "LiteGraph.Canvas.MinFontSizeForLOD": 0}
CHECKPOINT_KEY_WARNINGS = ("unet missing", "unet unexpected", "clip missing", "Missing VAE keys",
                           "not a checkpoint file")
# The visible text of the button that queues the graph (1.32 to 1.58; its icon-only menu trigger is labelled
# "Run" too, by aria-label, in 1.45, so the visible text is what tells them apart).
RUN_BUTTON_LABEL = "Run"
# What a user sees as a dialog, warning or toast: 1.32 shows missing nodes in a dialog and toasts as alerts,
# 1.45 in an alert overlay, 1.58 in a status overlay. Empty live regions (always present) are not notices.
NOTICE_ROLES = '[role="dialog"], [role="alertdialog"], [role="alert"], [role="status"]'
# Names of the buttons that close a notice, by accessible name or visible text.
CLOSE_LABELS = ("Close", "Dismiss")


@dataclass(frozen=True)
class Frontend:
    name: str
    static_dir: Path | None  # None: the frontend the ComfyUI ships


def frontends() -> list[Frontend]:
    """The bundled frontend, then one per NAME=STATIC_DIR entry of $PSA_TEST_FRONTENDS."""
    found = [Frontend("bundled", None)]
    for entry in os.environ.get("PSA_TEST_FRONTENDS", "").split():
        name, _, static_dir = entry.partition("=")
        if not (name and static_dir):
            raise ValueError(f"PSA_TEST_FRONTENDS: {entry!r} is not NAME=STATIC_DIR")
        found.append(Frontend(name, Path(static_dir)))
    return found


FRONTENDS = frontends()


def artifacts_dir() -> Path:
    path = Path(os.environ.get("PSA_TEST_ARTIFACTS") or REPO / ".cache" / "test-artifacts") / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait_for(condition: Callable[[], object], timeout: float, what: str | Callable[[], str],
             interval: float = 0.25):
    """Poll `condition` until it returns something truthy; fail with `what` (a message or a callable) on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s: {what() if callable(what) else what}")


# ---- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=FRONTENDS, ids=[f"frontend-{f.name}" for f in FRONTENDS])
def frontend(request) -> Frontend:
    frontend = request.param
    if frontend.static_dir is not None and not (frontend.static_dir / "index.html").is_file():
        pytest.fail(f"frontend {frontend.name}: {frontend.static_dir} is not a frontend build's static folder "
                    "(no index.html there); fix its entry in PSA_TEST_FRONTENDS")
    return frontend


@pytest.fixture(scope="module")
def browser_server(frontend: Frontend, tmp_path_factory, reference: Path) -> Iterator[ComfyServer]:
    """A headless ComfyUI of its own, serving `frontend`, with the demo SD1.5 checkpoint and adapter, the
    published embedding 0000001.npy and placeholders for the other model names the example workflows use."""
    server = ComfyServer(tmp_path_factory.mktemp(f"browser_base_{frontend.name}"),
                         front_end_root=frontend.static_dir).start()
    try:
        if frontend.static_dir is not None:
            with urllib.request.urlopen(server.url + "/", timeout=60) as response:
                served = response.read()
            assert served == (frontend.static_dir / "index.html").read_bytes(), \
                f"the server's page is not {frontend.static_dir / 'index.html'}; its log:\n{server.log_tail()}"
        models = server.models
        demo_assets.write_demo_checkpoint(models / "checkpoints" / demo_assets.CHECKPOINT_NAME, seed=0)
        demo_assets.write_demo_adapter(models / "psa" / demo_assets.ADAPTER_NAME, seed=1)
        shutil.copy(reference / "embeddings" / EMBEDDING, models / "psa_embeddings" / EMBEDDING)
        place_placeholders(models)
        status, body = server.request("/settings", PAGE_SETTINGS)
        assert status == 200, f"POST /settings: HTTP {status}: {body}"
        yield server
    finally:
        server.stop()


def place_placeholders(models: Path) -> None:
    """Empty files for every model name the workflows' loaders use that is not there yet (e.g. SDXL's)."""
    for workflow in WORKFLOWS:
        for node in json.loads(workflow.read_text())["nodes"]:
            folder = LOADER_FOLDERS.get(node["type"])
            if folder and not (models / folder / node["widgets_values"][0]).exists():
                (models / folder / node["widgets_values"][0]).touch()


@pytest.fixture(scope="module")
def object_info(browser_server: ComfyServer) -> dict:
    return browser_server.get("/object_info")


@pytest.fixture(scope="module")
def psa_node_ids(object_info: dict) -> list[str]:
    """The node ids the server lists as coming from this pack."""
    ids = sorted(k for k, v in object_info.items() if v.get("python_module") == f"custom_nodes.{PACK_FOLDER}")
    assert {"PSALoadAdapter", "PSALoadEmbedding", "PSAApply"} <= set(ids), f"PSA nodes not listed: {ids}"
    return ids


@pytest.fixture(scope="module")
def our_markers(object_info: dict, psa_node_ids: list[str]) -> tuple[str, ...]:
    """Strings that tie a console message to this pack: its folder (and so its /extensions/ URL), its node
    types and display names, and the example workflows' file names."""
    names = [object_info[node_id].get("display_name") for node_id in psa_node_ids]
    return (PACK_FOLDER, *psa_node_ids, *filter(None, names), *(path.name for path in WORKFLOWS))


@pytest.fixture(scope="module")
def driver(browser_server: ComfyServer, psa_node_ids: list[str], tmp_path_factory) -> Iterator[WebDriver]:
    """Headless Chromium on the ComfyUI page, once the frontend has registered every PSA node type."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        pytest.fail(f"selenium is not installed ({error}): run scripts/bootstrap.sh")

    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} missing: run scripts/install_browser.sh (as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would download a driver) never runs.
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        browser.set_script_timeout(60)
        browser.get(browser_server.url)
        wait_for(lambda: browser.execute_script(JS_PAGE_READY, psa_node_ids), 90,
                 lambda: f"the page never registered all PSA node types {psa_node_ids}; "
                         f"registered: {browser.execute_script(JS_REGISTERED_PSA)}\n{console_errors(browser)}")
        browser.execute_script(JS_INSTALL_MISSING_NODES_HOOK)
        yield browser
    finally:
        browser.quit()


def severe_console_messages(browser: WebDriver) -> list[str]:
    """SEVERE console entries since the last call, less the frontend's registry and model look-ups that the
    page's Content-Security-Policy (connect-src 'self') blocks: the page reaches nothing off this machine."""
    return [e["message"] for e in browser.get_log("browser")
            if e["level"] == "SEVERE" and "Content Security Policy" not in e["message"]]


def our_console_errors(browser: WebDriver, markers: tuple[str, ...]) -> list[str]:
    """The SEVERE console entries since the last call that come from this pack or its workflows; the page's
    own (e.g. about the default template it opens with, or the userdata files a fresh user lacks) are not ours."""
    return [message for message in severe_console_messages(browser) if any(m in message for m in markers)]


def console_errors(browser: WebDriver) -> str:
    entries = severe_console_messages(browser)
    return "browser console errors:\n" + "\n".join(entries[-20:]) if entries else "no browser console errors"


def screenshot(browser: WebDriver, frontend: Frontend, name: str) -> Path:
    """Fit the canvas to the graph, then save a PNG of the page under the artefacts folder."""
    browser.execute_script(JS_FIT_VIEW)
    path = artifacts_dir() / f"{frontend.name}-{name}.png"
    browser.save_screenshot(str(path))
    return path


def run_button(browser: WebDriver):
    """The button a user presses to queue the graph: the one visible button whose text is "Run"."""
    from selenium.webdriver.common.by import By

    buttons = [button for button in browser.find_elements(
                   By.XPATH, f"//*[self::button or @role='button'][normalize-space()='{RUN_BUTTON_LABEL}']")
               if button.is_displayed()]
    if not buttons:
        pytest.fail(f"no visible button says {RUN_BUTTON_LABEL!r}; the page's buttons: "
                    f"{browser.execute_script(JS_BUTTON_LABELS)}")
    if len(buttons) > 1:
        pytest.fail(f"{len(buttons)} visible buttons say {RUN_BUTTON_LABEL!r}: "
                    f"{[button.get_attribute('outerHTML')[:200] for button in buttons]}")
    return buttons[0]


# ---- page scripts --------------------------------------------------------------------------------------

JS_PAGE_READY = """
const ids = arguments[0];
return !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph
          && ids.every(id => id in window.LiteGraph.registered_node_types));
"""

JS_FIT_VIEW = """
return (async () => {
  await window.app.extensionManager.command.execute('Comfy.Canvas.FitView');
  await new Promise(resolve => requestAnimationFrame(() => setTimeout(resolve, 300)));
  return null;
})();
"""

JS_REGISTERED_PSA = """
return window.LiteGraph ? Object.keys(window.LiteGraph.registered_node_types).filter(t => t.startsWith('PSA')) : null;
"""

# The frontend reports the node types it could not find to extensions' afterConfigureGraph hook.
JS_INSTALL_MISSING_NODES_HOOK = """
window.__psaMissing = null;
window.app.registerExtension({
  name: 'psa.tests.missingNodes',
  afterConfigureGraph(missing) { window.__psaMissing = missing.map(m => typeof m === 'string' ? m : m.type); }
});
"""

# Visible notices (dialogs, alerts, toasts, status overlays) with any text, a button's name as a user reads it,
# and closing the notices with their own Close / Dismiss buttons.
JS_NOTICE_HELPERS = f"""
const visible = el => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length);
const notices = () => Array.from(document.querySelectorAll('{NOTICE_ROLES}'))
  .filter(el => visible(el) && el.innerText.trim());
const buttonName = el => (el.getAttribute('aria-label') || el.innerText || el.title || '').trim();
const dismissNotices = async () => {{
  for (let round = 0; round < 10 && notices().length; round++) {{
    const closers = new Set(notices().flatMap(notice => Array.from(notice.querySelectorAll('button, [role="button"]'))
      .filter(button => visible(button) && {json.dumps(CLOSE_LABELS)}.includes(buttonName(button)))));
    if (!closers.size) break;  // left for the checks to report
    closers.forEach(button => button.click());
    await new Promise(resolve => setTimeout(resolve, 300));
  }}
}};
"""

JS_BUTTON_LABELS = JS_NOTICE_HELPERS + """
return Array.from(document.querySelectorAll('button, [role="button"]')).filter(visible).map(buttonName);
"""

# Notices the page opened with or an earlier step left open (the default template's missing-models warning, a
# missing-nodes dialog) are closed first, so that each load is judged alone.
JS_LOAD_WORKFLOW = JS_NOTICE_HELPERS + """
const [workflow, name] = arguments;
return (async () => {
  await dismissNotices();
  window.__psaMissing = null;
  await window.app.loadGraphData(workflow, true, true, name);
  await new Promise(resolve => setTimeout(resolve, 1000));  // let dialogs, warnings and toasts open, if any
  return null;
})();
"""

JS_DESCRIBE_GRAPH = JS_NOTICE_HELPERS + """
const nodes = window.app.graph.nodes.map(node => ({
  id: node.id, type: node.type, registered: node.type in window.LiteGraph.registered_node_types,
  has_errors: !!node.has_errors, collapsed: !!(node.flags && node.flags.collapsed),
  widgets: (node.widgets || []).map(w => ({
    name: w.name, type: w.type, value: w.value, hidden: !!(w.hidden || (w.options && w.options.hidden)),
    options: Array.isArray(w.options && w.options.values) ? w.options.values : null})),
  inputs: (node.inputs || []).filter(i => !i.widget).map(i => ({name: i.name, type: i.type})),
  outputs: (node.outputs || []).map(o => ({name: o.name, type: o.type})),
}));
const shown = notices().map(notice => notice.innerText.trim().replace(/\\s+/g, ' ').slice(0, 300));
return {nodes, notices: Array.from(new Set(shown)), missing: window.__psaMissing};
"""

JS_ADD_NODES = JS_NOTICE_HELPERS + """
const ids = arguments[0];
return (async () => {
  await dismissNotices();
  window.app.graph.clear();
  ids.forEach((id, i) => {
    const node = window.LiteGraph.createNode(id);
    node.pos = [20 + (i % 4) * 420, 20 + Math.floor(i / 4) * 480];
    window.app.graph.add(node);
  });
  return window.app.graph.nodes.length;
})();
"""

JS_SET_WIDGETS = """
for (const [type, name, value] of arguments[0]) {
  const nodes = window.app.graph.nodes.filter(n => n.type === type);
  if (!nodes.length) return `no ${type} node`;
  for (const node of nodes) {
    const widget = (node.widgets || []).find(w => w.name === name);
    if (!widget) return `${type} has no widget ${name}`;
    widget.value = value;
    if (widget.callback) widget.callback(value);
  }
}
window.app.graph.setDirtyCanvas(true, true);
return null;
"""

JS_SHOWN_IMAGES = """
const node = window.app.graph.nodes.find(n => n.type === 'SaveImage');
const outputs = window.app.nodeOutputs[String(node.id)];
const images = (node.imgs || []).map(img => ({src: img.src, complete: img.complete,
                                             width: img.naturalWidth, height: img.naturalHeight}));
return {outputs: outputs ? outputs.images || null : null, images};
"""


# ---- checks --------------------------------------------------------------------------------------------

def widget_inputs(node_info: dict) -> tuple[list[str], list[str]]:
    """(widget input names, link input names) of an /object_info entry, in declaration order."""
    widgets, links = [], []
    for section in ("required", "optional"):
        for name, spec in node_info["input"].get(section, {}).items():
            kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
            drawn_as_widget = (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput")
            (widgets if drawn_as_widget else links).append(name)
    return widgets, links


def combo_problems(node: dict) -> list[str]:
    return [f"node {node['id']} ({node['type']}): {w['name']}={w['value']!r} is not among its options"
            for w in node["widgets"] if w["options"] is not None and w["value"] not in w["options"]]


def load_problems(graph: dict, workflow: dict) -> list[str]:
    problems = [f"missing node types reported by the frontend: {graph['missing']}"] if graph["missing"] else []
    if graph["missing"] is None:
        problems.append("the frontend never reported the loaded graph (afterConfigureGraph did not run)")
    problems += [f"dialog or warning shown: {text!r}" for text in graph["notices"]]
    problems += [f"node {n['id']}: type {n['type']} not registered" for n in graph["nodes"] if not n["registered"]]
    problems += [f"node {n['id']} ({n['type']}) flagged with errors" for n in graph["nodes"] if n["has_errors"]]
    if len(graph["nodes"]) != len(workflow["nodes"]):
        problems.append(f"{len(graph['nodes'])} nodes in the page, {len(workflow['nodes'])} in the file")
    for node in graph["nodes"]:
        problems += combo_problems(node)
    return problems


def widget_value_problems(graph: dict, workflow: dict) -> list[str]:
    """The PSA nodes' widget values in the page are the workflow file's widgets_values, in order."""
    # str: frontend 1.58 gives node ids as strings, earlier ones as the file's numbers
    saved = {str(node["id"]): node.get("widgets_values", []) for node in workflow["nodes"]}
    problems = []
    for node in graph["nodes"]:
        if node["type"].startswith("PSA"):
            shown = [w["value"] for w in node["widgets"]]
            if shown != saved[str(node["id"])]:
                problems.append(f"node {node['id']} ({node['type']}): page shows {shown}, "
                                f"file has {saved[str(node['id'])]}")
    return problems


def node_widget_problems(node: dict, node_info: dict) -> list[str]:
    widgets, links = widget_inputs(node_info)
    shown = [w["name"] for w in node["widgets"] if not w["hidden"]]
    problems = []
    if [name for name in shown if name in widgets] != widgets:
        problems.append(f"{node['type']}: widgets shown {shown}, /object_info declares {widgets}")
    if [i["name"] for i in node["inputs"]] != links:
        problems.append(f"{node['type']}: input sockets {node['inputs']}, /object_info declares {links}")
    if [o["type"] for o in node["outputs"]] != node_info["output"]:
        problems.append(f"{node['type']}: outputs {node['outputs']}, /object_info declares {node_info['output']}")
    if node["collapsed"]:
        problems.append(f"{node['type']} is collapsed")
    return problems


# ---- tests ---------------------------------------------------------------------------------------------

@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("workflow_path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_in_the_page_without_missing_nodes(driver: WebDriver, frontend: Frontend,
                                                          our_markers: tuple[str, ...], workflow_path: Path):
    workflow = json.loads(workflow_path.read_text())
    severe_console_messages(driver)  # drop what came before
    driver.execute_script(JS_LOAD_WORKFLOW, workflow, workflow_path.name)
    graph = driver.execute_script(JS_DESCRIBE_GRAPH)
    errors = [f"browser console error while loading: {m}" for m in our_console_errors(driver, our_markers)]
    shot = screenshot(driver, frontend, f"workflow-{workflow_path.stem}")
    problems = load_problems(graph, workflow) + widget_value_problems(graph, workflow) + errors
    assert not problems, "\n".join(problems) + f"\nscreenshot: {shot}"


@pytest.mark.browser
@pytest.mark.slow
def test_the_load_checks_catch_a_node_type_the_server_lacks(driver: WebDriver, frontend: Frontend):
    """The control for the test above: the same page checks flag a workflow with an unknown node type."""
    workflow = json.loads(SD15_WORKFLOW.read_text())
    unknown = next(node for node in workflow["nodes"] if node["type"] == "PSAApply")
    unknown["type"] = "NoSuchNodeTypeAnywhere"
    driver.execute_script(JS_LOAD_WORKFLOW, workflow, "unknown_node_type.json")
    graph = driver.execute_script(JS_DESCRIBE_GRAPH)
    shot = screenshot(driver, frontend, "unknown-node-type")
    assert graph["missing"] == ["NoSuchNodeTypeAnywhere"], f"{graph['missing']}; screenshot: {shot}"
    assert graph["notices"], f"the page showed no dialog or warning about the missing node; screenshot: {shot}"
    problems = load_problems(graph, workflow)
    assert any("NoSuchNodeTypeAnywhere" in problem for problem in problems), problems


@pytest.mark.browser
@pytest.mark.slow
def test_every_psa_node_shows_the_widgets_object_info_declares(driver: WebDriver, frontend: Frontend,
                                                               object_info: dict, psa_node_ids: list[str],
                                                               our_markers: tuple[str, ...]):
    severe_console_messages(driver)
    assert driver.execute_script(JS_ADD_NODES, psa_node_ids) == len(psa_node_ids)
    graph = driver.execute_script(JS_DESCRIBE_GRAPH)
    shot = screenshot(driver, frontend, "psa-nodes")
    by_type = {node["type"]: node for node in graph["nodes"]}
    problems = [f"{node_id}: not created in the page" for node_id in psa_node_ids if node_id not in by_type]
    for node_id in psa_node_ids:
        if node_id in by_type:
            problems += node_widget_problems(by_type[node_id], object_info[node_id])
    problems += [f"browser console error: {m}" for m in our_console_errors(driver, our_markers)]
    assert not problems, "\n".join(problems) + f"\nscreenshot: {shot}"
    assert any(node["widgets"] for node in graph["nodes"]), "no PSA node has any widget"


@pytest.mark.browser
@pytest.mark.slow
def test_sd15_workflow_queued_from_the_page_shows_and_saves_its_image(driver: WebDriver, frontend: Frontend,
                                                                      browser_server: ComfyServer,
                                                                      our_markers: tuple[str, ...]):
    workflow = json.loads(SD15_WORKFLOW.read_text())
    severe_console_messages(driver)
    driver.execute_script(JS_LOAD_WORKFLOW, workflow, SD15_WORKFLOW.name)
    edit_error = driver.execute_script(JS_SET_WIDGETS, [list(edit) for edit in FAST_RUN_EDITS])
    assert edit_error is None, edit_error
    known = set(browser_server.get("/history"))
    run = run_button(driver)
    assert run.is_enabled(), f"the Run button is disabled; screenshot: {screenshot(driver, frontend, 'sd15-no-run')}"
    run.click()  # a real click: Selenium refuses it if anything covers the button

    entry = wait_for_new_history_entry(browser_server, known, driver, frontend)
    queued = {node["class_type"]: node["inputs"] for node in entry["prompt"][2].values()}
    assert {"PSALoadAdapter", "PSALoadEmbedding", "PSAApply"} <= set(queued), f"queued: {sorted(queued)}"
    assert queued["KSampler"]["steps"] == 2, "the queued prompt is not the graph edited in the page"
    images = [output["images"][0] for output in entry["outputs"].values() if output.get("images")]
    assert images, f"the run saved no image: {entry['outputs']}"
    image_info = images[0]
    shown = wait_for(lambda: image_shown(driver, image_info["filename"]), 30,
                     lambda: f"the image never appeared on the SaveImage node: {driver.execute_script(JS_SHOWN_IMAGES)}"
                             f"; screenshot: {screenshot(driver, frontend, 'sd15-run-failed')}")
    shot = screenshot(driver, frontend, "sd15-run")

    path = browser_server.output / image_info["subfolder"] / image_info["filename"]
    assert path.is_file(), f"no image file at {path}"
    with Image.open(path) as image:
        assert image.size == (64, 64) and image.mode == "RGB", (image.size, image.mode)
    assert (shown["width"], shown["height"]) == (64, 64), f"{shown}; screenshot: {shot}"
    errors = our_console_errors(driver, our_markers)
    assert not errors, "browser console errors during the run:\n" + "\n".join(errors) + f"\nscreenshot: {shot}"
    key_warnings = [line for line in browser_server.log().splitlines()
                    if any(warning in line for warning in CHECKPOINT_KEY_WARNINGS)]
    assert not key_warnings, f"ComfyUI did not load the demo checkpoint cleanly: {key_warnings[:5]}"


def wait_for_new_history_entry(server: ComfyServer, known: set[str], driver: WebDriver, frontend: Frontend,
                               timeout: float = 150.0) -> dict:
    def finished() -> dict | None:
        for prompt_id, entry in server.get("/history").items():
            if prompt_id not in known and entry.get("status", {}).get("completed") is not None:
                return entry
        return None

    entry = wait_for(finished, timeout, lambda: f"the Run button queued nothing that finished; queue: "
                                                f"{server.get('/queue')}; screenshot: "
                                                f"{screenshot(driver, frontend, 'sd15-run-failed')}\n"
                                                f"{console_errors(driver)}\n{server.log()[-3000:]}", interval=0.5)
    status = entry["status"]
    assert status.get("status_str") == "success", f"{json.dumps(status, indent=1)}\n{server.log()[-4000:]}"
    return entry


def image_shown(driver: WebDriver, filename: str) -> dict | None:
    """The SaveImage node's loaded <img> for `filename`, once the page has it."""
    state = driver.execute_script(JS_SHOWN_IMAGES)
    if not state["outputs"] or state["outputs"][0]["filename"] != filename:
        return None
    return next((img for img in state["images"] if filename in img["src"] and img["complete"] and img["width"]),
                None)


# ---- the demo checkpoint against ComfyUI's own SD1.5 loader --------------------------------------------

@pytest.mark.slow  # builds ComfyUI's SD1.5 model in-process (no browser)
def test_demo_checkpoint_has_exactly_the_tensors_comfyui_sd15_loads(folder_paths):
    """Every tensor of demo_assets' layout is one ComfyUI's SD15 UNet, CLIP-L or VAE uses, with its shape,
    and none is missing (zeros of the right shapes stand in for the weights; no file is written)."""
    from comfy.sd import load_state_dict_guess_config

    state = {key: torch.zeros(shape, dtype=torch.float16) for key, shape in demo_assets.checkpoint_shapes().items()}
    model, clip, vae, _ = load_state_dict_guess_config(dict(state), output_vae=True, output_clip=True)
    assert type(model.model.model_config).__name__ == "SD15", type(model.model.model_config)
    used = {f"model.diffusion_model.{k}": v.shape for k, v in model.model.diffusion_model.state_dict().items()}
    used |= {f"first_stage_model.{k}": v.shape for k, v in vae.first_stage_model.state_dict().items()}
    used |= {k: v.shape for k, v in clip.cond_stage_model.state_dict().items()
             if not k.endswith(("logit_scale", "text_projection.weight"))}  # not in SD1.5 checkpoints either
    ours: dict = {**demo_assets.unet_shapes(), **demo_assets.vae_shapes()}
    ours |= {k: tuple(v.shape) for k, v in model.model.model_config.process_clip_state_dict(dict(state)).items()}
    problems = [f"{key}: ComfyUI's SD15 model has no such tensor" for key in ours if key not in used]
    problems += [f"{key}: shape {ours[key]}, ComfyUI's is {tuple(used[key])}" for key in ours
                 if key in used and tuple(used[key]) != tuple(ours[key])]
    problems += [f"{key}: missing from the demo layout" for key in used if key not in ours]
    assert not problems, "\n".join(problems[:20])
