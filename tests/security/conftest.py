"""A live server for the fuzz tests: the same provisioned home as the API suite (SQLite), but the
server's stderr goes to a file so that a 500's traceback can be shown next to the failing request
(and so that a chatty server can never block on a full, unread pipe)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import pytest

from tests.api.conftest import FAST_ARGON2, Account, _free_port, login, provision, scratch_database


@dataclass
class FuzzServer:
    url: str
    home: Path
    accounts: dict[str, Account]
    stderr_path: Path
    probe: Path  # a photo of a subject in gallery bookings-a

    def token(self, who: str) -> str:
        """A fresh bearer token (not cached: a fuzz run may revoke the one it was given)."""
        return login(self.url, self.accounts[who])

    def stderr_tail(self, start: int = 0, limit: int = 8000) -> str:
        """The server's stderr from byte ``start`` on, at most ``limit`` characters (the end)."""
        with self.stderr_path.open("rb") as fh:
            fh.seek(start)
            return fh.read().decode(errors="replace")[-limit:]

    def stderr_size(self) -> int:
        return self.stderr_path.stat().st_size


@pytest.fixture(scope="session")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, dev_labels) -> FuzzServer:  # noqa: ANN001
    home = tmp_path_factory.mktemp("fuzz-home")
    accounts, probe, _noface = provision(home, dev_labels, None)
    port = _free_port()
    # no operator FACESEARCH_* settings leak in (a database URL, a device): only this home
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESEARCH_")}
    env.update(FAST_ARGON2, FACESEARCH_HOME=str(home))
    stderr_path = home / "server.stderr.log"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "facesearch.cli", "serve", "--port", str(port)],
                                env=env, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    server = FuzzServer(url, home, accounts, stderr_path, probe)
    deadline = time.time() + 60
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {server.stderr_tail(limit=2000)}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server did not start in 60 s")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_REPORT = pytest.StashKey[list]()
_FIGURES = pytest.StashKey[dict]()


@pytest.fixture
def fuzz_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Adds a line to the terminal summary: shown with or without ``-s``."""
    return request.config.stash.setdefault(_REPORT, []).append


@pytest.fixture
def security_figure(request: pytest.FixtureRequest) -> Callable[[str, float], None]:
    """Records one of the README's security figures (``name`` -> number), adding to what other tests
    recorded under the same name (so attempts and successes sum over a parametrised suite). The
    figures are printed at the end of the run and written as JSON to ``.pytest_cache/`` (or to
    ``$FACESEARCH_SECURITY_FIGURES``), where the README's figures are taken from."""
    figures = request.config.stash.setdefault(_FIGURES, {})

    def record(name: str, value: float) -> None:
        figures[name] = figures.get(name, 0) + value

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:  # noqa: ANN001
    lines = config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.section("schema fuzzing")
        for line in lines:
            terminalreporter.write_line(line)
    figures = config.stash.get(_FIGURES, {})
    if figures:
        terminalreporter.section("security figures")
        for name in sorted(figures):
            terminalreporter.write_line(f"{name}: {figures[name]:g}")
        target = Path(os.environ.get("FACESEARCH_SECURITY_FIGURES")
                      or Path(str(config.rootpath)) / ".pytest_cache" / "security-figures.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def drill_flow(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, dev_labels):  # noqa: ANN001, ANN201
    """The breach drill's flow (tests/security/flow.py) run once per backend: known names, case
    numbers and secrets through a live server; the server is stopped, its database kept."""
    from tests.security.flow import run_flow

    home = tmp_path_factory.mktemp(f"drill-{request.param}")
    with scratch_database(request.param, "fs_drill") as db_url:
        yield run_flow(request.param, home, dev_labels, db_url)
