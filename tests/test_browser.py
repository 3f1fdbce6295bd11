"""The run pages in a real browser: a Prefect server with its UI, the flows run against it with
hostile failures and a hostile LLM answer, and headless Chromium opening each artifact's page in
the default (new) UI and in the old one.

The charts must be rendered (the images present, loaded, sized), and nothing hostile may become a
link, an image or a heading: this is where GitHub's autolinks and both UIs' own markdown renderers
are checked. Screenshots (light and dark) are kept under the test's tmp dir for a person to look at.
Skipped, saying why, where Chromium is not installed (`make test` installs it as root on Debian).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from observer.cli.supervisor import _start as start_child
from observer.cli.supervisor import _wait_until_healthy as wait_until_healthy
from observer.intake import record_ops
from observer.ops import Op
from observer.settings import load_settings
from tests.browser import Browser, Page, find_chromium
from tests.fakes import FakeUpstream, Reply
from tests.product import ROOT, free_port

CHROMIUM, WHY_NOT = find_chromium()
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason=WHY_NOT),
    pytest.mark.timeout(300),  # a Prefect server with its UI, three flows, a browser
]

HOSTILE = (
    "[x](http://evil/link) ![](http://evil/pixel.png) <img src=http://evil/tag.png>"
    " www.evil.com mail@evil.com http://evil.com/bare `tick` a|b # not a heading"
)
ANSWER = "\n".join(
    [
        "# Injected heading",
        "[click here](http://evil/answer)",
        "![](http://evil/answer.png)",
        '<img src="http://evil/answer-tag.png" onerror="alert(1)">',
        "<script>alert(1)</script>",
        "Visit www.evil.com or http://evil.com or write to mail@evil.com",
    ]
)
RUN_FLOWS = textwrap.dedent(
    """
    import sys
    from flows.analyze_errors import analyze_errors
    from flows.consolidate_playbooks import consolidate_playbooks
    from flows.ingest_events import ingest_events
    from observer.pipelines.ingest import IngestParameters

    ingest_events(IngestParameters(reason=sys.argv[1]))
    assert analyze_errors(return_state=True).is_completed()
    consolidate_playbooks()
    """
)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server with its UI on a free loopback port, started as `observer up` starts it;
    yields its base URL."""
    home = tmp_path_factory.mktemp("prefect-ui")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"{url}/api",  # what the UI is told to call
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    server = start_child(
        "prefect server", env, signal.SIGTERM, home, "server", "start", "--host", "127.0.0.1",
        "--port", str(port),
    )  # fmt: skip
    try:
        wait_until_healthy(f"{url}/api/health", server, "the Prefect server")
        yield url
    finally:
        server.stop(timeout=60)


