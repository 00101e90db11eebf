"""The Prefect UI as a person sees it: a real Prefect server started by
deployments/stack.sh (server only, on a non-default port), one smoke run against it,
and Debian's Chromium, headless, driven by Playwright, reading the run's page, its
Artifacts tab and every artifact the run published, in both of Prefect's UIs.

Screenshots go to $DISTILLERY_UI_SCREENSHOTS (else a pytest temporary folder);
DISTILLERY_UI_DOCS=1 also refreshes docs/ui-report.png, the README's picture.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from conftest import OFFLINE, REPO
from flows.publish import IMAGE_LINE
from tasks.report.markdown import SMOKE_NOTE, report_title
from tasks.report.rows import MODEL_COLUMNS, ROW_FIELDS, readable_model_rows
from teamstack import STACK, client_environment, stack_environment

CHROMIUM = Path(os.environ.get("DISTILLERY_CHROMIUM", "/usr/bin/chromium"))
PROGRESS_KEYS = ("fine-tune-teacher-progress", "soft-labels-progress", "distil-student-progress")
VIEWPORT = {"width": 1600, "height": 1000}
# The UI is a single-page app on a machine shared with training runs: generous waits.
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory, emotion_dir):
    """`deployments/stack.sh server` on a free port (never 4200), stopped by `purge`."""
    stack_dir = tmp_path_factory.mktemp("ui-stack")
    env = stack_environment(stack_dir, emotion_dir)
    port = int(env["DISTILLERY_PREFECT_PORT"])
    assert port != 4200
    started = time.monotonic()
    up = subprocess.run(["bash", str(STACK), "server"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr + "".join(
            f"\n--- {log.name}\n{log.read_text()[-3000:]}" for log in (stack_dir / "logs").glob("*.log"))
        print(f"\nFIGURE stack.sh server (SQLite): {time.monotonic() - started:.1f}s")
        yield {"dir": stack_dir, "port": port, "url": f"http://127.0.0.1:{port}", "env": client_environment(env)}
    finally:
        subprocess.run(["bash", str(STACK), "purge"], cwd=REPO, env=env, capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def ui_run(ui_server, emotion_dir, tmp_path_factory):
    """`python flows/emotion.py --smoke` against that server, as a user runs it after
    `eval "$(deployments/stack.sh env)"`; returns the run's printed link and its report."""
    tmp = tmp_path_factory.mktemp("ui-run")
    summary = tmp / "summary.json"
    env = {**ui_server["env"], **OFFLINE, "PREFECT_HOME": str(tmp / "prefect-home"), "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "flows/emotion.py", "--smoke", "--data", str(emotion_dir),
                           "--store", str(tmp / "store"), "--summary", str(summary)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    print(f"\nFIGURE smoke run against the stack's server: {time.monotonic() - started:.1f}s")
    # PREFECT_UI_URL from the stack's env makes the run print its page on this port.
    link = re.search(r"View at (http://\S+/runs/flow-run/[0-9a-f-]{36})", output)
    assert link, "the run printed no link to its page in the UI:\n" + output[-3000:]
    assert link[1].startswith(ui_server["url"] + "/runs/flow-run/"), link[1]
    report = Path(json.loads(summary.read_text())["report"]["location"])
    return {"link": link[1], "report": report, "output": output}


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: deployments/install-services.sh installs Debian's (make services)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: pip install -e '.[test]' (pyproject's test extra)")
    with sync_playwright() as playwright:
        # Debian's build, not Playwright's own download (which needs the internet).
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DISTILLERY_UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


def shot(page, folder: Path, name: str, full_page: bool = False) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def table_cells(table) -> tuple[list[str], list[list[str]]]:
    """A rendered <table>'s header texts and its body rows' cell texts."""
    headers = [text.strip() for text in table.locator("th").all_inner_texts()]
    rows = [[text.strip() for text in row.locator("td").all_inner_texts()] for row in table.locator("tbody tr").all()]
    return headers, rows


def expect_models_table(page, expected: list[dict[str, str]]) -> None:
    """The page's models table has the readable headers and exactly the formatted rows."""
    table = page.locator("table").filter(has_text="p50 latency").first
    table.wait_for(timeout=WAIT_MS)
    headers, rows = table_cells(table)
    assert headers == list(MODEL_COLUMNS), headers
    assert rows == [list(row.values()) for row in expected], rows
    for cells in rows:
        values = dict(zip(headers, cells))
        assert re.fullmatch(r"\d{1,3}\.\d\d%", values["accuracy"]), values
        assert re.fullmatch(r"\d+\.\d\d ms", values["p50 latency"]) and re.fullmatch(r"\d+\.\d MB", values["size"]), values
        assert re.fullmatch(r"\d+(\.\d)?x", values["faster than teacher"]), values


