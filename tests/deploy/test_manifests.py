"""Dockerfile, docker-compose, Kubernetes manifests and the systemd unit.

No container engine or cluster runs here: Kubernetes objects are built with the real kustomize
(`kubectl kustomize`) and validated against the Kubernetes API schemas (kubernetes-validate); the
systemd unit is checked by the real `systemd-analyze`; compose and the Dockerfile are checked for
consistency with the rest of the repository.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
import zmq.auth

from tests._net import program
from tests.deploy.conftest import DEPLOY, ROOT

K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.30"
SERVE = ["spikewatch", "serve", "--zmq", "tcp://0.0.0.0:5557", "--http-host", "0.0.0.0"]


# --- Dockerfile --------------------------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _exec_form(value: str) -> list[str]:
    parsed = yaml.safe_load(value)  # a JSON array is valid YAML
    assert isinstance(parsed, list), value
    return [str(v) for v in parsed]


def test_dockerfile() -> None:
    ins = _instructions(DEPLOY / "docker" / "Dockerfile")

    def get(op: str) -> list[str]:
        return [v for o, v in ins if o == op]

    assert all(v.split()[0] == "python:3.11-slim" for v in get("FROM"))
    [user] = get("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert get("EXPOSE") == ["5557 8000"]
    [health] = get("HEALTHCHECK")
    assert "http://127.0.0.1:8000/healthz" in health
    [entry], [cmd] = get("ENTRYPOINT"), get("CMD")
    assert _exec_form(entry) + _exec_form(cmd) == SERVE
    installs = " ".join(v for v in get("RUN") if "pip " in v)
    assert '".[server,postgres]"' in installs
    assert '"spikewatch[server,postgres]"' in installs
    assert "agent]" not in installs
    assert "torch" not in installs.replace("find_spec('torch')", "")
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for value in get("COPY"):
        if value.startswith("--from"):
            continue
        *sources, _ = value.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: missing from the repository"
            assert f"!{src.rstrip('/')}" in ignore, f"{src} is excluded by the .dockerignore"


def test_server_installs_without_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras["server"] + extras["postgres"]
    assert not [d for d in wanted if re.match(r"torch\b", d)]


# --- docker compose ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        (DEPLOY / "compose" / "docker-compose.yml").read_text(encoding="utf-8"))
    return doc


def test_compose_services_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"keygen", "spikewatch", "postgres", "prometheus", "alertmanager",
                             "grafana"}
    for name, svc in services.items():
        if svc.get("profiles") == ["setup"]:  # one-shot set-up (keygen), never started by `up`
            continue
        assert svc["healthcheck"]["test"], f"{name} has no healthcheck"
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
    sw = services["spikewatch"]
    assert sw["command"] == SERVE[1:]
    assert "/healthz" in " ".join(sw["healthcheck"]["test"])
    assert sw["environment"]["SPIKEWATCH_DB"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in sw["environment"]["SPIKEWATCH_DB"]
    assert sw["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("spikewatch", "keygen"):
        build = services[name]["build"]
        assert (DEPLOY / "compose" / build["context"] / build["dockerfile"]).is_file()


def test_compose_mounts_exist_and_volumes_are_declared(compose: dict[str, Any]) -> None:
    base = DEPLOY / "compose"
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (base / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} not declared"
        for secret in svc.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: secret {secret} not declared"


def _keygen_output(tmp_path: Path) -> Path:
    """What the compose keygen service writes (its own command line, run here)."""
    keygen = pytest.importorskip("spikewatch.server._cli_keygen", reason="keygen not importable")
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    command = compose["services"]["keygen"]["command"]
    assert command[:2] == ["keygen", "/secrets"]
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers()
    keygen.register(sub)
    args = ap.parse_args([*command[:1], str(tmp_path / "secrets"), *command[2:]])
    assert args.func(args) == 0
    return tmp_path / "secrets"


def test_compose_ships_with_curve_and_api_tokens_on(compose: dict[str, Any], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The server's auth settings point at compose secrets that are files the keygen service
    writes, and what it writes is what the server, agents and Prometheus load."""
    api = pytest.importorskip("spikewatch.server.api", reason="server.api not importable")
    services, secrets = compose["services"], compose["secrets"]
    keygen = services["keygen"]
    [keys_mount] = keygen["volumes"]
    assert keys_mount.split(":")[1] == "/secrets"
    keys_dir = keys_mount.split(":")[0]
    assert "--group-readable" in keygen["command"]
    # it writes as SECRETS_UID:SECRETS_GID, and the readers get that group
    user = re.fullmatch(r"\$\{SECRETS_UID:\?[^}]*\}:(\$\{SECRETS_GID:\?[^}]*\})", keygen["user"])
    assert user, keygen["user"]
    out = _keygen_output(tmp_path)
    capsys.readouterr()
    generated = {}
    for name, secret in secrets.items():
        source = Path(secret["file"])
        assert source.parent == Path(keys_dir), f"{name} is not a keygen file"
        assert (out / source.name).is_file(), f"keygen does not write {source.name}"
        generated[f"/run/secrets/{name}"] = out / source.name
    sw = services["spikewatch"]
    env = sw["environment"]
    auth = {k: env[k] for k in ("SPIKEWATCH_AUTH__CURVE_SECRET_KEY_FILE",
                                "SPIKEWATCH_AUTH__CURVE_ALLOWED_CLIENTS_FILE",
                                "SPIKEWATCH_AUTH__API_TOKENS_FILE")}
    for path in auth.values():
        assert path.removeprefix("/run/secrets/") in sw["secrets"], path
    public, secret = zmq.auth.load_certificate(
        generated[auth["SPIKEWATCH_AUTH__CURVE_SECRET_KEY_FILE"]])
    assert secret is not None
    assert zmq.curve_public(secret) == public
    allowed = generated[auth["SPIKEWATCH_AUTH__CURVE_ALLOWED_CLIENTS_FILE"]].read_text()
    agent_public, _ = zmq.auth.load_certificate(out / "agent.key_secret")
    assert agent_public.decode() in allowed.splitlines()
    tokens = api.Tokens.from_file(generated[auth["SPIKEWATCH_AUTH__API_TOKENS_FILE"]])
    # Prometheus scrapes /metrics with a read token it is given as a secret
    prom = services["prometheus"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "spikewatch"]
    credentials = job["authorization"]["credentials_file"]
    assert credentials.removeprefix("/run/secrets/") in prom["secrets"]
    assert tokens.scope_of(generated[credentials].read_text().strip()) == "read"
    # the files are 0640 for the containers, which read them through the group SECRETS_GID
    for path in generated.values():
        if path.name != "allowed_agents":
            assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    for name in ("spikewatch", "prometheus"):
        assert services[name]["group_add"] == [user.group(1)]
    example = (DEPLOY / "compose" / "env.example").read_text()
    assert "SECRETS_UID=" in example
    assert "SECRETS_GID=" in example


