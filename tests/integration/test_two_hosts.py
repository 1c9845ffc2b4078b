"""Services on two hosts: two run-all supervisors (as two hosts would run them) against one
broker and Redis, each with its own instance numbers and folders and the same keys. Their
instances share each consumer group's partitions, and the audit of a run through both is
clean."""

from __future__ import annotations

import json
from pathlib import Path

from paysim.infra.config import Settings
from paysim.infra.waiting import wait_until
from paysim.pipeline import registry
from tests.helpers import free_port, settings_for
from tests.integration.pipeline_helpers import paysim, running_pipeline, send
from tests.integration.test_lifecycle_load import assert_audit_clean


def services(settings: Settings) -> dict[str, dict]:
    result = paysim(settings, "ps", "--json")
    return {row["name"]: row for row in json.loads(result.stdout)["services"]}


def test_two_supervisors_share_the_groups_and_a_run_through_both_audits_clean(
        local_stack, service_flags: dict[str, object], tmp_path: Path) -> None:
    shared = {**service_flags, "issuer.decline_rate": 0, "issuer.fault_rate": 0}
    host_a = settings_for({**shared, "http.port": free_port(),
                           "services.dir": str(tmp_path / "host-a")})
    host_b = settings_for({**shared, "http.port": free_port(),
                           "services.dir": str(tmp_path / "host-b"),
                           "services.first_instance": 1})
    with running_pipeline(host_a), running_pipeline(host_b):
        # The services a payment passes (the ledger's input is operations, none here).
        both = {f"{spec.name}-{i}" for spec in registry.PIPELINE if spec.stamps is not None
                for i in (0, 1)}
        assert wait_until(lambda: both <= {name for name, row in services(host_a).items()
                                           if row["state"] == "up"}, timeout=60)
        before = {name: services(host_a)[name]["processed"] for name in both}
        report = send(host_a, "--count", "600", "--seed", "61")
        assert report["outcomes"]["completed"] == 600 and report["outcomes"]["lost"] == 0

        def each_instance_took_a_share() -> bool:
            rows = services(host_a)
            return all(rows[name]["processed"] > before[name] for name in both)

        # Six partitions per topic, two members per group: each host's instance got some.
        assert wait_until(each_instance_took_a_share, timeout=30), {
            name: row["processed"] for name, row in services(host_a).items()}
        assert_audit_clean(host_a, report["run_id"])
