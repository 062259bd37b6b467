"""The flow that the breach drill and the secrets scan run against a live server: agencies, users,
galleries and searches with distinctive, known strings, and every secret the flow saw (passwords,
TOTP secrets and codes, bearer tokens), so that a test can look for all of them afterwards in the
database files, a dump, the server's log, /metrics, the error answers and the audit trail."""
from __future__ import annotations

import io
import re
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from facesearch.auth.totp import code_at
from facesearch.config import Settings
from tests.api.conftest import start_server

PASSWORD = "Plover-Quartz-Tambourine-81"
PATTERN = r"^\d{4}-\d{6}$"
AGENCIES = ["Quillfeather Marsh Constabulary", "Vorpal Heights Police Bureau"]
PURPOSES = ["velvet harpsichord larceny inquiry", "missing heliotrope courier search"]
USERS = [  # (user name as typed, role, agency index)
    ("Zanthippe.Okonkwo-Frisby", "investigator", 0),
    ("bartholomew.quagmire", "supervisor", 0),
    ("Cornelius Fairweather-Nakamura", "investigator", 0),
    ("Ysolde Penhaligon", "investigator", 1),
]
CASES = ["4817-395021", "5302-918274", "6640-207735"]
UNKNOWN_USER = "phantom.wolverhampton"  # tried at sign-in, never created
SUBJECTS = ["Ptolemaeus Brackenridge", "Hortensia Vandermolen"]


@dataclass
class Flow:
    backend: str
    home: Path
    db_url: str
    probe: Path
    server_log: Path
    known: dict[str, list[str]]            # kind -> strings that must never be readable at rest
    secrets: dict[str, list[str]] = field(default_factory=dict)  # passwords, TOTP secrets/codes, tokens
    error_bodies: list[str] = field(default_factory=list)
    metrics: str = ""
    probe_stored_jpeg: bytes = b""         # what the server stores (re-encoded), before encryption
    thumbnails: list[bytes] = field(default_factory=list)
    running_files: dict[str, bytes] = field(default_factory=dict)  # SQLite files while the server ran

    def strings(self) -> list[str]:
        return [s for group in self.known.values() for s in group]

    def sqlite_files(self) -> list[Path]:
        db = self.home / "facesearch.db"
        return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


def provision(home: Path, dev_labels, db_url: str | None) -> tuple[dict[str, str], Path]:  # noqa: ANN001
    """Agencies, users and a gallery per agency; returns {user name: TOTP secret} and a probe."""
    from facesearch.facade import FaceSearch
    from facesearch.services.accounts import Accounts

    kw: dict[str, object] = dict(home=home, workers=1, argon2_memory_kib=1024, argon2_time_cost=1)
    if db_url:
        kw["database_url"] = db_url
    secrets: dict[str, str] = {}
    with FaceSearch(settings=Settings(**kw)) as fs:
        acc = Accounts(fs.ctx)
        for name in AGENCIES:
            acc.add_agency(name, PATTERN, PURPOSES)
        for name, role, agency in USERS:
            secrets[name] = acc.add_user(name, PASSWORD, role, AGENCIES[agency]).totp_secret
        photos = home.parent / "photos"  # the operator's files, outside the home (and its backups)
        for gallery, agency, idents in [("drill-one", 0, ["dlib_John_Simm", "dlib_John_Salley"]),
                                        ("drill-two", 1, ["dlib_John_Savage"])]:
            for ident, subject in zip(idents, SUBJECTS + SUBJECTS):
                (photos / gallery / subject).mkdir(parents=True)
                for p in dev_labels[ident][:3]:
                    (photos / gallery / subject / p.name).write_bytes(p.read_bytes())
            fs.ingest(photos / gallery, gallery=gallery, legal_basis="State booking records, statute 12-3",
                      subject_from_folder=True, agency=AGENCIES[agency])
    return secrets, dev_labels["dlib_John_Simm"][5]


