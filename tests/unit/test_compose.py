"""docker-compose.yml, checked without Docker: every service's command, environment,
ports and volumes against the code and the settings it reads, in both profiles."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from ledger.adapters.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def env_file(name: str) -> dict[str, str]:
    pairs = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def compose(env: dict[str, str]) -> dict[str, Any]:
    text = (ROOT / "docker-compose.yml").read_text()

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in env, f"${{{name}}} is not set by the env file"
        return env[name]

    loaded: dict[str, Any] = yaml.safe_load(re.sub(r"\$\{(\w+)\}", substitute, text))
    return loaded


def active(doc: dict[str, Any], profiles: set[str]) -> dict[str, Any]:
    return {
        name: service
        for name, service in doc["services"].items()
        if not service.get("profiles") or profiles & set(service["profiles"])
    }


PROFILES = [(".env", 1), ("cluster.env", 3)]


@pytest.mark.parametrize(("env_name", "nodes"), PROFILES)
def test_kafka_nodes_keep_their_log_on_named_volumes(env_name: str, nodes: int) -> None:
    env = env_file(env_name)
    doc = compose(env)
    services = active(doc, set(env["COMPOSE_PROFILES"].split(",")))
    kafkas = {n: s for n, s in services.items() if s.get("image", "").startswith("apache/kafka")}
    assert len(kafkas) == nodes
    for name, kafka in kafkas.items():
        log_dir = kafka["environment"]["KAFKA_LOG_DIRS"]
        mounts = dict(v.split(":", 1)[::-1] for v in kafka["volumes"])
        assert log_dir in mounts, f"{name}: its log directory is not on a volume"
        assert mounts[log_dir] in doc["volumes"], f"{name}: not a named volume"
        voters = kafka["environment"]["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert {v.split("@")[1].split(":")[0] for v in voters} == set(kafkas)
        if nodes == 3:
            assert kafka["environment"]["KAFKA_MIN_INSYNC_REPLICAS"] == 2
            assert kafka["environment"]["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3
    ids = [k["environment"]["KAFKA_NODE_ID"] for k in kafkas.values()]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(("env_name", "nodes"), PROFILES)
def test_ledger_services_run_real_modules_with_real_settings(env_name: str, nodes: int) -> None:
    env = env_file(env_name)
    doc = compose(env)
    services = active(doc, set(env["COMPOSE_PROFILES"].split(",")))
    fields = {f"LEDGER_{name.upper()}": name for name in Settings.model_fields}
    for name in ("worker", "api", "sql"):
        service = services[name]
        command = service["command"]
        assert command[:2] == ["python", "-m"]
        assert importlib.util.find_spec(command[2]) is not None, command
        environment = {k: str(v) for k, v in service["environment"].items()}
        unknown = [k for k in environment if k.startswith("LEDGER_") and k not in fields]
        assert not unknown, f"{name}: settings the code does not read: {unknown}"
        settings = Settings(**{fields[k]: v for k, v in environment.items()})  # validates
        assert settings.broker is not None
        for host_port in settings.broker.split(","):
            host, port = host_port.split(":")
            advertised = services[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
            assert f"INTERNAL://{host}:{port}" in advertised
        assert settings.replication_factor == nodes
        assert settings.min_insync_replicas == (2 if nodes == 3 else 1)
        for url in settings.webhooks():
            where = urlsplit(url)
            assert where.hostname in services
            assert f"{where.port}" == services[where.hostname]["environment"]["HTTP_PORT"]
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in doc["volumes"]
    api = Settings(**{fields[k]: v for k, v in services["api"]["environment"].items()})
    assert api.api_host == "0.0.0.0"  # noqa: S104 - reachable from the host
    assert f"{api.api_port}:{api.api_port}" in services["api"]["ports"]
    worker = services["worker"]
    assert "ports" not in worker and "container_name" not in worker  # --scale worker=N
    sql = Settings(**{fields[k]: v for k, v in services["sql"]["environment"].items()})
    assert sql.sql_url is not None
    where = urlsplit(sql.sql_url)
    postgres = services[str(where.hostname)]["environment"]
    assert (where.username, where.password, where.path) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], "/" + postgres["POSTGRES_DB"],
    )  # fmt: skip
