"""`clipsearch index` on a terminal (a real pseudo-terminal, the CLI in a subprocess): the
progress line is redrawn in place, and a warning or the interruption message starts on its own
line instead of being glued to it; the ETA waits until the rate means something."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

from PIL import Image

from clipsearch.cli.index import ProgressLine
from clipsearch.index.summary import Summary
from helpers import REPO, write_photo


def screen(output: str) -> list[str]:
    """What a terminal shows for this output: `\\r` returns to the line's start, `ESC[K`
    clears to its end, characters overwrite."""
    lines, line, col = [], [], 0
    i = 0
    while i < len(output):
        if output.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        ch = output[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(line))
            line, col = [], 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    lines.append("".join(line))
    return lines


def index_on_a_terminal(args, until=None, stop_after=None) -> tuple[int, str]:
    """Run `clipsearch index ARGS` with stderr on a pseudo-terminal; SIGTERM it once `until`
    was printed (if given). Returns the exit code and everything it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "clipsearch", "index", *args], stderr=slave, stdout=slave,
                            stdin=subprocess.DEVNULL, cwd=REPO)
    os.close(slave)
    chunks, stopped, deadline = [], False, time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.05)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
            if until and not stopped and until in b"".join(chunks):
                proc.send_signal(signal.SIGTERM)
                stopped = True
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


def test_a_warning_starts_on_its_own_line(tmp_path, colour_model):
    root = tmp_path / "photos"
    for i in range(40):
        write_photo(root / f"a{i:03d}.jpg", (10 * (i % 20), 100, 200), size=(64, 48), seed=i)
    (root / "zzz_broken.jpg").write_bytes(b"not a picture at all")  # walked last
    code, out = index_on_a_terminal([str(root), "--db", str(tmp_path / "i.db"), "--model", str(colour_model),
                                     "--workers", "1", "--batch-size", "1"])
    shown = screen(out)
    assert code == 0, out
    assert "indexing:" in out  # the progress line was drawn
    warnings = [line for line in shown if "warning:" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {root / 'zzz_broken.jpg'}: "), shown
    assert any(line.startswith("indexed: 40 new") for line in shown), shown


def test_the_interruption_message_starts_on_its_own_line(tmp_path, colour_model):
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(600):
        Image.new("RGB", (32, 24), (i % 256, 80, 160)).save(root / f"p{i:04d}.png")
    code, out = index_on_a_terminal([str(root), "--db", str(tmp_path / "i.db"), "--model", str(colour_model),
                                     "--workers", "1", "--batch-size", "1"], until=b"indexing:")
    shown = screen(out)
    assert code == 130, out
    assert "clipsearch: interrupted; everything committed so far is kept" in shown, shown


def test_the_eta_waits_for_the_rate_of_finished_photos(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("clipsearch.cli.index.time.monotonic", lambda: clock[0])
    drawn = []
    monkeypatch.setattr("clipsearch.cli.index.PROGRESS.draw", drawn.append)
    line = ProgressLine(workers=2)
    summary = Summary(pending_total=1000)
    # 20 s of workers loading the model, then photos at 10 per second.
    clock[0] += 20
    summary.new = summary.embedded = 1
    line(summary)
    assert "ETA" not in drawn[-1]
    for second in range(1, 5):
        clock[0] += 1
        summary.new = summary.embedded = 1 + 10 * second
        line(summary)
    assert drawn[-1].endswith("10.0/s, ETA 0:01:35"), drawn[-1]  # (1000 - 41) / 10, not / 41 per 24 s