@pytest.mark.parametrize("ui", ["v1", "v2"])
def test_run_page_shows_the_report_plots_table_and_progress(ui, ui_server, ui_run, browser, screenshots):
    """v1 is what the run's printed link opens; v2 is what the server's root opens by default."""
    base = ui_server["url"] + ("/v2" if ui == "v2" else "")
    with urllib.request.urlopen(ui_server["url"] + "/ui-settings", timeout=30) as response:
        settings = json.load(response)
    # The browser learns the API's address here; `--port` alone leaves it at 4200.
    assert settings["api_url"] == ui_server["url"] + "/api", settings
    report = ui_run["report"]
    expected_rows = readable_model_rows(json.loads((report / "models.json").read_text()))
    plots = {}
    for line in (report / "report.md").read_text().splitlines():
        if match := IMAGE_LINE.match(line.strip()):
            with Image.open(report / match["file"]) as image:
                plots[match["alt"]] = image.size
    assert len(plots) == 4, plots

    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    # Logged in as a person is after Prefect's login form (the stack's API always asks for its
    # auth string): both UIs keep it, base64, under this localStorage key.
    auth = base64.b64encode(ui_server["env"]["PREFECT_API_AUTH_STRING"].encode()).decode()
    context.add_init_script(f"window.localStorage.setItem('prefect-password', '{auth}')")
    page = context.new_page()
    api_calls: list[str] = []
    page.on("request", lambda request: api_calls.append(request.url) if "/api/" in request.url else None)
    run_page = ui_run["link"].replace(ui_server["url"], base)

    def open_artifact(key: str) -> None:
        """From the run's page, as a person goes: the Artifacts tab, then the artifact's card.
        (Each time from the run's link: v1's back button shows the Logs tab under ?tab=Artifacts.)"""
        page.goto(run_page)
        page.get_by_text("Completed").first.wait_for()  # the run's state: the UI reached the API
        page.get_by_text("Artifacts", exact=True).first.click()
        page.wait_for_url(re.compile(r"[?&]tab=Artifacts"))
        page.get_by_text(key, exact=True).first.click()
        # v1's card opens the artifact; v2's opens the key's history, whose one entry is it.
        page.wait_for_url(re.compile(rf"/artifacts/(artifact/[0-9a-f-]{{36}}|key/{key})$"))
        if "/artifacts/key/" in page.url:
            page.locator("a[href*='/artifacts/artifact/']").first.click()
            page.wait_for_url(re.compile(r"/artifacts/artifact/[0-9a-f-]{36}"))

    try:
        page.goto(run_page)
        page.get_by_text("Artifacts", exact=True).first.click()
        page.wait_for_url(re.compile(r"[?&]tab=Artifacts"))
        for key in ("emotion-smoke-report", "emotion-smoke-models", *PROGRESS_KEYS):
            page.get_by_text(key, exact=True).first.wait_for()
        shot(page, screenshots, f"{ui}-artifacts-tab")
        assert "Can't connect" not in page.locator("body").inner_text()

        # The report: its title says it is a smoke run; its table and plots are readable.
        open_artifact("emotion-smoke-report")
        page.get_by_role("heading", name=report_title("emotion-smoke", smoke=True)).wait_for()
        expect_models_table(page, expected_rows)
        page.wait_for_function("""n => [...document.images].filter(i => i.src.startsWith('data:image/png;base64,')
                                                                   && i.complete && i.naturalWidth > 0).length >= n""",
                               arg=len(plots))
        images = page.eval_on_selector_all("img[src^='data:image/png']", "els => els.map(e => [e.alt, e.naturalWidth, e.naturalHeight])")
        # Every plot of report.md arrived whole: the same pixel size as the PNG in the store.
        assert {alt: (width, height) for alt, width, height in images} == plots, images
        report_shot = shot(page, screenshots, f"{ui}-report")
        shot(page, screenshots, f"{ui}-report-full", full_page=True)
        if ui == "v1" and os.environ.get("DISTILLERY_UI_DOCS") == "1":
            shutil.copyfile(report_shot, REPO / "docs" / "ui-report.png")

        # The models table artifact: readable headers and values, no raw field names.
        open_artifact("emotion-smoke-models")
        expect_models_table(page, expected_rows)
        text = page.locator("body").inner_text()
        raw_names = [name for name in ROW_FIELDS if not any(name in header for header in MODEL_COLUMNS)]
        assert raw_names and not [name for name in raw_names if re.search(rf"\b{name}\b", text)], text[:2000]
        assert SMOKE_NOTE in text  # the table's description says so too
        shot(page, screenshots, f"{ui}-models-table")

        # Training progress: one artifact per training stage, finished.
        for key in PROGRESS_KEYS:
            open_artifact(key)
            page.get_by_text("Progress: 100%").first.wait_for()
            if key == PROGRESS_KEYS[0]:
                shot(page, screenshots, f"{ui}-progress")
        assert "Can't connect" not in page.locator("body").inner_text()
    finally:
        context.close()
    wrong = [url for url in api_calls if not url.startswith(ui_server["url"] + "/api/")]
    assert api_calls and not wrong, wrong[:5]
