"""Runs killed with SIGKILL and started again, and runs split across ranks by ``torchrun``.

Each run goes through a small worker script, so that it can be killed at real points (after some
shards are complete, read from the manifest; while the summary and report are being written) or
launched under ``python -m torch.distributed.run``; the results are compared, byte for byte, with
an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = '''
import sys, time, functools, torch
import saliency, saliency.audit
from saliency import models


class Slow(torch.nn.Module):
    """The bundled digits CNN, slowed down so that a run can be caught in the middle."""

    def __init__(self, delay):
        super().__init__()
        self.inner = models.load("digits")[0]
        self.delay = delay

    def forward(self, x):
        time.sleep(self.delay)
        return self.inner(x)


def audit(out, delay=0.0, report=True):
    x, y = models.held_out("digits", 24)
    return saliency.audit.run(
        Slow(delay), (x, y), out_dir=out, batch_size=4, strategy="loop",
        methods={"gradients": saliency.gradients,
                 "sg": functools.partial(saliency.smoothgrad, n_samples=3)},
        metrics=["norms", "class_sensitivity"], mean=0.3, std=0.4, report=report,
    )


if __name__ == "__main__":
    import os
    result = audit(sys.argv[1], float(sys.argv[2]), report=sys.argv[3:] != ["no-report"])
    print(f"rank {os.environ.get('RANK', 0)} computed {result.computed}", flush=True)
'''


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("worker") / "audit_worker.py"
    path.write_text(WORKER)
    return path


def _load(worker: Path):
    spec = importlib.util.spec_from_file_location("audit_worker", worker)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _complete(out: Path) -> int:
    try:
        text = json.loads((out / "manifest.json").read_text())["complete"]
    except (OSError, ValueError, KeyError):
        return 0
    count = 0
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return count


def _kill_when(worker: Path, out: Path, ready, timeout: float = 60.0) -> None:
    """Start the worker, SIGKILL it as soon as ``ready()`` holds; fail if it ends first."""
    process = subprocess.Popen(
        [sys.executable, str(worker), str(out), "0.03"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                pytest.fail(
                    f"the worker ended before the kill point: {process.stderr.read()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail("the worker did not reach the kill point in time")
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.stderr.close()


def test_killed_runs_resume_to_the_bytes_of_an_uninterrupted_run(worker, tmp_path):
    audit = _load(worker).audit
    reference = tmp_path / "reference"
    audit(reference)
    expected = _files(reference)
    assert "report.html" in expected and len([n for n in expected if n.endswith(".done.json")]) == 6

    out = tmp_path / "killed"
    _kill_when(worker, out, lambda: _complete(out) >= 1)  # after the first shard
    first = _complete(out)
    assert 1 <= first < 6
    _kill_when(worker, out, lambda: _complete(out) >= first + 2)  # resumed, then killed again
    assert _complete(out) < 6
    # killed while the summary and report are being written
    _kill_when(worker, out, lambda: (out / "summary.json").exists())
    assert not json.loads((out / "manifest.json").read_text())["finished"]

    result = audit(out)
    assert result.computed == 0  # every shard was complete: only the summary was left
    assert _files(out) == expected
    assert not list(out.rglob(".*.tmp"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_under_torchrun_give_the_one_process_results(worker, tmp_path):
    one = tmp_path / "one"
    _load(worker).audit(one, report=False)
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": str(os.environ.get("OMP_NUM_THREADS", "1"))}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--nnodes=1",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        str(worker),
        str(two),
        "0",
        "no-report",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary_one = json.loads((one / "summary.json").read_text())
    summary_two = json.loads((two / "summary.json").read_text())
    assert summary_two == summary_one
    # every shard, whoever computed it, holds the same bytes
    for name, data in _files(one).items():
        if name.startswith("shards/"):
            assert _files(two)[name] == data, name
    # the shards were shared out: six shards, three per rank
    # (the two ranks print at once: their lines may interleave)
    found = sorted(re.findall(r"rank (\d) computed (\d+)", done.stdout))
    assert found == [("0", "3"), ("1", "3")], done.stdout
