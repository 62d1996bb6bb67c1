"""docker-compose.yml and the Dockerfile, checked without Docker: the compose file against the
Compose Specification's JSON schema (the copy vendored by the check-jsonschema package, as the
official schema cannot be fetched here), its shape, and every variable it sets for lora-hub
against what lora-hub reads (lora_hub/settings.py)."""

from __future__ import annotations

import importlib.resources
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = (ROOT / "lora_hub" / "settings.py").read_text()


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _schema() -> dict[str, Any]:
    path = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(path.read_text())


def test_compose_file_follows_the_compose_specification() -> None:
    schema = _schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(_compose()), key=str)
    assert errors == []
    # The check can fail: a misspelt key is caught.
    broken = _compose()
    broken["services"]["postgres"]["helthcheck"] = broken["services"]["postgres"].pop("healthcheck")
    assert list(validator.iter_errors(broken))


def test_compose_services_are_wired_as_a_team_needs() -> None:
    services = _compose()["services"]
    assert {"postgres", "minio", "minio-init", "lorahub", "worker"} <= set(services)
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for name, service in services.items():
        image = service.get("image", "")
        assert not image.endswith(":latest") or "build" in service or image.startswith("lora-hub"), name
        assert not image.startswith(("minio/", "docker.io/minio/")), f"{name}: MinIO left Docker Hub"
    init = services["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init["restart"] == "no" and "mc mb" in " ".join(init["command"])
    server = services["lorahub"]
    assert server["deploy"]["replicas"] == 2
    assert server["command"][:2] == ["lorahub", "serve"]
    assert server["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
    }
    bucket = re.search(r"local/(\S+)", " ".join(init["command"])).group(1)  # type: ignore[union-attr]
    assert server["environment"]["LORAHUB_STORE_URL"].startswith(f"s3://{bucket}/")


def _lorahub_reads() -> set[str]:
    """Variables settings.py reads (its code, not its table)."""
    return set(re.findall(r"""(?:env\.get\(|_positive_int\(env,\s*)"(LORAHUB_[A-Z_]+)\"""", SETTINGS))


def _boto3_reads() -> set[str]:
    """The AWS variables settings.py documents as read by boto3 for an s3:// store."""
    block = SETTINGS[SETTINGS.index("read by boto3") :].split('"""', 1)[0]
    return set(re.findall(r"``(AWS_[A-Z_]+)``", block))


def _unknown(env: dict[str, str]) -> list[str]:
    known = _lorahub_reads() | _boto3_reads()
    return sorted(k for k in env if k not in known)


def test_every_variable_the_compose_file_sets_is_read() -> None:
    assert {"LORAHUB_DATABASE_URL", "LORAHUB_STORE_URL", "LORAHUB_HOME", "LORAHUB_URL"} <= _lorahub_reads()
    assert "AWS_ENDPOINT_URL" in _boto3_reads()
    for name, service in _compose()["services"].items():
        if service.get("image", "").startswith("lora-hub"):
            env = service["environment"]
            assert _unknown(env) == [], name
            assert any(k.startswith("LORAHUB_") for k in env)
    assert _unknown({"LORAHUB_DATABSE_URL": "x"}) == ["LORAHUB_DATABSE_URL"]  # the check can fail


def test_dockerfile_installs_extras_that_exist() -> None:
    text = (ROOT / "Dockerfile").read_text()
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    (wanted,) = re.findall(r'pip install "\.\[([a-z0-9,]+)\]"', text)
    assert set(wanted.split(",")) <= extras
    assert {"service", "s3", "postgres"} <= set(wanted.split(","))
    assert '"lorahub", "serve"' in text and "/readyz" in text
