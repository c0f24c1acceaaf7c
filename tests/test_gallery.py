"""The results gallery: every link and image resolves (fast), and a real headless Chromium renders every card with
every image loaded (skipped with the reason where Chromium is absent)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from simulations import catalog, gallery

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "gallery" / "index.html"


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.cards: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "article":
            self.cards.append(a["data-experiment"])


def _refs(page: Path) -> _Refs:
    p = _Refs()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def _check_refs(page: Path) -> _Refs:
    refs = _refs(page)
    for ref in refs.images + refs.links:
        if ref.startswith("#"):
            assert ref[1:] in refs.ids, f"{page}: anchor {ref} has no target"
            continue
        assert not urlparse(ref).scheme, f"{page}: external reference {ref} (the gallery is self-contained)"
        target = (page.parent / unquote(ref)).resolve()
        assert target.is_file(), f"{page}: {ref} -> {target} does not exist"
    return refs


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return gallery.build(out_dir=tmp_path_factory.mktemp("gallery"))


def test_every_registered_experiment_has_one_card_and_every_reference_exists(built):
    refs = _check_refs(built)
    names = [e.name for e in catalog.entries()]
    assert refs.cards == names
    results = ROOT / "docs" / "results"
    pngs = sorted(str(p.resolve()) for n in names for p in (results / n).glob("*.png"))
    assert sorted(str((built.parent / s).resolve()) for s in refs.images) == pngs  # every plot shown, once


def test_experiments_without_a_full_size_record_are_marked(built):
    text = built.read_text(encoding="utf-8")
    missing = [e.name for e in catalog.entries() if not (ROOT / "docs/results" / e.name / "result.json").is_file()]
    for name in missing:
        card = text[text.index(f'data-experiment="{name}"'):].split("</article>")[0]
        assert "no full-size record yet" in card, name
    assert text.count('class="card missing"') == len(missing)


def test_build_is_deterministic(built, tmp_path):
    again = gallery.build(out_dir=built.parent)
    assert again.read_bytes() == built.read_bytes()


def test_a_schema2_record_shows_its_claims_kinds_and_provenance(tmp_path):
    from simulations import registry

    results = tmp_path / "results"
    registry.run("ffe-single", smoke=True, out_dir=results / "ffe-single", command="python -m simulations run "
                 "ffe-single --smoke --set seeds=1 --set widths=64,256", overrides={"seeds": "1", "widths": "64,256"})
    page = gallery.build(results_dir=results, out_dir=tmp_path / "out")
    _check_refs(page)
    card = page.read_text().split('data-experiment="ffe-single"')[1].split("</article>")[0]
    assert "smoke-size record only" in card and "--set seeds=1" in card
    assert "observation" in card and "<th>threshold</th>" in card and "git commit" in card


def test_committed_gallery_links_resolve():
    if not COMMITTED.is_file():
        pytest.skip("docs/gallery/index.html is not committed yet (python -m simulations gallery)")
    _check_refs(COMMITTED)


# ------------------------------------------------------------------------------------------- headless browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _DevTools:
    """The Chrome DevTools Protocol over --remote-debugging-pipe (fd 3 in, fd 4 out; NUL-terminated JSON)."""

    def __init__(self, binary: str, profile: Path) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._evt_r, evt_w = os.pipe()
        # above fd 9 first, so that placing them at 3 and 4 in the child cannot clobber one with the other
        high = (fcntl.fcntl(cmd_r, fcntl.F_DUPFD, 10), fcntl.fcntl(evt_w, fcntl.F_DUPFD, 10))
        for fd in (cmd_r, evt_w):
            os.close(fd)

        def _fds() -> None:  # runs in the child before exec: the pipe ends where Chromium expects them
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--allow-file-access-from-files",
             "--hide-scrollbars", "--no-first-run", "--no-default-browser-check", "about:blank"],
            preexec_fn=_fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in high:
            os.close(fd)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._evt_r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            e = self._read(deadline)
            if e.get("method") == method:
                return e
            self.events.append(e)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._evt_r)


_PROBE = """JSON.stringify({
  cards: Array.from(document.querySelectorAll('article.card')).map(c => c.dataset.experiment),
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                 width: i.naturalWidth, height: i.naturalHeight})),
  height: document.documentElement.scrollHeight
})"""


@pytest.mark.timeout(180)
def test_gallery_renders_in_headless_chromium(built):
    binary = _chromium()
    if binary is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install -y chromium); the link test above still ran")
    shot = ROOT / "runs" / "gallery-screenshot.png"  # runs/ is ignored: look at it, never commit it
    shot.parent.mkdir(exist_ok=True)
    browser = _DevTools(binary, built.parent / "chromium-profile")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.call("Page.enable", session)
        browser.call("Emulation.setDeviceMetricsOverride", session, width=1400, height=1000, deviceScaleFactor=1,
                     mobile=False)
        browser.call("Page.navigate", session, url=built.resolve().as_uri())
        browser.wait_event("Page.loadEventFired")
        state = json.loads(browser.call("Runtime.evaluate", session, expression=_PROBE,
                                        returnByValue=True)["result"]["value"])
        png = browser.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                           clip={"x": 0, "y": 0, "width": 1400, "height": min(state["height"], 16384), "scale": 1})
        shot.write_bytes(base64.b64decode(png["data"]))
    finally:
        browser.close()
    assert state["cards"] == [e.name for e in catalog.entries()]
    broken = [i["src"] for i in state["images"] if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert state["images"] and not broken, f"images that did not load: {broken}"
    assert shot.stat().st_size > 10_000
