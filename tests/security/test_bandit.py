"""Static analysis: ``bandit -r src`` (offline) reports nothing, and every finding that was judged a
false positive or acceptable is justified where it is: ``# nosec BXXX - reason`` on its line, never
a bare ``# nosec``."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
JUSTIFIED = re.compile(r"#\s*nosec\s+B\d{3}(\s*,\s*B\d{3})*\s+-+\s+\S")


def _bandit() -> list[str]:
    exe = shutil.which("bandit") or str(Path(sys.executable).with_name("bandit"))
    if not Path(exe).exists():
        pytest.skip("bandit is not installed (pip install bandit)")
    return [exe]


def test_bandit_reports_no_unjustified_finding(fuzz_report, security_figure) -> None:  # noqa: ANN001
    out = subprocess.run([*_bandit(), "-r", str(SRC), "-q", "-f", "json"], capture_output=True, text=True,
                         timeout=600)
    report = json.loads(out.stdout)
    assert not report.get("errors"), report["errors"]
    findings = [f"{r['test_id']} {r['filename']}:{r['line_number']} {r['issue_text']}" for r in report["results"]]
    skipped = report.get("metrics", {}).get("_totals", {}).get("skipped_tests", 0)
    fuzz_report(f"bandit: {len(findings)} findings, {skipped} justified inline")
    security_figure("bandit_findings", len(findings))
    security_figure("bandit_justified_inline", skipped)
    assert not findings, "\n".join(findings)


def test_every_nosec_names_its_test_and_a_reason() -> None:
    bare = []
    for p in sorted(SRC.rglob("*.py")):
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"#\s*nosec\b", line) and not JUSTIFIED.search(line):
                bare.append(f"{p.relative_to(SRC)}:{n}: {line.strip()}")
    assert not bare, "a # nosec without 'BXXX - reason':\n" + "\n".join(bare)
