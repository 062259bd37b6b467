"""Bounded, reproducible schema fuzzing of the live service: every operation in ``/openapi.json``
gets schema-conforming (positive) and schema-violating (negative) requests, with an investigator's
bearer token and without one, and once more with identifiers that exist (a real search, candidate,
case and gallery) so that generated requests get past the 404s into the handlers. Whatever the
input, the server answers below 500 and stays up.

Bounds: ``MAX_EXAMPLES`` per operation, per generation mode, per pass; ``derandomize=True`` and no
example database, so a run is the same run in CI and here. Every 5xx and every dropped connection
is collected (not raised at the first, so one run lists them all) with a curl command that
reproduces it and the server's stderr written while it was handled.

Note: in negative mode Schemathesis also sends "missing ``Authorization``" cases, so part of the
investigator pass is unauthenticated by design."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (the fuzz tests need it)")
import requests  # noqa: E402 - a dependency of schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

from tests.api.conftest import CASE, PURPOSE
from tests.security.conftest import FuzzServer

MAX_EXAMPLES = 25
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
# Browser (HTML) routes are mounted with include_in_schema=False; they must stay out of the
# schema, and are filtered here as well should one ever leak in.
HTML_PREFIXES = ("/login", "/logout", "/search", "/searches/", "/thumbnails/", "/cases", "/dashboard",
                 "/admin/", "/static/", "/bootstrap")
LOGOUT = ("POST", "/api/v1/auth/logout")
SEARCH = ("POST", "/api/v1/searches")


@dataclass
class Known:
    """Identifiers that exist: fixed into path parameters, and the safeguard fields of a search
    form, so that fuzzed requests reach the code behind the lookups."""
    path: dict[str, str]
    search_form: dict[str, str]


@dataclass
class Finding:
    operation: str
    mode: str
    status: int | str
    request: str
    response: str
    server_log: str


@dataclass
class Stats:
    cases: int = 0
    per_operation: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)  # operation -> status -> count
    findings: list[Finding] = field(default_factory=list)
    nothing_to_negate: list[str] = field(default_factory=list)

    @property
    def five_xx(self) -> int:
        return len(self.findings)


def _key(op) -> tuple[str, str]:  # noqa: ANN001
    return op.method.upper(), op.path


def _operations(server: FuzzServer) -> list:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", timeout=30)
    ops = []
    for result in schema.get_all_operations():
        op = result.ok()  # an operation the schema cannot describe is itself a failure
        if not any(op.path == p or op.path.startswith(p) for p in HTML_PREFIXES):
            ops.append(op)
    return ops


def _outcome(resp: requests.Response) -> str:
    """``"422 not_an_image"``: the status and, for an error body, its catalogued code."""
    try:
        code = resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return str(resp.status_code)
    return f"{resp.status_code} {code}"


def _runner(server: FuzzServer, op, mode: schemathesis.GenerationMode, token: str | None,  # noqa: ANN001
            known: Known | None, stats: Stats):  # noqa: ANN202
    """A Hypothesis test that sends up to ``MAX_EXAMPLES`` generated requests for one operation."""
    label = f"{op.method.upper()} {op.path}"
    call_headers = {"Authorization": f"Bearer {token}"} if token else None
    fixed = None
    if known is not None:
        fixed = {n: known.path[n] for n in re.findall(r"{(\w+)}", op.path) if n in known.path} or None
    override_form = known is not None and _key(op) == SEARCH and mode is schemathesis.GenerationMode.POSITIVE

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
              print_blob=False)
    @given(case=op.as_strategy(generation_mode=mode, path_parameters=fixed))
    def one(case: schemathesis.Case) -> None:
        if override_form and isinstance(case.body, dict):
            case.body.update(known.search_form)  # fuzz the image and the optional fields
        stats.cases += 1
        stats.per_operation[label] = stats.per_operation.get(label, 0) + 1
        mark = server.stderr_size()
        try:
            resp = case.call(base_url=server.url, headers=call_headers, timeout=60)
        except requests.RequestException as exc:  # a dropped connection is a crash too
            status, body = f"no response ({type(exc).__name__})", str(exc)[:500]
        else:
            seen = stats.statuses.setdefault(label, {})
            outcome = _outcome(resp)
            seen[outcome] = seen.get(outcome, 0) + 1
            if resp.status_code < 500:
                return
            status, body = resp.status_code, resp.text[:500]
        curl = case.as_curl_command(headers=call_headers)
        if token:
            curl = curl.replace(token, "$TOKEN")
        stats.findings.append(Finding(label, mode.value, status, curl, body,
                                      server.stderr_tail(mark, limit=4000)))

    return one


def _fuzz(server: FuzzServer, token: str | None, *, skip: frozenset = frozenset(),
          only: frozenset | None = None, known: Known | None = None) -> Stats:
    stats = Stats()
    for op in _operations(server):
        if _key(op) in skip or (only is not None and _key(op) not in only):
            continue
        for mode in MODES:
            try:
                _runner(server, op, mode, token, known, stats)()
            except Unsatisfiable:
                # nothing left to make invalid (no parameters, or all of them fixed)
                if mode is not schemathesis.GenerationMode.NEGATIVE:
                    raise
                stats.nothing_to_negate.append(f"{op.method.upper()} {op.path}")
    return stats


def _describe(stats: Stats) -> str:
    return "\n".join(f"--- {f.operation} [{f.mode}] -> {f.status}\n{f.request}\nresponse: {f.response}\n"
                     f"server stderr:\n{f.server_log}" for f in stats.findings)


def _check(server: FuzzServer, stats: Stats, who: str, report: Callable[[str], None],
           figure: Callable[[str, float], None]) -> None:
    figure("api_fuzz_cases", stats.cases)
    figure("api_fuzz_5xx", stats.five_xx)
    line = f"fuzz: {stats.cases} cases, {stats.five_xx} 5xx [{who}]"
    print(line)
    for op, seen in sorted(stats.statuses.items()):
        print(f"  {op}: {dict(sorted(seen.items()))}")
    if stats.nothing_to_negate:
        print(f"  no negative cases possible: {', '.join(stats.nothing_to_negate)}")
    report(line)
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200, "the server did not survive the run"
    # every operation was exercised: a strategy that generated nothing would hide a gap
    assert all(n > 0 for n in stats.per_operation.values()), stats.per_operation
    assert stats.five_xx == 0, f"{line}\n{_describe(stats)}"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """All traffic stays on 127.0.0.1: a proxy from the environment must not see it."""
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_schema_fuzz_as_investigator_never_5xx(fuzz_server: FuzzServer, fuzz_report: Callable[[str], None],
        security_figure: Callable[[str, float], None]) -> None:
    # logout would revoke the token mid-run; the unauthenticated pass fuzzes it
    stats = _fuzz(fuzz_server, fuzz_server.token("inv_a1"), skip=frozenset({LOGOUT}))
    assert len(stats.per_operation) >= 15, sorted(stats.per_operation)
    _check(fuzz_server, stats, "investigator", fuzz_report, security_figure)


def test_schema_fuzz_without_a_token_never_5xx(fuzz_server: FuzzServer, fuzz_report: Callable[[str], None],
        security_figure: Callable[[str, float], None]) -> None:
    stats = _fuzz(fuzz_server, None)
    assert len(stats.per_operation) >= 16, sorted(stats.per_operation)
    _check(fuzz_server, stats, "unauthenticated", fuzz_report, security_figure)


def test_schema_fuzz_with_real_identifiers_never_5xx(fuzz_server: FuzzServer,
                                                      fuzz_report: Callable[[str], None],
        security_figure: Callable[[str, float], None]) -> None:
    token = fuzz_server.token("inv_a2")
    form = {"gallery": "bookings-a", "case_number": CASE, "purpose": PURPOSE}
    with open(fuzz_server.probe, "rb") as fh:
        r = httpx.post(f"{fuzz_server.url}/api/v1/searches", data=form, timeout=60,
                       files={"image": ("probe.jpg", fh, "image/jpeg")},
                       headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    body = r.json()
    known = Known(path={"search_id": body["search_id"], "candidate_id": body["candidates"][0]["candidate_id"],
                        "case_number": CASE, "name": "bookings-a"},
                  search_form=form)
    only = frozenset({SEARCH, ("GET", "/api/v1/searches/{search_id}"), ("POST", "/api/v1/searches/{search_id}/reviews"),
                      ("GET", "/api/v1/candidates/{candidate_id}/thumbnail"),
                      ("GET", "/api/v1/cases/{case_number}/export.pdf"), ("POST", "/api/v1/galleries/{name}/grants")})
    stats = _fuzz(fuzz_server, token, only=only, known=known)
    assert len(stats.per_operation) == len(only), sorted(stats.per_operation)
    _check(fuzz_server, stats, "investigator, real identifiers", fuzz_report, security_figure)


def test_the_html_routes_stay_out_of_the_schema(fuzz_server: FuzzServer) -> None:
    paths = httpx.get(f"{fuzz_server.url}/openapi.json", timeout=30).json()["paths"]
    leaked = [p for p in paths if any(p == h or p.startswith(h) for h in HTML_PREFIXES)]
    assert not leaked, leaked
