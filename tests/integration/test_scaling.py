"""Consumer-group rebalances mid-run lose nothing and double nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

from paysim.infra.config import Settings, settings_env
from tests.integration.pipeline_helpers import paysim


def test_scaling_the_processor_from_1_to_3_and_back_to_2_mid_run(pipeline: Settings) -> None:
    env = settings_env(pipeline)
    extra: list[subprocess.Popen] = []

    def add_processors() -> None:
        for instance in (1, 2):
            extra.append(subprocess.Popen(
                [sys.executable, "-m", "paysim", "service", "processor", "--instance",
                 str(instance)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def remove_one() -> None:
        extra[0].send_signal(signal.SIGTERM)

    # 150/s for 12 s; two more processors join at 3 s, one of them leaves at 7 s.
    joins, leaves = threading.Timer(3.0, add_processors), threading.Timer(7.0, remove_one)
    joins.start()
    leaves.start()
    try:
        result = paysim(pipeline, "send", "--rate", "150", "--duration", "12s", "--seed", "31",
                        "--json")
    finally:
        joins.join()
        leaves.join()
        for process in extra:
            process.send_signal(signal.SIGTERM)
        for process in extra:
            process.wait(60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["outcomes"]["completed"] == report["load"]["sent"] == 1800
    assert extra[0].returncode == 0, "the leaving processor stopped cleanly"

    audit = paysim(pipeline, "audit", "--run", report["run_id"], "--json")
    found = json.loads(audit.stdout)
    assert audit.returncode == 0, found
    assert (found["sent"], found["lost_count"], found["doubled_count"]) == (1800, 0, 0)
    assert found["ledger_mismatches"] == []
