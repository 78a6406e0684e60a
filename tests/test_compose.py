"""The deployment files, checked without a Docker engine: docker-compose.yml against the processes' real
settings and the shipped nginx config, the Dockerfile against the wheel's contents, and the gRPC health
check script against a running service."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import trustme
import yaml

from generation_service.settings import ENV_PREFIX as SERVICE_PREFIX
from generation_service.settings import Settings as ServiceSettings
from media_gateway.settings import Settings as GatewaySettings
from media_gateway.settings import env_name
from stack_helpers import StackFactory

REPO = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
SIM_COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.simulator.yml").read_text())
SIM_SERVICES: dict[str, dict[str, Any]] = SIM_COMPOSE["services"]
NGINX_CONF = (REPO / "deploy" / "nginx" / "media-gateway.conf").read_text()
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


def environment(service: str, services: dict[str, dict[str, Any]] = SERVICES) -> dict[str, str]:
    """The service's environment as compose would pass it with no `.env`: every ``${X:-default}`` -> default."""
    env = services[service].get("environment", {})
    assert isinstance(env, dict), "environment is written as a mapping"
    return {k: _INTERPOLATION.sub(lambda m: m.group(2) or "", str(v)) for k, v in env.items()}


def mounts(service: str, services: dict[str, dict[str, Any]] = SERVICES) -> dict[str, str]:
    """Mount target -> ``source[:mode]`` of a service's volumes (short syntax)."""
    found = {}
    for entry in services[service].get("volumes", []):
        parsed = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(:\w+)?", entry)  # a source may be ${X:-default}
        assert parsed is not None, entry
        found[parsed[2]] = parsed[1] + (parsed[3] or "")
    return found


def port_of(listen: str) -> str:
    return listen.rpartition(":")[2]


def test_the_services_and_their_commands():
    assert set(SERVICES) == {"generation-service", "media-gateway", "nginx", "redis"}
    assert set(SIM_SERVICES) == {"generation-service", "simulator", "simulator-2"}
    assert SERVICES["generation-service"]["command"] == ["python", "-m", "generation_service"]
    assert SERVICES["media-gateway"]["command"] == ["python", "-m", "media_gateway"]
    assert SIM_SERVICES["simulator"]["command"][:3] == ["python", "-m", "comfy_simulator"]
    assert SERVICES["nginx"]["image"].startswith("nginx:")
    python = [SERVICES[n] for n in SERVICES if n not in ("nginx", "redis")] + [
        SIM_SERVICES[n] for n in ("simulator", "simulator-2")
    ]
    assert {service["image"] for service in python} == {"comfy-generation:latest"}
    assert all(service["build"] == "." for service in python)


def test_the_runs_volume_is_written_by_the_service_only():
    assert "runs" in COMPOSE["volumes"]
    service_runs = environment("generation-service")["GENERATION_RUNS_DIR"]
    gateway_runs = environment("media-gateway")["MEDIA_GATEWAY_RUNS_DIR"]
    alias = re.search(r"alias (\S+)/;", NGINX_CONF)
    assert alias is not None
    assert mounts("generation-service")[service_runs] == "runs"  # read-write
    assert mounts("media-gateway")[gateway_runs] == "runs:ro"
    assert mounts("nginx")[alias.group(1)] == "runs:ro"
    assert "runs" not in str(SIM_SERVICES["simulator"].get("volumes", []))