@pytest.fixture(scope="module")
def artifacts(ui: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """The flows run against the UI's server over hostile data; their artifacts, by key."""
    data = tmp_path_factory.mktemp("browser") / "data"
    settings = load_settings(data_dir=data)
    now = datetime.now(UTC)
    ops = [
        Op(
            timestamp=(now - timedelta(days=n % 4, minutes=n)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            endpoint=("scenario:fill", "hybrid:search", f"[ep](http://evil/{n % 3})")[n % 3],
            input_summary=HOSTILE,
            success=n % 4 == 0,
            duration_ms=10 + n,
            output_summary=HOSTILE,
            error=None if n % 4 == 0 else f"staffer {n} not found: {HOSTILE}",
        )
        for n in range(48)
    ]
    record_ops(settings, [(None, op) for op in ops])
    llm, gateway = FakeUpstream(), FakeUpstream()
    llm.default("/ai/generate", Reply(body={"text": ANSWER}))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_API_URL=f"{ui}/api",
            PREFECT_HOME=str(data.parent / "client-home"),
            OBSERVER_DATA_DIR=str(data),
            LAKEHOUSE_URL=llm.url,
            GATEWAY_URL=gateway.url,
        )
        result = subprocess.run(
            [sys.executable, "-c", RUN_FLOWS, HOSTILE],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        llm.close()
        gateway.close()
    found = httpx.post(f"{ui}/api/artifacts/filter", json={}, timeout=30).json()
    return {a["key"]: a for a in found if a["key"]}


IMAGES = "[...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/svg+xml'))"
#: Once at least two charts are loaded: each one's natural width and drawn width and height.
CHARTS = f"""(() => {{
  const images = {IMAGES};
  if (images.length < 2 || !images.every(i => i.complete && i.naturalWidth > 0)) return null;
  return images.map(i => [i.naturalWidth, i.getBoundingClientRect().width, i.getBoundingClientRect().height]);
}})()"""
HOSTILE_ELEMENTS = """[
  ...document.querySelectorAll('a[href*="evil"], img[src*="evil"]'),
  ...[...document.querySelectorAll('script')].filter(s => s.textContent.includes('alert(1)'))
].map(e => e.outerHTML.slice(0, 160))"""
HEADINGS = "[...document.querySelectorAll('h1,h2,h3,h4,h5,h6')].map(h => h.textContent.trim())"


def _open(page: Page, url: str) -> list[list[float]]:
    """Open `url`, wait until its charts are loaded and stay so; their natural and drawn sizes."""
    page.goto(url)
    page.wait_for(CHARTS)
    time.sleep(1)  # the page settles (fonts, the side panel)
    return page.wait_for(CHARTS)


def _check_page(page: Page, url: str, shots: Path, name: str, shows: str) -> None:
    try:
        sizes = _open(page, url)
    except AssertionError:
        page.screenshot(shots / f"{name}-failed.png")  # what the page showed instead
        raise
    assert len(sizes) == 2
    for natural, width, height in sizes:
        assert natural == 640 and width >= 320 and height >= 100, sizes
    page.screenshot(shots / f"{name}.png")
    hostile = page.evaluate(HOSTILE_ELEMENTS)
    assert hostile == [], hostile
    headings = page.evaluate(HEADINGS)
    assert not any("Injected" in h or "not a heading" in h for h in headings), headings
    assert shows in page.evaluate("document.body.innerText")


def test_the_charts_render_in_both_uis_and_hostile_text_stays_text(
    ui: str, artifacts: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    browser = Browser(CHROMIUM)
    try:
        page = browser.page()
        page.goto(f"{ui}/")
        assert page.wait_for("location.pathname.startsWith('/v2') && location.pathname")
        pages = {
            "analyze-errors-report": "Visit www.evil.com or http://evil.com or write to mail@evil.com",
            "consolidate-playbooks-changes": "[ep](http://evil/2) (4/16)",
        }
        for key, shows in pages.items():
            new = f"{ui}/v2/artifacts/artifact/{artifacts[key]['id']}"
            _check_page(page, new, tmp_path, f"{key}-new-light", shows)
            page.evaluate("localStorage.setItem('vite-ui-theme', 'dark')")
            _check_page(page, new, tmp_path, f"{key}-new-dark", shows)
            assert page.evaluate("document.documentElement.classList.contains('dark')")
            page.evaluate("localStorage.setItem('vite-ui-theme', 'light')")
            old = f"{ui}/artifacts/artifact/{artifacts[key]['id']}"
            _check_page(page, old, tmp_path, f"{key}-old", shows)
        ingest = artifacts["ingest-events"]
        page.goto(f"{ui}/v2/artifacts/artifact/{ingest['id']}")
        page.wait_for("document.body.innerText.includes('Ingestion run')")
        assert page.evaluate(HOSTILE_ELEMENTS) == []
        assert f"Ingestion run ({HOSTILE})" in page.evaluate("document.body.innerText")
    finally:
        browser.close()
    print(json.dumps(sorted(p.name for p in tmp_path.glob("*.png"))))
