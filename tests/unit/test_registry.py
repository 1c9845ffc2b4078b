"""The service registry: the one list every other list of services is read from."""

from __future__ import annotations

import dataclasses

import pytest

from paysim.domain.messages import REQUESTED, STAGES
from paysim.infra.config import TopicSettings
from paysim.load.metrics import STAGE_STAMPS
from paysim.pipeline import registry
from tests.unit.fakes import pure_settings


def test_the_pipeline_consumes_each_topic_once_and_stamps_the_stages_in_order() -> None:
    topics = [spec.input_topic for spec in registry.PIPELINE]
    assert len(set(topics)) == len(topics)
    assert set(topics) <= {field.name for field in dataclasses.fields(TopicSettings)}
    # Each payment stage is stamped by one service, in order (the ledger service works on
    # operations, not on the payment stages).
    stamped = [spec.stamps for spec in registry.PIPELINE if spec.stamps is not None]
    assert stamped == [s for s in STAGES if s != REQUESTED]
    assert {spec.name: spec.stamps for spec in registry.PIPELINE
            if spec.stamps is not None} == STAGE_STAMPS


def test_the_edge_is_listed_but_not_built_as_a_pipeline_service() -> None:
    assert registry.HTTP in registry.ALL and registry.HTTP not in registry.PIPELINE
    assert not registry.HTTP.in_pipeline and not registry.HTTP.scalable
    with pytest.raises(ValueError, match="not a pipeline service"):
        registry.HTTP.build(pure_settings(), None)  # type: ignore[arg-type]


def test_by_name_finds_each_service_and_names_the_known_ones_otherwise() -> None:
    assert [registry.by_name(name) for name in registry.NAMES] == list(registry.ALL)
    with pytest.raises(ValueError, match="known: authorizer, processor, notifier, ledger, http"):
        registry.by_name("fraud")


def test_instance_names_default_to_one_instance_each() -> None:
    assert registry.instance_names({"processor": 3}) == [
        "authorizer-0", "processor-0", "processor-1", "processor-2", "notifier-0", "ledger-0",
        "http-0"]