def test_nginx_runs_the_shipped_config_in_front_of_the_gateway():
    assert mounts("nginx")["/etc/nginx/templates/default.conf.template"] == "./deploy/nginx/media-gateway.conf:ro"
    # nginx checks file URLs with the secret the service signs them with
    assert "${MEDIA_SIGNING_SECRET}" in NGINX_CONF
    assert SERVICES["nginx"]["environment"]["MEDIA_SIGNING_SECRET"] == "${MEDIA_SIGNING_SECRET:-}"
    assert SERVICES["generation-service"]["environment"]["GENERATION_MEDIA_SIGNING_SECRET"].startswith(
        "${MEDIA_SIGNING_SECRET:-}"
    )
    assert environment("generation-service")["GENERATION_MEDIA_URLS"] == "files"
    gateway = environment("media-gateway")
    upstream = re.search(r"server ([a-z-]+):(\d+);", NGINX_CONF)
    assert upstream is not None
    assert upstream.groups() == ("media-gateway", port_of(gateway["MEDIA_GATEWAY_LISTEN"]))
    assert f"location {gateway['MEDIA_GATEWAY_ACCEL_REDIRECT']} {{" in NGINX_CONF  # front-server mode on
    listen = re.search(r"listen (\d+);", NGINX_CONF)
    assert listen is not None and SERVICES["nginx"]["ports"][0] == f"{listen.group(1)}:{listen.group(1)}"
    assert SERVICES["nginx"]["depends_on"]["media-gateway"] == {"condition": "service_healthy"}


