"""docker-compose.yml: its structure, without Docker Compose (no image can be pulled here).

PyYAML is no runtime dependency (the dev extra brings it, with schemathesis),
so the file is read with a minimal parser for the YAML subset it is written in
(block mappings and sequences, quoted and plain scalars, ``|`` block scalars,
full-line comments); when PyYAML is importable the two readings must agree.
``docker compose config`` is not run: no Compose v2 is installable on the
development machines (Debian ships docker-compose 1.29, which cannot read
``name`` or ``dockerfile_inline``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith('"'):
        assert text.endswith('"') and len(text) >= 2, f"unterminated string: {text}"
        return json.loads(text)
    if text.startswith("'"):
        assert text.endswith("'") and len(text) >= 2, f"unterminated string: {text}"
        return text[1:-1].replace("''", "'")
    assert not text.startswith(("[", "{", "&", "*", "!")), f"outside the subset: {text}"
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def parse_subset(source: str) -> Any:
    lines = [(len(ln) - len(ln.lstrip(" ")), ln.strip(), ln) for ln in source.splitlines()]
    assert all("\t" not in raw[: ind + 1] for ind, _, raw in lines), "tabs in indentation"

    def significant(i: int) -> int:
        while i < len(lines) and (not lines[i][1] or lines[i][1].startswith("#")):
            i += 1
        return i

    def block(i: int, indent: int) -> tuple[Any, int]:
        i = significant(i)
        if i >= len(lines) or lines[i][0] < indent:
            return None, i
        indent = lines[i][0]
        if lines[i][1].startswith("- "):
            items = []
            while (i := significant(i)) < len(lines) and lines[i][0] == indent:
                text = lines[i][1]
                assert text.startswith("- "), f"line {i + 1}: mixed list and mapping"
                assert ": " not in text[2:] or text[2:].lstrip().startswith(('"', "'")), \
                    f"line {i + 1}: lists of mappings are outside the subset"
                items.append(_scalar(text[2:]))
                i += 1
            return items, i
        mapping: dict[str, Any] = {}
        while (i := significant(i)) < len(lines) and lines[i][0] == indent:
            text = lines[i][1]
            key, sep, rest = text.partition(":")
            assert sep and (not rest or rest.startswith(" ")), f"line {i + 1}: not 'key: value': {text}"
            key = _scalar(key)
            assert key not in mapping, f"line {i + 1}: duplicate key {key!r}"
            rest = rest.strip()
            if rest == "|":
                body, i = [], i + 1
                while i < len(lines) and (not lines[i][1] or lines[i][0] > indent):
                    body.append(lines[i][2])
                    i += 1
                while body and not body[-1].strip():
                    body.pop()
                cut = min(len(b) - len(b.lstrip(" ")) for b in body if b.strip())
                mapping[key] = "\n".join(b[cut:] for b in body) + "\n"
            elif rest:
                mapping[key] = _scalar(rest)
                i += 1
            else:
                value, i = block(i + 1, indent + 1)
                mapping[key] = value
        assert i >= len(lines) or lines[i][0] < indent, f"line {i + 1}: bad indentation"
        return mapping, i

    data, end = block(0, 0)
    assert significant(end) == len(lines), f"line {end + 1}: not parsed"
    return data


def _compose() -> dict[str, Any]:
    data = parse_subset(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def test_parses_and_agrees_with_pyyaml_when_available():
    data = _compose()
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return
    assert yaml.safe_load(COMPOSE.read_text()) == data


def test_services_and_references():
    data = _compose()
    services = data["services"]
    assert set(services) == {"postgres", "controller", "worker", "docker-proxy"}
    networks, volumes = set(data["networks"]), set(data["volumes"])
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        assert set(svc.get("networks", [])) <= networks, name
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            assert source.startswith("/") or source in volumes, (name, vol)
    assert data["networks"]["backend"]["internal"] is True
    assert data["networks"]["engine"]["internal"] is True


def test_controller_is_the_api_and_never_gets_an_engine():
    svc = _compose()["services"]["controller"]
    assert svc["command"][:2] == ["sandgate", "serve"] and "0.0.0.0" in svc["command"]
    assert all(p.startswith("127.0.0.1:") for p in svc["ports"])
    env = svc["environment"]
    assert env["SANDGATE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "${SANDGATE_DB_PASSWORD:?" in env["SANDGATE_DATABASE_URL"]
    assert "DOCKER_HOST" not in env and "volumes" not in svc
    assert env["SANDGATE_API_READY_REQUIRES_ENGINE"] == "false"
    assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(svc["healthcheck"]["test"])
    assert svc["cap_drop"] == ["ALL"] and svc["read_only"] is True
    assert "FROM python:3.11" in svc["build"]["dockerfile_inline"]


def test_only_the_proxy_touches_the_docker_socket():
    services = _compose()["services"]
    for name, svc in services.items():
        mounts = " ".join(svc.get("volumes", []))
        assert ("docker.sock" in mounts) == (name == "docker-proxy"), name
    proxy = services["docker-proxy"]
    assert proxy["image"].startswith("tecnativa/docker-socket-proxy")
    assert all(v.endswith(":ro") for v in proxy["volumes"])
    assert proxy["environment"]["EXEC"] == "0" and proxy["environment"]["BUILD"] == "0"
    assert proxy["networks"] == ["engine"]
    worker = services["worker"]
    assert worker["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"
    assert "engine" in worker["networks"] and worker["command"][:2] == ["sandgate", "worker"]
    users = [n for n, s in services.items() if "engine" in s.get("networks", [])]
    assert sorted(users) == ["docker-proxy", "worker"]


def test_the_file_says_what_it_cannot_show():
    text = COMPOSE.read_text()
    assert "cannot pull" in text and "root-equivalent" in text
    assert "rootless" in text.lower() and "dedicated VM" in text


def test_every_service_has_a_healthcheck_or_says_why_not():
    services = _compose()["services"]
    for name in ("postgres", "controller", "worker"):
        check = services[name]["healthcheck"]
        assert check["test"] and check["interval"] and check["retries"] >= 1, name
    # the worker is healthy while its heartbeat is fresh: `sandgate worker --check` reads worker_beats
    worker = services["worker"]
    assert worker["healthcheck"]["test"] == ["CMD", "sandgate", "worker", "--check"]
    # the proxy's image has no shell or python to probe with; the worker's check covers the path through it
    assert "healthcheck" not in services["docker-proxy"]


def test_every_image_is_pinned_by_version():
    services = _compose()["services"]
    for name, svc in services.items():
        image = svc["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag not in ("latest", "edge", "nightly", "main"), (name, image)
        if "build" not in svc and name != "worker":  # pulled, not built here
            assert any(ch.isdigit() for ch in tag), (name, image)
    assert services["docker-proxy"]["image"] == "tecnativa/docker-socket-proxy:0.3.0"


def test_the_controller_never_evaluates():
    env = _compose()["services"]["controller"]["environment"]
    assert env["SANDGATE_API_WORKERS"] == "0"


def test_the_file_names_the_compose_version_it_needs():
    data, text = _compose(), COMPOSE.read_text()
    uses_v2_only = "name" in data or any("dockerfile_inline" in s.get("build", {}) for s in data["services"].values())
    assert uses_v2_only and "Compose v2.17" in text and "docker-compose v1" in text
    readme = (COMPOSE.parent / "README.md").read_text()
    assert "Compose v2.17" in readme
