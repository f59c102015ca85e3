"""The broker and registry a command talks to: the environment's, or embedded ones."""

from __future__ import annotations

import os
from contextlib import ExitStack


def broker_and_registry(stack: ExitStack) -> tuple[str, str]:
    """``KAFKA_BOOTSTRAP_SERVERS``/``SCHEMA_REGISTRY_URL`` when set, otherwise a local broker
    and registry started now and stopped when ``stack`` closes."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    registry_url = os.environ.get("SCHEMA_REGISTRY_URL")
    if not bootstrap:
        from streams.infra.broker import LocalKafka

        bootstrap = stack.enter_context(LocalKafka()).bootstrap_servers
    if not registry_url:
        from streams.infra.registry import LocalSchemaRegistry

        registry_url = stack.enter_context(LocalSchemaRegistry()).url
    return bootstrap, registry_url