def test_the_service_runs_as_replicas_on_redis_behind_nginx_grpc():
    service = environment("generation-service")
    assert service["GENERATION_REDIS_URL"] == "redis://redis:6379/0"
    settings = ServiceSettings.from_args([], {k: v for k, v in service.items() if k.startswith(SERVICE_PREFIX)})
    assert settings.redis_url and settings.takeover_seconds <= 15
    assert SERVICES["generation-service"]["deploy"]["replicas"] == "${GENERATION_REPLICAS:-3}"
    assert "ports" not in SERVICES["generation-service"]  # replicas share no host port: nginx is their address
    assert SERVICES["generation-service"]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    redis = SERVICES["redis"]
    assert redis["image"].startswith("redis:7") and "ports" not in redis
    assert redis["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert mounts("redis")["/data"] == "redis-data" and "redis-data" in COMPOSE["volumes"]
    assert " ".join(redis["healthcheck"]["test"]) == "CMD redis-cli ping"
    grpc_conf = (REPO / "deploy" / "nginx" / "grpc.conf").read_text()
    assert mounts("nginx")["/etc/nginx/conf.d/grpc.conf"] == "./deploy/nginx/grpc.conf:ro"
    assert f"server generation-service:{port_of(service['GENERATION_LISTEN'])};" in grpc_conf
    grpc_listen = re.search(r"listen (\d+) http2;", grpc_conf)
    assert grpc_listen is not None
    # gRPC is published on the host's loopback unless the operator says otherwise.
    assert SERVICES["nginx"]["ports"][1] == "${GRPC_PUBLISH_ADDRESS:-127.0.0.1}:" + f"{grpc_listen.group(1)}:50051"


def test_ports_match_the_settings_and_metrics_stay_on_loopback():
    service, gateway = environment("generation-service"), environment("media-gateway")
    assert service["GENERATION_LISTEN"].startswith("0.0.0.0:")
    assert service["GENERATION_METRICS_LISTEN"].startswith("0.0.0.0:")  # scraped inside the compose network
    gateway_port = port_of(gateway["MEDIA_GATEWAY_LISTEN"])
    assert SERVICES["media-gateway"]["ports"] == [f"127.0.0.1:{gateway_port}:{gateway_port}"]
    assert SIM_SERVICES["simulator"]["ports"] == ["127.0.0.1:8188:8188"]
    assert SIM_SERVICES["simulator-2"]["ports"] == ["127.0.0.1:8189:8188"]
    assert "location = /metrics" in NGINX_CONF  # not served on the public port


def test_every_service_has_a_health_check():
    everything = {**SERVICES, "simulator": SIM_SERVICES["simulator"], "simulator-2": SIM_SERVICES["simulator-2"]}
    checks = {name: " ".join(everything[name]["healthcheck"]["test"]) for name in everything}
    assert checks["generation-service"] == "CMD python /app/grpc_healthcheck.py"
    gateway_port = port_of(environment("media-gateway")["MEDIA_GATEWAY_LISTEN"])
    assert f"http://127.0.0.1:{gateway_port}/readyz" in checks["media-gateway"]
    assert "http://127.0.0.1:8080/readyz" in checks["nginx"]
    assert "/system_stats" in checks["simulator"] and "/system_stats" in checks["simulator-2"]
    assert checks["redis"] == "CMD redis-cli ping"
    for name in everything:
        assert {"interval", "timeout", "retries"} <= set(everything[name]["healthcheck"]), name


def test_the_default_backend_is_swarmui_on_the_host_and_the_simulator_file_replaces_it():
    backend = SERVICES["generation-service"]["environment"]["GENERATION_BACKEND_URL"]
    assert backend == "${GENERATION_BACKEND_URL:-http://host.docker.internal:7801/ComfyBackendDirect}"
    assert "host.docker.internal:host-gateway" in SERVICES["generation-service"]["extra_hosts"]  # it exists
    # No service of the main file names a simulator: without the simulator file nothing dials one.
    assert "simulator" not in yaml.safe_dump(SERVICES)
    overlay = SIM_SERVICES["generation-service"]
    assert set(overlay) == {"environment", "depends_on"}
    pool = overlay["environment"]["GENERATION_BACKEND_URL"]
    assert "${" not in pool  # whatever .env says
    hosts = {re.match(r"http://([a-z0-9-]+):8188", url).group(1) for url in pool.split(",")}  # type: ignore[union-attr]
    assert hosts == {"simulator", "simulator-2"} == set(overlay["depends_on"])
    assert all(c == {"condition": "service_healthy"} for c in overlay["depends_on"].values())
    assert ServiceSettings(backend_url=pool)  # a valid pool for the service


def test_custom_templates_have_a_volume_and_the_default_is_the_shipped_folder():
    assert mounts("generation-service")["/templates"] == "${TEMPLATES_DIR:-./templates}:ro"
    default = environment("generation-service")["GENERATION_TEMPLATES_DIR"]
    python = re.search(r"^FROM python:(\d+\.\d+)-slim$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert python is not None and "RUN python -m venv /opt/venv" in (REPO / "Dockerfile").read_text()
    assert default == f"/opt/venv/lib/python{python.group(1)}/site-packages/generation_service/templates"
    assert ServiceSettings().templates_dir.endswith("/generation_service/templates")


def test_environment_names_are_settings_of_their_process():
    service_vars = {SERVICE_PREFIX + f.name.upper() for f in dataclasses.fields(ServiceSettings)}
    gateway_vars = {env_name(f.name) for f in dataclasses.fields(GatewaySettings)}
    simulator_help = subprocess.run(
        [sys.executable, "-m", "comfy_simulator", "--help"], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    simulator_vars = set(re.findall(r"\[(COMFY_SIMULATOR_[A-Z_]+)\]", simulator_help))
    assert simulator_vars
    for name, known in [
        ("generation-service", service_vars),
        ("media-gateway", gateway_vars),
    ]:
        assert set(environment(name)) <= known, (name, set(environment(name)) - known)
    for name, known in [("generation-service", service_vars), ("simulator", simulator_vars)]:
        found = set(environment(name, SIM_SERVICES))
        assert found <= known, (name, found - known)


def test_the_defaults_are_valid_settings():
    service_env = {k: v for k, v in environment("generation-service").items()}
    settings = ServiceSettings.from_args([], service_env)
    assert settings.listen == "0.0.0.0:50051" and settings.metrics_listen == "0.0.0.0:9100"
    assert settings.log_format == "json" and settings.media_url_ttl_seconds == 86400
    gateway = GatewaySettings.from_env(environment("media-gateway"))
    assert (gateway.accel_redirect, gateway.log_format, gateway.signed_url_ttl_seconds) == ("/_runs/", "json", 86400)


def test_signing_secret_and_ttl_are_shared_by_construction():
    service, gateway = SERVICES["generation-service"]["environment"], SERVICES["media-gateway"]["environment"]
    assert service["GENERATION_MEDIA_SIGNING_SECRET"] == gateway["MEDIA_GATEWAY_SIGNING_SECRET"]
    assert service["GENERATION_MEDIA_SIGNING_SECRET"].startswith("${MEDIA_SIGNING_SECRET")
    assert service["GENERATION_MEDIA_URL_TTL_SECONDS"] == gateway["MEDIA_GATEWAY_SIGNED_URL_TTL_SECONDS"]
    documented = (REPO / "docker-compose.yml").read_text()
    for variable in set(_INTERPOLATION.findall(documented)):  # every ${X} is explained in the header
        assert f"#   {variable[0]} " in documented, variable[0]


# --- Dockerfile --------------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped), split by FROM."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def copied(stage: list[str]) -> set[str]:
    sources = set()
    for line in stage:
        if line.startswith("COPY ") and "--from=" not in line:
            sources.update(line.split()[1:-1])
    return sources


def test_the_build_stage_copies_everything_the_wheel_includes():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    build = dockerfile_stages()[0]
    sources = copied(build)
    assert set(wheel["only-include"]) <= sources
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= sources
    # and the wheel includes every top-level module the packages import
    top_level = {p.stem for p in REPO.glob("*.py")}
    for package in wheel["packages"]:
        for source in (REPO / package).rglob("*.py"):
            for module in re.findall(r"^(?:from|import) (\w+)", source.read_text(), re.MULTILINE):
                assert module not in top_level or f"{module}.py" in wheel["only-include"], (source, module)


def test_the_final_stage_is_slim_and_runs_as_a_user():
    stages = dockerfile_stages()
    assert len(stages) == 2
    final = stages[-1]
    text = "\n".join(final)
    assert final[0] == "FROM python:3.11-slim"
    assert not re.search(r"\b(apt-get|apk|gcc|build-essential|pip install)\b", text)
    assert "COPY --from=build /opt/venv /opt/venv" in final
    user = [line for line in final if line.startswith("USER ")]
    assert user == ["USER app"] and final.index(user[0]) > max(i for i, line in enumerate(final) if "RUN" in line)
    files = copied(final)
    assert {"workflows", "deploy/grpc_healthcheck.py"} <= files
    # The templates are package data, installed with generation_service: the default finds them.
    assert "templates" not in files
    assert Path(ServiceSettings().templates_dir).is_relative_to(REPO / "generation_service")
    assert "WORKDIR /app" in final
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".env" in ignored and not any(source.split("/")[0] in ignored for source in copied(stages[0]) | files)


# --- the gRPC health check script ---------------------------------------------------------------------


def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grpc_healthcheck", REPO / "deploy" / "grpc_healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_grpc_health_check_script(stack_factory: StackFactory, tmp_path: Path):
    check = healthcheck()
    ca = trustme.CA()
    pem = tmp_path / "server.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    stack = await stack_factory(tls_cert_file=str(pem), tls_key_file=str(pem), auth_tokens="a-token")
    listen = f"0.0.0.0:{stack.service.port}"
    tls = {"GENERATION_LISTEN": listen, "GENERATION_TLS_CERT_FILE": str(pem)}

    healthy = await asyncio.to_thread(check.main, {**tls, "HEALTHCHECK_TLS_CA_FILE": str(tmp_path / "ca.pem")})
    wrong_name = await asyncio.to_thread(
        check.main, {**tls, "HEALTHCHECK_TLS_CA_FILE": str(tmp_path / "ca.pem"), "HEALTHCHECK_TLS_SERVER_NAME": "x"}
    )
    plaintext = await asyncio.to_thread(check.main, {"GENERATION_LISTEN": listen})

    assert (healthy, wrong_name, plaintext) == (0, 1, 1)  # health needs no token, but TLS must be right
