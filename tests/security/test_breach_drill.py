"""Breach drill: everything an intruder could copy (the SQLite file with its -wal and -shm, a
pg_dump of PostgreSQL, a backup) holds none of the known agency names, user names, case numbers,
purposes, subject labels or secrets of the flow, in UTF-8 or UTF-16, in any letter case, and no
long slice of the probe photo (as uploaded or as the server keeps it) or of a thumbnail."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.security.flow import Flow, found_in, slices


def _at_rest(flow: Flow) -> dict[str, bytes]:
    """What an intruder copies: the database's files (or a dump), and a backup when there is one."""
    out: dict[str, bytes] = {}
    if flow.backend == "sqlite":
        out.update(flow.running_files)
        for p in flow.sqlite_files():
            out[f"{p.name} (server stopped)"] = p.read_bytes()
    else:
        pg_dump = shutil.which("pg_dump")
        if pg_dump is None:
            pytest.skip("pg_dump is not installed")
        dump = subprocess.run([pg_dump, "--no-owner", "--dbname", flow.db_url], capture_output=True,
                              check=True, timeout=120, env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
        out["pg_dump"] = dump.stdout
    out.update(_backup(flow))
    return out


def _backup(flow: Flow) -> dict[str, bytes]:
    """The files of `facesearch backup create`, when that command exists (another part of #4); a
    PostgreSQL dump in pg_dump's compressed custom format is turned back into SQL text first."""
    try:
        import facesearch.services.backup  # noqa: F401
    except ImportError:
        return {}
    target = flow.home.parent / "drill-backup"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESEARCH_")}
    env["FACESEARCH_HOME"] = str(flow.home)
    if flow.backend == "postgresql":
        env["FACESEARCH_DATABASE_URL"] = flow.db_url
    if not target.exists():
        r = subprocess.run([sys.executable, "-m", "facesearch.cli", "backup", "create", str(target)],
                           capture_output=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    out: dict[str, bytes] = {}
    for p in sorted(target.rglob("*")):
        if not p.is_file():
            continue
        name = f"backup {p.relative_to(target)}"
        out[name] = p.read_bytes()
        if p.suffix == ".pgdump":
            out[f"{name} as SQL"] = subprocess.run(["pg_restore", "--file", "-", str(p)], capture_output=True,
                                                   check=True, timeout=120).stdout
    assert out, "the backup holds no file"
    return out


def test_a_stolen_database_reveals_no_client_list_and_no_probe(drill_flow: Flow, security_figure) -> None:  # noqa: ANN001
    flow = drill_flow
    files = _at_rest(flow)
    assert files and all(files.values())
    assert any(b"enc:" in data for data in files.values())  # the encrypted rows are there, and scanned
    strings = flow.strings() + [s for group in flow.secrets.values() for s in group if len(s) > 6]
    probe = flow.probe.read_bytes()
    blobs = {"probe file": [probe], "probe file slice": slices(probe),
             "probe as stored": slices(flow.probe_stored_jpeg),
             "thumbnail": [s for t in flow.thumbnails for s in slices(t, n=2)]}
    hits = [f"{s!r} in {name}" for s in strings for name, data in files.items() if found_in(data, s)]
    hits += [f"{kind} in {name}" for kind, parts in blobs.items() for part in parts
             for name, data in files.items() if part in data]
    planted = len(strings) + sum(len(parts) for parts in blobs.values())
    recovered = len({h.rsplit(" in ", 1)[0] for h in hits})
    security_figure("breach_strings_planted", planted)
    security_figure("breach_strings_recovered", recovered)
    assert not hits, f"recovered from a copy of the {flow.backend} database: {hits[:20]}"


def test_the_drill_would_see_a_clear_value(drill_flow: Flow, tmp_path: Path) -> None:
    """The scan itself works: the same known strings are found where they are in clear (so a
    zero above is a real zero, not a scan that looks at nothing)."""
    flow = drill_flow
    clear = ("\n".join(flow.strings()).encode("utf-16-le") + flow.probe.read_bytes()[100:500]
             + flow.known["agency"][0].upper().encode())
    assert all(found_in(clear, s) for s in flow.strings())
    assert found_in(clear, flow.known["agency"][0].lower())
    assert any(part in clear for part in slices(flow.probe.read_bytes()[100:500]))
