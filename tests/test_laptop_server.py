"""The laptop command's temporary Prefect server, booted before the heavy imports."""

from flows.cli import flow_server
from flows.laptop_server import LaptopServer, start_if_wanted


def test_no_server_for_help_or_when_a_server_is_configured(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert start_if_wanted(["--help"]) is None
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert start_if_wanted(["--smoke"]) is None


def test_a_server_configured_in_prefect_settings_wins_and_the_booted_one_stops(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    server = LaptopServer.start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4999/api"}):  # as a profile would
            with flow_server(server):
                assert PREFECT_API_URL.value() == "http://127.0.0.1:4999/api"
            assert server.process.poll() is not None  # stopped, unused
    finally:
        server.stop()


def test_the_server_dies_with_the_command_however_it_dies(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import OFFLINE, REPO

    # A command that boots the server and then is killed outright (no atexit, no finally).
    script = "import sys, time; from flows.laptop_server import start_if_wanted; s = start_if_wanted([]); print(s.process.pid, flush=True); time.sleep(600)"
    env = {**os.environ, **OFFLINE, "PREFECT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    command = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    server_pid = int(command.stdout.readline())
    command.send_signal(signal.SIGKILL)
    command.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(server_pid, signal.SIGKILL)
    raise AssertionError(f"the temporary server {server_pid} outlived its killed command")


def test_bad_input_stops_the_booted_server_at_once(tmp_path, monkeypatch):
    from flows.cli import run_command

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    server = LaptopServer.start()
    assert run_command(["--name", "Not A Name", "--data", str(tmp_path), "--store", str(tmp_path / "store")], server=server) == 2
    assert server.process.poll() is not None  # not left booting until the process exits