def start(home: Path, db_url: str | None, log: Path) -> tuple[subprocess.Popen, str]:
    """The server with nothing of this environment's FACESEARCH_* settings, logging to ``log``."""
    return start_server(home, db_url, log=log, clean_env=True)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _stored_probe(probe: Path) -> bytes:
    """The probe as the server keeps it (re-encoded JPEG, before encryption)."""
    from PIL import Image as PILImage

    from facesearch.pipeline.decode import decode_image

    rgb = decode_image(probe.read_bytes(), max_pixels=80_000_000, max_bytes=60 * 1024 * 1024).rgb
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def run_flow(backend: str, root: Path, dev_labels, db_url: str | None) -> Flow:  # noqa: ANN001
    """In ``root``: the home folder, the gallery photos and the server's log. Provision, serve, and exercise sign-in (right and wrong), TOTP, searches, reviews, exports,
    oversight and a few errors; the server is stopped at the end (its files stay)."""
    home = root / "home"
    home.mkdir()
    totp, probe = provision(home, dev_labels, db_url)
    log = home.parent / "server.log"
    flow = Flow(backend, home, Settings(home=home, database_url=db_url).db_url, probe, log,
                known={"agency": list(AGENCIES), "user": [u for u, _, _ in USERS] + [UNKNOWN_USER],
                       "case": list(CASES), "purpose": list(PURPOSES), "subject": list(SUBJECTS)},
                secrets={"password": [PASSWORD], "totp_secret": list(totp.values()), "totp_code": [],
                         "token": []})
    flow.probe_stored_jpeg = _stored_probe(probe)
    proc, url = start(home, db_url, log)
    try:
        _exercise(flow, url, totp)
        for p in flow.sqlite_files():  # the write-ahead log is gone once the last connection closes
            flow.running_files[f"{p.name} (server running)"] = p.read_bytes()
    finally:
        stop(proc)
    return flow


def _answer(flow: Flow, r: httpx.Response) -> httpx.Response:
    if r.status_code >= 400:
        flow.error_bodies.append(r.text)
    return r


def _login(flow: Flow, url: str, name: str, secret: str) -> str:
    for _ in range(2):
        code = code_at(secret, datetime.now(timezone.utc))
        flow.secrets["totp_code"].append(code)
        r = _answer(flow, httpx.post(f"{url}/api/v1/auth/login", timeout=60,
                                     json={"username": name, "password": PASSWORD, "totp": code}))
        if r.status_code == 200:
            token = r.json()["access_token"]
            flow.secrets["token"].append(token)
            return token
        time.sleep(30.5 - time.time() % 30)  # the code of this step was used already
    raise AssertionError(r.text)


