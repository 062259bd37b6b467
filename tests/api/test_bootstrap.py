"""The first start of a fresh home prints a one-time link that creates the first system
administrator; the link works once."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.api.conftest import FAST_ARGON2, PASSWORD, _free_port


def test_first_start_prints_a_one_time_bootstrap_link(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, **FAST_ARGON2, "FACESEARCH_HOME": str(tmp_path / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "facesearch.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        link = None
        deadline = time.time() + 60
        while time.time() < deadline and link is None:
            line = proc.stderr.readline()
            m = re.search(r"(http://\S+/bootstrap#token=(\S+))", line)
            if m:
                link, token = m.group(1), m.group(2)
        assert link is not None, "no bootstrap link printed"
        assert (tmp_path / "home" / "facesearch.db").exists()  # the first start created the database
        assert token not in (tmp_path / "home" / "bootstrap.sha256").read_text()  # only its hash is kept
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert "Create the first system administrator" in httpx.get(f"{url}/bootstrap").text
        form = {"token": token, "username": "root", "password": PASSWORD}
        r = httpx.post(f"{url}/bootstrap", data=form)
        assert r.status_code == 200 and "Administrator root created" in r.text and "<svg" in r.text
        again = httpx.post(f"{url}/bootstrap", data={**form, "username": "root2"})
        assert again.status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # once an administrator exists, a restart issues no new link
    from facesearch.config import Settings
    from facesearch.services.bootstrap import issue_bootstrap
    from facesearch.services.context import AppContext

    ctx = AppContext(Settings(home=tmp_path / "home"))
    assert issue_bootstrap(ctx) is None
    ctx.close()
