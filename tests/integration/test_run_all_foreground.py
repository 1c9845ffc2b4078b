"""`paysim run-all` in the foreground: SIGTERM stops every service cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from paysim.infra.config import Settings, settings_env
from paysim.infra.waiting import wait_until
from paysim.pipeline import registry
from paysim.stack.process import is_alive
from tests.helpers import free_port, run_paysim, settings_for


def test_sigterm_stops_all_services_and_exits_0(local_stack, service_flags, tmp_path) -> None:
    settings: Settings = settings_for({**service_flags, "http.port": free_port(),
                                       "services.dir": str(tmp_path / "services")})
    env = settings_env(settings)
    process = subprocess.Popen([sys.executable, "-m", "paysim", "run-all", "--no-live"],
                               env={**env, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        def all_up() -> bool:
            rows = json.loads(run_paysim("ps", "--json", env=env).stdout)["services"]
            return (len(rows) == len(registry.ALL)
                    and all(row["state"] == "up" for row in rows))

        assert wait_until(all_up, timeout=90, interval=0.5)
        rows = json.loads(run_paysim("ps", "--json", env=env).stdout)["services"]
        pids = [row["pid"] for row in rows]

        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "all services stopped" in out
    assert not [pid for pid in pids if is_alive(pid)]
    assert not (settings.services.dir / "run-all.json").exists()


def test_one_supervisor_per_folder_and_a_stuck_service_is_replaced(
    local_stack, service_flags, tmp_path,
) -> None:
    settings: Settings = settings_for({**service_flags, "http.port": free_port(),
                                       "services.dir": str(tmp_path / "services"),
                                       "services.stuck_after": 5})
    env = settings_env(settings)
    process = subprocess.Popen([sys.executable, "-m", "paysim", "run-all", "--no-live"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        def rows() -> dict[str, dict]:
            found = json.loads(run_paysim("ps", "--json", env=env).stdout)["services"]
            return {row["name"]: row for row in found}

        assert wait_until(lambda: all(r["state"] == "up" for r in rows().values())
                          and len(rows()) == len(registry.ALL), timeout=90, interval=0.5)

        second = run_paysim("run-all", "--no-live", env=env, timeout=60)
        assert second.returncode == 1
        assert "already run" in second.stderr
        detached = run_paysim("run-all", "--detach", env=env, timeout=60)
        assert detached.returncode == 0
        assert f"already running (supervisor pid {process.pid})" in detached.stdout

        frozen = rows()["notifier-0"]["pid"]
        os.kill(frozen, signal.SIGSTOP)  # alive but silent, as a hung librdkafka call is
        assert wait_until(lambda: rows().get("notifier-0", {}).get("pid") not in (None, frozen)
                          and rows()["notifier-0"]["state"] == "up", timeout=60, interval=0.5)
        assert not is_alive(frozen)
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    assert "notifier-0 sent no heartbeat for 5 s: killed as stuck" in out
