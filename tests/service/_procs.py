"""`lorahub serve` as real processes for the tests: each on 127.0.0.1 and a free port, with its
stdout and stderr in files, so that a test can read the access log (uvicorn's, one line per
response) once the processes have stopped.

``serve_processes`` starts several at once (they start in parallel: the start dominates a short
test) and stops them with SIGTERM, which lets uvicorn finish the requests in flight and flush its
log before the test reads it.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
START_ATTEMPTS = 3  # a free port can be taken by someone else between its probe and the server's bind
# uvicorn's access line: '127.0.0.1:53124 - "GET /v1/adapters?limit=5 HTTP/1.1" 200 OK'
ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[0-9.]+" (?P<status>\d{3})\b')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Access:
    method: str
    path: str  # without the query string
    status: int


@dataclass
class ServeProcess:
    """One `lorahub serve` process: its URL, the process, and where its output goes."""

    url: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        """Everything the process printed (both streams)."""
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def access_log(self) -> list[Access]:
        """The responses the process logged (complete once it has stopped)."""
        found = []
        for line in self.output().splitlines():
            m = ACCESS.search(line)
            if m:
                found.append(Access(m["method"], m["target"].split("?")[0], int(m["status"])))
        return found


def _spawn(env: dict[str, str], logs: Path, attempt: int) -> ServeProcess:
    port = free_port()
    out, err = logs / f"serve-{port}-{attempt}.out", logs / f"serve-{port}-{attempt}.err"
    code = "from lora_hub.cli import main; main()"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env={**env, "PYTHONUNBUFFERED": "1"}, stdout=fo, stderr=fe,
        )  # fmt: skip
    return ServeProcess(url=f"http://127.0.0.1:{port}", proc=proc, stdout=out, stderr=err)


def _ready(server: ServeProcess, deadline: float) -> bool:
    """Wait until the server answers /readyz (True) or its process ends (False)."""
    while time.monotonic() < deadline:  # a bound on the wait, not a measured time
        if server.proc.poll() is not None:
            return False
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"lorahub serve at {server.url} did not start in {START_TIMEOUT_S} s:\n{server.output()}")


def _stop(server: ServeProcess) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(STOP_TIMEOUT_S)


@contextlib.contextmanager
def serve_processes(envs: Sequence[dict[str, str]], logs: Path) -> Iterator[list[ServeProcess]]:
    """One `lorahub serve` per environment, all ready on entry, all stopped (SIGTERM) on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    servers: list[ServeProcess] = []
    try:
        pending = [(i, _spawn(env, logs, 0)) for i, env in enumerate(envs)]
        slots: dict[int, ServeProcess] = {}
        deadline = time.monotonic() + START_TIMEOUT_S
        for attempt in range(1, START_ATTEMPTS + 1):
            servers.extend(s for _, s in pending)
            exited = []
            for i, server in pending:
                if _ready(server, deadline):
                    slots[i] = server
                else:
                    exited.append((i, server))
            if not exited:
                break
            if attempt == START_ATTEMPTS:
                raise RuntimeError(f"lorahub serve exited at start:\n{exited[-1][1].output()}")
            pending = [(i, _spawn(envs[i], logs, attempt)) for i, _ in exited]
        yield [slots[i] for i in range(len(envs))]
    finally:
        for server in servers:
            _stop(server)
