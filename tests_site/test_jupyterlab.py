"""A chapter opened in JupyterLab reads like the book: MyST directives render (jupyterlab-myst).

The test starts JupyterLab (from the same environment, on a free localhost port, without a token, with news,
update checks and autosave off) on a temporary copy of one chapter, opens it in the headless Chromium of
``conftest.py`` and checks that the first theorem renders as a theorem, with its number, title and typeset
math, and that no MyST source (``:label:``, ``{prf:...}``, ``$$``) shows as raw text. Without jupyterlab-myst,
JupyterLab shows the directive as a code block starting with ``:label: thm-iso-exact``, and the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = "04_isotropic.ipynb"
THEOREM_TITLE = "One optimal TTT step, exact"  # the first {prf:theorem} of the chapter, label thm-iso-exact
SETTINGS = {  # JupyterLab user settings: no news or update checks (nothing fetched), never save the copy
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running JupyterLab serving a copy of the chapter; yields its base URL."""
    tmp = tmp_path_factory.mktemp("jupyterlab")
    (tmp / "root").mkdir()
    shutil.copy(ROOT / "book" / CHAPTER, tmp / "root" / CHAPTER)
    for name, values in SETTINGS.items():
        path = tmp / "settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"))
    port = _free_port()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
               f"--ServerApp.root_dir={tmp / 'root'}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    log = open(tmp / "jupyterlab.log", "w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{(tmp / 'jupyterlab.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# Waits until the theorem and every markdown cell have rendered (or 90 s passed); reports what the notebook shows.
RENDERED = """
const done = arguments[arguments.length - 1];
const [title, expectedCells] = arguments;
const start = Date.now();
function look() {
  const proofs = Array.from(document.querySelectorAll('.jp-MarkdownCell aside.myst-proof'));
  const theorem = proofs.find(a => (a.querySelector('.myst-proof-title') || a).textContent.includes(title));
  const markdown = Array.from(document.querySelectorAll('.jp-MarkdownCell .jp-Cell-inputWrapper'));
  const myst = document.querySelectorAll('.jp-MarkdownCell .myst').length;
  if ((theorem && myst >= expectedCells) || Date.now() - start > 90000) {
    done({
      markdownCells: markdown.length,
      mystCells: myst,
      theoremHeader: theorem ? theorem.querySelector('.myst-proof-title').textContent : null,
      theoremMath: theorem ? theorem.querySelectorAll('.katex, mjx-container').length : 0,
      text: markdown.map(c => c.innerText).join('\\n'),
      resources: performance.getEntriesByType('resource').map(e => e.name),
    });
  } else {
    setTimeout(look, 500);
  }
}
look();
"""


def test_chapter_renders_theorems_in_jupyterlab(lab, browser):
    browser.set_script_timeout(120)
    browser.get(f"{lab}/lab/tree/{CHAPTER}")
    cells = json.loads((ROOT / "book" / CHAPTER).read_text())["cells"]
    n_markdown = sum(cell["cell_type"] == "markdown" for cell in cells)
    info = browser.execute_async_script(RENDERED, THEOREM_TITLE, n_markdown)
    shown = info["text"][:600]
    assert info["markdownCells"] == n_markdown, f"JupyterLab showed {info['markdownCells']} of {n_markdown} markdown cells"
    assert info["theoremHeader"] is not None, f"no rendered theorem '{THEOREM_TITLE}'; the notebook shows:\n{shown}"
    assert info["theoremHeader"].startswith("Theorem"), info["theoremHeader"]
    assert f"({THEOREM_TITLE})" in info["theoremHeader"], info["theoremHeader"]
    assert info["theoremMath"] >= 3, f"the theorem's math is not typeset ({info['theoremMath']} formulas)"
    assert info["mystCells"] == n_markdown, f"jupyterlab-myst rendered {info['mystCells']} of {n_markdown} markdown cells"
    for raw in (":label:", "{prf:", "$$", "```"):
        assert raw not in info["text"], f"MyST source {raw!r} shows as raw text in JupyterLab:\n{shown}"
    external = [u for u in info["resources"] if not u.startswith(lab) and not u.startswith(("data:", "blob:"))]
    assert not external, f"JupyterLab fetched from outside: {external}"
