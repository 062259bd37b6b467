"""One real Milvus standalone server for the whole test session (the ``milvus`` extra).

``milvus_uri`` starts the server shipped by the PyPI package ``milvus`` (its own data folder
under the session's tmp folder, free ports found by the package) once, and stops it at the end;
``FACESEARCH_TEST_MILVUS_URI`` points the tests at a running server instead. Without the extra
the tests that use it are skipped with the reason. Two standalone servers on one machine do not
start side by side (the second one times out), so do not run the Milvus benchmark meanwhile.
"""
from __future__ import annotations

import os
import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


def _unavailable() -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymilvus 2.4 imports the deprecated pkg_resources
            import milvus  # noqa: F401
            import pymilvus  # noqa: F401
    except ImportError as e:
        return f"Milvus tests need the milvus extra (pip install -e '.[milvus]'): {e}"
    return None


class MilvusTestServer:
    def __init__(self, base: Path) -> None:
        from milvus import MilvusServer

        self.base = base
        self._server = MilvusServer()
        self._server.set_base_dir(str(base))
        # a Strong read waits about two proxy time ticks: 20 ms instead of Milvus' default 200 ms
        self._server.config.set("proxy.timeTickInterval", 20)
        self.start_s = 0.0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self._server.listen_port}"

    def start(self, timeout_s: float = 150) -> None:
        t = time.perf_counter()
        self._server.wait_for_started = False
        self._server.start()
        try:
            self._server.wait_started(timeout=timeout_s * 1000)  # polls /healthz
        except (TimeoutError, RuntimeError) as e:
            self.stop()
            log = self.base / "logs" / "milvus-stdout.log"
            raise RuntimeError(f"the Milvus test server did not start ({e}); is another Milvus standalone "
                               f"server running on this machine? Its log: {log}") from None
        self.start_s = time.perf_counter() - t

    def stop(self, grace_s: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (the session's server is thrown away; a
        restart test gives it time to shut down cleanly)."""
        proc = self._server.server_proc
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._server.stop()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusTestServer | str]:
    external = os.environ.get("FACESEARCH_TEST_MILVUS_URI")
    if external:
        yield external
        return
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    server = MilvusTestServer(tmp_path_factory.mktemp("milvus"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_uri(milvus_server: MilvusTestServer | str) -> str:
    """The test server's URI (http://127.0.0.1:PORT)."""
    return milvus_server if isinstance(milvus_server, str) else milvus_server.uri
