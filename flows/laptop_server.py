"""The laptop run's temporary Prefect server, booted before anything heavy is imported.

With no server configured, Prefect starts a temporary one (a uvicorn subprocess) the
first time a flow calls the API: after this process has imported torch, the pipeline
and Prefect and checked its inputs. Booting it takes about 4 s and needs none of
that, so the laptop command starts the same subprocess first, with the settings
Prefect gives its own (UI off, ephemeral mode), and points the flow at it. It is
stopped when the process exits, however it ends.

Only the standard library is imported here: the point is to start before the rest.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PORTS = range(8000, 9000)  # Prefect's own range for its temporary server
# The same switches Prefect sets for its temporary server (SubprocessASGIServer).
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


def _free_port() -> int:
    for _ in range(50):
        port = random.choice(PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port for a temporary Prefect server in {PORTS.start}-{PORTS.stop - 1}")


def _die_with_parent() -> None:
    """In the server process: SIGTERM when the command dies, however it dies.

    atexit does not run on SIGTERM or SIGKILL, and a killed laptop run left its
    temporary server running (Prefect's own server has the same gap).
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LaptopServer:
    def __init__(self, port: int, process: subprocess.Popen):
        self.port = port
        self.process = process

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @classmethod
    def start(cls) -> "LaptopServer":
        # Where Prefect is installed, without importing it (that is the slow part).
        prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, **SERVER_ENV},
            preexec_fn=_die_with_parent,
        )
        server = cls(port, process)
        # At exit, not when the flow returns: Prefect's log and event workers drain at
        # interpreter shutdown, before atexit handlers, and need the server until then.
        atexit.register(server.stop)
        return server

    def wait(self, timeout: float) -> None:
        """Until the server answers its health check; RuntimeError if it dies or never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {self.process.returncode} "
                                   f"before answering on port {self.port}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the temporary Prefect server did not answer on port {self.port} within {timeout:.0f} s: "
                           f"raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or set PREFECT_API_URL to a running server")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def quiet_defaults() -> None:
    """Embedded defaults for a laptop run: a temporary Prefect server, no telemetry, calm logs."""
    for name, value in {
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # 20 s times out on a busy machine
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(name, value)


def start_if_wanted(argv: list[str]) -> LaptopServer | None:
    """A server when this command will run a flow on a temporary one: no API URL in the
    environment and no --help. (A URL set in a Prefect profile is found only once Prefect
    is imported; `use_or_stop` then stops this server unused.)"""
    quiet_defaults()  # before the server starts: it reads them too (no telemetry, its start-up timeout)
    if os.environ.get("PREFECT_API_URL") or {"-h", "--help"} & set(argv):
        return None
    settings = sys.modules.get("prefect.settings")  # already imported (a caller in-process): ask it, it is free
    if settings is not None and settings.PREFECT_API_URL.value():
        return None
    if os.environ.get("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true").lower() in ("0", "false"):
        return None
    return LaptopServer.start()
