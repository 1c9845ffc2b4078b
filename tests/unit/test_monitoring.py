"""The Prometheus and Grafana setup for Docker users (no Docker engine here: the files are
checked as data): every metric the scrape config and the Grafana dashboard name is one paysim
serves, every metric paysim serves is on the dashboard, and the compose services mount files
that exist where the provisioning expects them."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from paysim.dashboard.live import scrape_targets
from paysim.edge.app import UI_PATH
from paysim.edge.prometheus import HttpMetrics
from paysim.infra.config import load_settings
from paysim.load.metrics import RunMetrics
from paysim.load.prometheus import LoadCollector
from paysim.pipeline import store
from paysim.pipeline.prometheus import PipelineMetrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
SCRAPE_CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "paysim.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "paysim.yml"
PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "paysim.yml"
METRIC = re.compile(r"\bpaysim_[a-z0-9_]+")


def served_registries() -> list[CollectorRegistry]:
    """A registry of each kind of paysim process, with every metric it can serve."""
    pipeline = PipelineMetrics("processor")
    pipeline.track_webhooks()
    pipeline.set_lag({0: 1})
    http = HttpMetrics()
    http.answered("/authorize", 200, 0.01)  # a labelled series shows once it has a value
    load = CollectorRegistry()
    load.register(LoadCollector(lambda: RunMetrics(int(time.time() * 1e6))))
    return [pipeline.registry, http.registry, load]


@pytest.fixture(scope="module")
def families() -> set[str]:
    return {family.name for registry in served_registries() for family in registry.collect()}


@pytest.fixture(scope="module")
def samples() -> set[str]:
    """Every name a scrape shows: counters' _total, histograms' _bucket, _count, _sum."""
    names = set()
    for registry in served_registries():
        for family in registry.collect():
            names.add(family.name)
            names.update(sample.name for sample in family.samples)
    return names


def target_labels() -> set[str]:
    beat = store.Heartbeat(service="processor", instance=0, pid=1, processed=0,
                           dead_letters=0, aborted_batches=0, started_at=0, seen_at=0, lag=0,
                           metrics_url="http://127.0.0.1:9500/metrics")
    (target,) = scrape_targets([beat])
    assert target.targets == ["127.0.0.1:9500"]
    return set(target.labels)


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def test_every_metric_the_dashboard_and_scrape_config_name_is_served(samples: set[str]) -> None:
    named = set()
    for text in [*dashboard_exprs(), SCRAPE_CONFIG.read_text()]:
        named |= set(METRIC.findall(text))
    unknown = named - samples - target_labels()
    assert unknown == set()
    assert {"paysim_load_sent_total", "paysim_stage_latency_seconds_bucket",
            "paysim_consumer_lag"} <= named


def test_every_metric_paysim_serves_is_on_the_dashboard(families: set[str]) -> None:
    used = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
    missing = {family for family in families
               if not any(name == family or name.startswith(family + "_") for name in used)}
    assert missing == set()


def test_the_scrape_config_finds_paysim_where_run_all_lists_it(families: set[str]) -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "paysim"]
    url = urlsplit(job["http_sd_configs"][0]["url"])
    defaults = load_settings(env={}).http
    assert (url.hostname, url.port) == (defaults.host, defaults.port)
    assert url.path == f"{UI_PATH}/targets"
    (keep,) = job["metric_relabel_configs"]
    assert all(re.fullmatch(keep["regex"], name) for name in families)


def test_grafana_is_provisioned_with_the_dashboard_and_its_datasource() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service in (prometheus, grafana):
        assert service["network_mode"] == "host"  # paysim serves metrics on 127.0.0.1
        assert service["profiles"] == ["monitoring"]
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    assert "./monitoring/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in \
        prometheus["volumes"]
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    listen = next(arg for arg in prometheus["command"] if arg.startswith("--web.listen"))
    assert urlsplit(datasource["url"]).netloc == listen.split("=", 1)[1]
    (provider,) = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert f"./monitoring/grafana/dashboards:{provider['options']['path']}:ro" in \
        grafana["volumes"]
    dashboard = json.loads(DASHBOARD.read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {datasource["uid"]}
    for panel in dashboard["panels"]:
        assert {t["datasource"]["uid"] for t in panel["targets"]} == {datasource["uid"]}
