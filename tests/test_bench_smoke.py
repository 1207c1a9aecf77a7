"""Smoke test of the benchmark harness: it runs end to end and reports every
scenario for both servers (Pushpin and bench/origin included: S9, S10). It
asserts nothing about speed."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ["S1", "S2", "S3a", "S3b", "S4", "S5a", "S5b", "S6", "C1", "C2",
             "S7a", "S7b", "S7c", "S7d", "S8", "S2z", "S3z", "S5z", "S9", "S10"]


def table_rows(text: str) -> dict[str, list[list[str]]]:
    """Scenario id -> the cells of its table rows."""
    rows: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        m = re.match(r"\| ([SC]\d+[a-dz]?) ", line)
        if m:
            rows.setdefault(m.group(1), []).append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_quick_run_reports_every_scenario_for_both_servers(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, "bench/run.py", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| websocketd | wsexec |" in proc.stdout
    # wsexec alone (websocketd has no control API): without and with --control
    assert "| wsexec | wsexec --control | wsexec --control ÷ wsexec |" in proc.stdout
    rows = table_rows(proc.stdout)
    assert sorted(rows) == sorted(SCENARIOS), proc.stdout
    for sid, cells in rows.items():
        for row in cells:
            # scenario, figure, better, websocketd, wsexec, ratio: both servers have a cell
            assert len(row) == 6 and row[3] and row[4], (sid, row)
    # the control-API scenarios ran: numbers, not fail / stalled (C2 runs only with --control)
    c1 = {row[1]: row for row in rows["C1"]}
    assert float(c1["messages/s"][3]) > 0 and float(c1["messages/s"][4]) > 0, proc.stdout
    c2 = {row[1]: row for row in rows["C2"]}
    assert c2["pushes/s"][3] == "—" and float(c2["pushes/s"][4]) > 0, proc.stdout
    assert c2["children left after"][4] == "0", proc.stdout
    # one shared process (S7, S8): websocat broadcast: against wsexec --shared
    assert "| websocat | wsexec | wsexec ÷ websocat |" in proc.stdout
    assert "| wsexec | wsexec + 1 client not reading |" in proc.stdout
    for sid in ("S7a", "S7b", "S7c", "S7d"):
        s7 = {row[1]: row for row in rows[sid]}
        # wsexec (both columns in S7d) delivers, loses nothing, closes no client that reads
        for col in ((4,) if sid != "S7d" else (3, 4)):
            assert float(s7["messages/s delivered"][col]) > 0, (sid, proc.stdout)
            assert s7["messages lost"][col] == "0", (sid, proc.stdout)
            assert s7["clients closed by the server"][col] == "0", (sid, proc.stdout)
        assert s7["children left after"][4] == "0", (sid, proc.stdout)
    # permessage-deflate (S2z, S3z): wsexec --compress accepts it on every connection, websocketd never
    for sid in ("S2z", "S3z"):
        z = {row[1]: row for row in rows[sid]}
        assert z["connections compressed"][3] == "0" and float(z["connections compressed"][4]) > 0, proc.stdout
        assert float(z["bytes on the wire per round trip"][4]) < float(z["bytes on the wire per round trip"][3])
    s8 = {row[1]: row for row in rows["S8"]}
    assert s8["clients that got the line"][4] == s8["clients opened"][4] != "0", proc.stdout
    assert s8["children left after"][4] == "0", proc.stdout
    # in front of an API (bench/origin): Pushpin's WebSocket-over-HTTP against wsexec --callback
    assert "| pushpin | wsexec --callback | wsexec --callback ÷ pushpin |" in proc.stdout
    s9 = {row[1]: row for row in rows["S9"]}
    s10 = {row[1]: row for row in rows["S10"]}
    for col in (3, 4):
        assert float(s9["messages/s"][col]) > 0, proc.stdout
        assert float(s9["server CPU µs/msg"][col]) > 0, proc.stdout
        assert float(s9["origin CPU µs/msg"][col]) > 0, proc.stdout
        assert s10["connections held (not closed by the server)"][col] == s10["connections opened"][col] == "200", proc.stdout
        assert s10["echoes answered after the hold (of 20)"][col] == "20", proc.stdout
        assert float(s10["server RSS KiB/conn (all its processes)"][col]) > 0, proc.stdout
        for sid in ("S9", "S10"):
            assert {"S9": s9, "S10": s10}[sid]["children left after"][col] == "0", (sid, proc.stdout)
    # Pushpin drops some connections under load (counted); wsexec must not
    assert s9["connections dropped by the server"][4] == "0", proc.stdout

    written = out.read_text()
    assert "| scenario | figure | better | websocketd | wsexec |" in written
    assert sorted(table_rows(written)) == sorted(SCENARIOS)
    assert "| wsexec | wsexec --control |" in written
    assert "| pushpin | wsexec --callback |" in written
    for word in ("nproc", "kernel", "python", "trio", "websocketd", "wsexec", "pushpin", "bench/origin"):
        assert word in written


def test_floor_server_runs_s4_through_the_harness(tmp_path: Path) -> None:
    """bench/floor.py (RESULTS.md finding 18) answers S4 in both spawn modes."""
    for command in ("python3 bench/floor.py", "python3 bench/floor.py --spawner"):
        out = tmp_path / "floor.md"
        proc = subprocess.run([sys.executable, "bench/run.py", "--quick", "--scenarios", "S4",
                               "--wsexec-cmd", command, "--out", str(out)],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = {row[1]: row for row in table_rows(proc.stdout)["S4"]}
        assert rows["failed sessions"][4] == "0", proc.stdout
        assert rows["children left after"][4] == "0", proc.stdout
        assert float(rows["connections/s"][4]) > 0, proc.stdout