def _exercise(flow: Flow, url: str, totp: dict[str, str]) -> None:
    inv, sup, inv2, other = (u for u, _, _ in USERS)
    # failures first: a wrong password, a wrong code, an unknown user, a malformed request
    for body in ({"username": inv, "password": "Not-The-Password-1", "totp": "000000"},
                 {"username": inv.upper(), "password": PASSWORD, "totp": "999999"},
                 {"username": UNKNOWN_USER, "password": PASSWORD, "totp": "123456"},
                 {"username": sup}):
        assert _answer(flow, httpx.post(f"{url}/api/v1/auth/login", json=body, timeout=60)).status_code >= 400
    tokens = {name: _login(flow, url, name, totp[name]) for name in (inv, sup, inv2, other)}

    def client(name: str) -> httpx.Client:
        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[name]}"}, timeout=120)

    image = flow.probe.read_bytes()
    search_ids = []
    with client(inv) as c:
        for case, purpose in zip(CASES[:2], PURPOSES):
            r = _answer(flow, c.post("/api/v1/searches", files={"image": ("probe.jpg", image, "image/jpeg")},
                                     data={"gallery": "drill-one", "case_number": case, "purpose": purpose,
                                           "authorization_ref": f"warrant for {case}"}))
            assert r.status_code == 200, r.text
            search_ids.append(r.json()["search_id"])
            for cand in r.json()["candidates"][:2]:
                t = c.get(cand["thumbnail_url"])
                assert t.status_code == 200
                flow.thumbnails.append(t.content)
        cand = c.get(f"/api/v1/searches/{search_ids[0]}").json()["candidates"][0]["candidate_id"]
        # errors: another agency's gallery, a case number off the pattern, a refused purpose,
        # a missing search, an export of a case without searches
        for data in ({"gallery": "drill-two", "case_number": CASES[2], "purpose": PURPOSES[0]},
                     {"gallery": "drill-one", "case_number": "XX" + CASES[2], "purpose": PURPOSES[0]},
                     {"gallery": "drill-one", "case_number": CASES[2], "purpose": "curiosity"}):
            r = _answer(flow, c.post("/api/v1/searches", files={"image": ("p.jpg", image, "image/jpeg")},
                                     data=data))
            assert r.status_code >= 400
        assert _answer(flow, c.get("/api/v1/searches/" + "0" * 32)).status_code == 404
        assert _answer(flow, c.get(f"/api/v1/cases/{CASES[2]}/export.pdf")).status_code == 404
        assert c.get(f"/api/v1/cases/{CASES[0]}/export.pdf").status_code == 200
    with client(inv2) as c:
        r = _answer(flow, c.post(f"/api/v1/searches/{search_ids[0]}/reviews",
                                 json={"candidate_id": cand, "decision": "reject",
                                       "note": f"not the person of case {CASES[0]}"}))
        assert r.status_code in (200, 201), r.text
    with client(sup) as c:
        assert c.get("/api/v1/oversight").status_code == 200
        assert c.get(f"/api/v1/cases/{CASES[1]}/export.pdf").status_code == 200
    with client(other) as c:  # another agency: its answers for agency one's search are 404s
        assert _answer(flow, c.get(f"/api/v1/searches/{search_ids[0]}")).status_code == 404
        assert _answer(flow, c.get(f"/api/v1/cases/{CASES[0]}/export.pdf")).status_code == 404
    r = _answer(flow, httpx.get(f"{url}/api/v1/searches", headers={"Authorization": "Bearer nonsense"}))
    assert r.status_code == 401
    with client(inv) as c:
        assert c.post("/api/v1/auth/logout").status_code in (200, 204)
    assert _answer(flow, httpx.get(f"{url}/api/v1/searches",
                                   headers={"Authorization": f"Bearer {tokens[inv]}"})).status_code == 401
    flow.metrics = httpx.get(f"{url}/metrics", timeout=30).text


# scanning ------------------------------------------------------------------------------------
def encodings(s: str) -> list[bytes]:
    """The byte forms a string can take at rest: UTF-8 and UTF-16 (both byte orders)."""
    return [s.encode("utf-8"), s.encode("utf-16-le"), s.encode("utf-16-be")]


def found_in(data: bytes, s: str) -> bool:
    """``s`` in ``data`` as UTF-8 or UTF-16, exactly or ignoring the case of ASCII letters."""
    lowered = data.lower()
    return any(e in data for e in encodings(s)) or any(e.lower() in lowered for e in encodings(s.lower()))


def slices(blob: bytes, n: int = 3, size: int = 256) -> list[bytes]:
    """A few long slices of ``blob`` (start, middle, end of its body)."""
    if len(blob) <= size:
        return [blob]
    step = (len(blob) - size) // max(1, n - 1)
    return [blob[i * step: i * step + size] for i in range(n)]


def code_found(text: str, code: str) -> bool:
    """A 6-digit code as a number of its own in ``text`` (not part of a longer number or a decimal)."""
    return re.search(rf"(?<![\d.]){re.escape(code)}(?![\d.])", text) is not None