def _published(svc: dict[str, Any]) -> list[tuple[str, str]]:
    """(host address, host port) of each published port ('' = every interface)."""
    out = []
    for port in svc.get("ports", []):
        parts = str(port).split(":")
        assert len(parts) in (2, 3), f"{port}: give HOST:CONTAINER or ADDRESS:HOST:CONTAINER"
        out.append(("" if len(parts) == 2 else parts[0], parts[-2]))
    return out


def test_compose_publishes_nothing_unauthenticated(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prom = services["prometheus"]
    # the lifecycle API (POST /-/quit, /-/reload) is off, and the port is local anyway
    assert not [f for f in prom["command"] if f.startswith("--web.enable-lifecycle")]
    for name, svc in services.items():
        for addr, port in _published(svc):
            if name == "spikewatch":
                continue  # checked below: CURVE and tokens guard it
            assert addr == "127.0.0.1", f"{name} publishes {port} on every interface"
    sw = services["spikewatch"]
    assert {port for _, port in _published(sw)} == {"5557", "8000"}
    assert "SPIKEWATCH_AUTH__CURVE_SECRET_KEY_FILE" in sw["environment"]  # no plaintext ZeroMQ
    assert "SPIKEWATCH_AUTH__CURVE_ALLOWED_CLIENTS_FILE" in sw["environment"]  # listed agents
    assert "SPIKEWATCH_AUTH__API_TOKENS_FILE" in sw["environment"]  # no anonymous API


def test_compose_secrets_stay_out_of_git_and_the_image() -> None:
    ignore = [ln for ln in (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text()
              .splitlines() if ln and not ln.startswith("#")]
    assert ignore[0] == "**"  # the build context is only what is re-included ...
    assert not [ln for ln in ignore if ln.startswith("!deploy")]  # ... never deploy/secrets
    for folder in (DEPLOY / "compose" / "secrets").iterdir():
        assert (folder / ".gitignore").read_text().split() == ["*", "!.gitignore", "!README.md"]


def _compose() -> list[str]:
    """The Compose command: the v2 plugin (`docker compose`), else v1 (`docker-compose`, the
    Debian package `make test` installs); `config` needs no Docker daemon."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    if v1:
        return [v1]
    pytest.skip("neither docker compose (v2) nor docker-compose (v1) is installed")


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    compose = _compose()
    r = subprocess.run([*compose, "--env-file", str(DEPLOY / "compose" / "env.example"),
                        "-f", str(DEPLOY / "compose" / "docker-compose.yml"), "config",
                        "--quiet"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yml"  # and it does refuse a wrong file
    bad.write_text("services:\n  spikewatch:\n    image: x\n    bogus_key: 1\n")
    r = subprocess.run([*compose, "-f", str(bad), "config", "--quiet"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode != 0


def test_prometheus_targets_match_compose(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    [job] = [j for j in prom["scrape_configs"] if j["job_name"] == "spikewatch"]
    assert job["static_configs"][0]["targets"] == ["spikewatch:8000"]
    assert "8000:8000" in compose["services"]["spikewatch"]["ports"]
    [am] = prom["alerting"]["alertmanagers"][0]["static_configs"]
    assert am["targets"] == ["alertmanager:9093"]
    assert "127.0.0.1:9093:9093" in compose["services"]["alertmanager"]["ports"]
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


# --- Kubernetes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    """The objects `kubectl kustomize deploy/kubernetes` builds, by kind ("Service/NAME" for the
    two Services)."""
    r = subprocess.run([program("kubectl"), "kustomize", str(K8S)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    out: dict[str, dict[str, Any]] = {}
    for d in yaml.safe_load_all(r.stdout):
        key = d["kind"] if d["kind"] != "Service" else f"Service/{d['metadata']['name']}"
        assert key not in out, f"two {key}"
        out[key] = d
    return out


def _validate(obj: dict[str, Any]) -> None:
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate not installed (dev extra)")
    kv.validate(obj, K8S_VERSION, strict=True)


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [c] = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_kustomize_builds_and_objects_match_the_api_schemas(
        objects: dict[str, dict[str, Any]]) -> None:
    assert set(objects) == {"Namespace", "ConfigMap", "Service/spikewatch",
                            "Service/spikewatch-zmq", "PersistentVolumeClaim", "Deployment"}
    for obj in objects.values():
        _validate(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "spikewatch"
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    _validate(secret)
    assert secret["stringData"]["SPIKEWATCH_DB"].startswith("postgresql+psycopg://")
    _validate(yaml.safe_load((K8S / "secret-auth.example.yaml").read_text(encoding="utf-8")))


def test_schema_validation_can_fail(objects: dict[str, dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate not installed (dev extra)")
    bad = yaml.safe_load(yaml.safe_dump(objects["Deployment"]))
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "5557"
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def test_deployment_service_and_probes(objects: dict[str, dict[str, Any]]) -> None:
    dep, svc, cm = objects["Deployment"], objects["Service/spikewatch"], objects["ConfigMap"]
    pod = dep["spec"]["template"]
    c = _container(objects)
    assert ["spikewatch", *c["args"]] == SERVE
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"zmq": 5557, "http": 8000}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    assert svc["spec"]["type"] == "ClusterIP"
    assert {p["targetPort"]: p["port"] for p in svc["spec"]["ports"]} == ports
    labels = pod["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    env = {e["name"]: e.get("value") for e in c["env"]}
    [secret_ref] = c["envFrom"]
    assert secret_ref["secretRef"]["name"] == "spikewatch-db"
    # The rules volume refers to the generated (hash-suffixed) ConfigMap, mounted where
    # SPIKEWATCH_RULES points.
    [rules_vol] = [v for v in pod["spec"]["volumes"] if v["name"] == "rules"]
    assert rules_vol["configMap"]["name"] == cm["metadata"]["name"]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "rules"]
    assert env["SPIKEWATCH_RULES"] == f"{mount['mountPath']}/rules.yaml"
    assert "rules.yaml" in cm["data"]


def test_sqlite_lives_on_a_persistent_volume_unless_a_secret_names_postgresql(
        objects: dict[str, dict[str, Any]]) -> None:
    pvc, dep = objects["PersistentVolumeClaim"], objects["Deployment"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"  # the old pod lets go of the volume
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"]
    c = _container(objects)
    [data] = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "data"]
    # The server's default database is sqlite:///spikewatch.db in its working directory.
    settings = pytest.importorskip("spikewatch.server._settings", reason="settings not importable")
    assert settings.Settings.model_fields["db"].default == "sqlite:///spikewatch.db"
    assert c["workingDir"] == mount["mountPath"] == "/var/lib/spikewatch"
    assert "SPIKEWATCH_DB" not in {e["name"] for e in c["env"]}  # it would hide the Secret's
    [secret_ref] = c["envFrom"]
    assert secret_ref["secretRef"] == {"name": "spikewatch-db", "optional": True}


def test_curve_and_tokens_are_required_and_zmq_is_reachable_from_outside(
        objects: dict[str, dict[str, Any]]) -> None:
    dep, ext = objects["Deployment"], objects["Service/spikewatch-zmq"]
    pod = dep["spec"]["template"]
    c = _container(objects)
    env = {e["name"]: e.get("value") for e in c["env"]}
    [auth] = [v for v in pod["spec"]["volumes"] if v["name"] == "auth"]
    assert auth["secret"]["secretName"] == "spikewatch-auth"
    assert not auth["secret"].get("optional", False)  # no keys, no pod: never plaintext ZeroMQ
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "auth"]
    files = {}
    for var in ("SPIKEWATCH_AUTH__CURVE_SECRET_KEY_FILE",
                "SPIKEWATCH_AUTH__CURVE_ALLOWED_CLIENTS_FILE", "SPIKEWATCH_AUTH__API_TOKENS_FILE"):
        path = Path(env[var])
        assert str(path.parent) == mount["mountPath"], var
        files[var] = path.name
    # the Secret's keys are the files keygen writes and the server reads
    example = yaml.safe_load((K8S / "secret-auth.example.yaml").read_text(encoding="utf-8"))
    assert example["metadata"]["name"] == "spikewatch-auth"
    assert set(files.values()) | {"read.token"} == set(example["stringData"])
    for name in set(example["stringData"]):
        assert f"--from-file=keys/{name}" in (K8S / "secret-auth.example.yaml").read_text()
    # the external Service carries only the ZeroMQ port, to the server's pods
    assert ext["spec"]["type"] in ("LoadBalancer", "NodePort")
    [port] = ext["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (5557, "zmq")
    assert ext["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_rules_configmap_is_a_valid_complete_rule_pack(
        objects: dict[str, dict[str, Any]]) -> None:
    rules = pytest.importorskip("spikewatch.server.rules", reason="server.rules not importable")
    deployed = {r.name for r in rules.parse_rules(objects["ConfigMap"]["data"]["rules.yaml"])}
    default = {r.name for r in rules.load_rules()}
    assert default <= deployed, f"rules missing from the deployed pack: {default - deployed}"
    shipped = Path(rules.__file__).with_name("default.yaml").read_text(encoding="utf-8")
    assert (K8S / "rules.yaml").read_text(encoding="utf-8") == shipped, (
        "deploy/kubernetes/rules.yaml drifted from server/rules/default.yaml: "
        "run `make sync-deploy`")


def test_servicemonitor_selects_the_service(objects: dict[str, dict[str, Any]]) -> None:
    sm = yaml.safe_load((K8S / "servicemonitor.yaml").read_text(encoding="utf-8"))
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["kind"] == "ServiceMonitor"
    svc = objects["Service/spikewatch"]
    for endpoint in sm["spec"]["endpoints"]:  # /metrics needs the read token
        assert endpoint["authorization"]["credentials"] == {"name": "spikewatch-auth",
                                                             "key": "read.token"}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    port_names = {p["name"] for p in svc["spec"]["ports"]}
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= port_names
    # The job label is the Service name: the rules select up{job="spikewatch"}.
    assert svc["metadata"]["name"] == "spikewatch"


# --- systemd -----------------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "spikewatch.service"


def _runnable_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointing at an existing binary (verify checks it exists)."""
    unit = tmp_path / "spikewatch.service"
    body = text if text is not None else UNIT.read_text(encoding="utf-8")
    unit.write_text(body.replace("/opt/spikewatch/bin/spikewatch", shutil.which("true") or
                                 "/bin/true"), encoding="utf-8")
    return unit


def _analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([program("systemd-analyze"), *map(str, args)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    r = _analyze("verify", _runnable_copy(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (r.stdout + r.stderr).strip()


def test_systemd_verify_reports_mistakes(tmp_path: Path) -> None:
    text = UNIT.read_text(encoding="utf-8").replace("Restart=on-failure", "Restart=sometimes")
    r = _analyze("verify", _runnable_copy(tmp_path, text))
    assert "sometimes" in r.stdout + r.stderr


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    r = _analyze("security", "--offline=yes", _runnable_copy(tmp_path))
    m = re.search(r"Overall exposure level for spikewatch.service: ([0-9.]+)", r.stdout)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout
    text = UNIT.read_text(encoding="utf-8")
    for line in ("ProtectSystem=strict", "StateDirectory=spikewatch", "Restart=on-failure",
                 "TimeoutStopSec=", "NoNewPrivileges=yes"):
        assert line in text
    assert "DynamicUser=yes" in text or "User=spikewatch" in text


def test_systemd_auth_drop_in_verifies_and_points_at_its_credentials(tmp_path: Path) -> None:
    drop_in = (DEPLOY / "systemd" / "auth.conf").read_text(encoding="utf-8")
    # a drop-in's [Service] lines apply as if appended to the unit
    unit = _runnable_copy(tmp_path, UNIT.read_text(encoding="utf-8") + "\n" + drop_in)
    r = _analyze("verify", unit)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (r.stdout + r.stderr).strip()
    credentials = dict(line.split("=", 1)[1].split(":", 1) for line in drop_in.splitlines()
                       if line.startswith("LoadCredential="))
    env = dict(line.split("=", 1)[1].split("=", 1) for line in drop_in.splitlines()
               if line.startswith("Environment="))
    assert {Path(v).name for v in env.values()} == set(credentials)
    assert {str(Path(v).parent) for v in env.values()} == {
        "/run/credentials/spikewatch.service"}
    assert set(env) == {"SPIKEWATCH_AUTH__CURVE_SECRET_KEY_FILE",
                        "SPIKEWATCH_AUTH__CURVE_ALLOWED_CLIENTS_FILE",
                        "SPIKEWATCH_AUTH__API_TOKENS_FILE"}


def _systemd_env() -> dict[str, str]:
    """KEY=VALUE lines of the example env file, quoted values unquoted as systemd does."""
    env = {}
    for line in (DEPLOY / "systemd" / "spikewatch.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            else:
                assert not set(value) & {'"', "'"}, f"{key}: systemd strips inner quotes"
            env[key] = value
    return env


def test_systemd_env_example() -> None:
    assert "EnvironmentFile=/etc/spikewatch/spikewatch.env" in UNIT.read_text()
    assert _systemd_env()["SPIKEWATCH_DB"].startswith("postgresql+psycopg://")


# --- the server reads what the deployments set -------------------------------------------------


def _compose_env() -> dict[str, str]:
    doc = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text(encoding="utf-8"))
    env: dict[str, str] = doc["services"]["spikewatch"]["environment"]
    # Compose interpolation of ${VAR:?message} with the value from env.example.
    return {k: re.sub(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", "change-me", v) for k, v in env.items()}


def _kubernetes_env() -> dict[str, str]:
    dep = yaml.safe_load((K8S / "deployment.yaml").read_text(encoding="utf-8"))
    [c] = dep["spec"]["template"]["spec"]["containers"]
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text(encoding="utf-8"))
    return {**{e["name"]: e["value"] for e in c["env"]}, **secret["stringData"]}


@pytest.mark.parametrize("environment", [_compose_env, _kubernetes_env, _systemd_env],
                         ids=["compose", "kubernetes", "systemd"])
def test_server_settings_take_the_deployment_environment(
        environment: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pytest.importorskip("spikewatch.server._settings",
                                   reason="server settings not importable")
    for key in [k for k in os.environ if k.startswith("SPIKEWATCH_")]:
        monkeypatch.delenv(key)
    env: dict[str, str] = environment()
    assert env, "no environment"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = settings.load_settings()
    assert s.db == env["SPIKEWATCH_DB"]
    assert s.db.startswith("postgresql+psycopg://")
    assert s.alertmanager_urls, "SPIKEWATCH_ALERTMANAGER_URLS not taken"
    assert all(u.startswith("http://") for u in s.alertmanager_urls)
    if "SPIKEWATCH_RULES" in env:
        assert str(s.rules) == env["SPIKEWATCH_RULES"]
    auth = {"curve_secret_key_file": "SPIKEWATCH_AUTH__CURVE_SECRET_KEY_FILE",
            "curve_allowed_clients_file": "SPIKEWATCH_AUTH__CURVE_ALLOWED_CLIENTS_FILE",
            "api_tokens_file": "SPIKEWATCH_AUTH__API_TOKENS_FILE"}
    for field, var in auth.items():
        if var in env:
            assert str(getattr(s.auth, field)) == env[var], var
    if environment is not _systemd_env:  # compose and Kubernetes ship with authentication on
        assert set(auth.values()) <= set(env)
