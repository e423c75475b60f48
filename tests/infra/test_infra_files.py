"""Static checks of the deployment files in ``infra/`` and ``.pre-commit-config.yaml``.

No Docker engine or Kubernetes cluster is needed: the files are parsed with PyYAML and checked
for internal consistency (every referenced service, variable, value and file exists), for
secrets written as literals, for health probes on ``/api/v1/health`` and for a non-root image.
When the optional ``helm_python`` engine (package ``helm-python-sdk``) is installed the chart is
also linted and rendered with Helm itself.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
EXAMPLE_ENV = INFRA / "example.env"
DOCKERFILE = INFRA / "Dockerfile"
NGINX = INFRA / "nginx.conf"
CHART = INFRA / "helm" / "myovault"
PRECOMMIT = ROOT / ".pre-commit-config.yaml"
HEALTH_PATH = "/api/v1/health"

# AWS_ACCESS_KEY_ID / MINIO_ROOT_USER are identifiers; their secret halves match "SECRET"/"PASS".
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|_PASS$|SECRET|MASTER_KEY|TOKEN)", re.I)
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")
PLACEHOLDER = "CHANGE_ME"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in EXAMPLE_ENV.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        assert sep, f"example.env line is not NAME=value: {line!r}"
        env[name] = value
    return env


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return load_yaml(CHART / "values.yaml")


def walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Yield ``(key path, leaf value)`` for every scalar in a YAML tree."""
    if isinstance(node, dict):
        for key, child in node.items():
            yield from walk(child, (*path, str(key)))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from walk(child, (*path, str(index)))
    else:
        yield path, node


# --- docker compose -------------------------------------------------------------------------


def test_compose_depends_on_only_existing_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        targets = depends if isinstance(depends, list) else list(depends)
        for target in targets:
            assert target in services, f"{name} depends on unknown service {target!r}"
            assert "profiles" not in services[target], (
                f"{name} depends on {target!r}, which only runs in a profile"
            )


def test_compose_has_the_production_topology(services: dict[str, dict[str, Any]]) -> None:
    for required in (
        "postgres",
        "redis",
        "minio",
        "minio-init",
        "migrate",
        "web",
        "worker",
        "proxy",
    ):
        assert required in services, f"missing service {required}"
    assert services["migrate"]["command"] == ["myovault", "db", "upgrade"]
    assert services["worker"]["command"] == ["myovault", "worker"]
    assert services["web"]["command"] == ["gunicorn", "repository.wsgi:app"]
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "${WEB_REPLICAS" in str(services["web"]["deploy"]["replicas"])
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    # Only the reverse proxy (and the optional DICOM receiver) are published on the host.
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published <= {"proxy", "dicom-receiver"}


def test_compose_hosts_in_urls_are_services(
    services: dict[str, dict[str, Any]], example_env: dict[str, str]
) -> None:
    host_re = re.compile(r"^[a-z][a-z0-9+]*://(?:[^@/]*@)?([A-Za-z0-9_.-]+)")
    texts = [v for v in example_env.values() if "://" in v]
    texts += [
        str(value)
        for _, service in services.items()
        for _, value in walk(service.get("environment", {}))
        if "://" in str(value)
    ]
    assert texts, "expected service URLs in example.env and compose"
    for text in texts:
        match = host_re.match(INTERPOLATION.sub(lambda m: m.group(3) or "", text))
        if match is None or text.startswith("s3://"):
            continue
        host = match.group(1)
        assert host in services, f"URL {text!r} names host {host!r}, not a compose service"
    upstream_hosts = re.findall(r"^\s*server\s+([A-Za-z0-9_.-]+):(\d+)", NGINX.read_text(), re.M)
    assert upstream_hosts == [("web", "8000")]
    assert services["web"]["expose"] == ["8000"]


def test_compose_mounted_files_and_named_volumes_exist(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (INFRA / source).is_file(), f"{name} mounts missing file {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"


def test_compose_secrets_are_interpolated_never_literal(
    services: dict[str, dict[str, Any]],
) -> None:
    checked = 0
    for name, service in services.items():
        assert "env_file" not in service, f"{name}: pass variables explicitly, not a whole env file"
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: use the mapping form of environment"
        for key, value in environment.items():
            if SECRET_NAME.search(key) or key in {"MYOVAULT_DATABASE_URL", "MYOVAULT_BROKER_URL"}:
                checked += 1
                match = INTERPOLATION.fullmatch(str(value))
                assert match, f"{name}.{key} must be ${{VAR}} from infra/.env, not a literal"
                operator, default = match.group(2), match.group(3)
                assert operator in (None, ":?", "?") or not default, (
                    f"{name}.{key} has a literal default {default!r}"
                )
    assert checked >= 10


def test_every_compose_variable_is_documented_in_example_env(
    example_env: dict[str, str],
) -> None:
    text = "\n".join(
        line for line in COMPOSE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    # $${VAR} is an escape for the container's shell, not a compose variable.
    used = {m.group(1) for m in INTERPOLATION.finditer(re.sub(r"\$\$\{", "{", text))}
    missing = sorted(used - set(example_env))
    assert not missing, f"variables used in docker-compose.yml but not in example.env: {missing}"


def test_example_env_holds_placeholders_only(example_env: dict[str, str]) -> None:
    for key, value in example_env.items():
        if SECRET_NAME.search(key):
            assert value == PLACEHOLDER, f"{key} in example.env must be {PLACEHOLDER}"
        credentials = re.search(r"://[^/@:]*:([^@]*)@", value)
        if credentials:
            assert credentials.group(1) == PLACEHOLDER, f"{key} embeds a real-looking password"


def test_real_env_file_is_gitignored() -> None:
    patterns = (INFRA / ".gitignore").read_text().splitlines()
    assert ".env" in patterns
    assert "!example.env" in patterns
    if (ROOT / ".git").exists():
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT, check=False
        ).returncode
        kept = subprocess.run(
            ["git", "check-ignore", "-q", "infra/example.env"], cwd=ROOT, check=False
        ).returncode
        assert (ignored, kept) == (0, 1)


def test_no_secret_material_anywhere_in_infra() -> None:
    base64_key = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])")
    url_password = re.compile(r"://[^/@:\s\"']+:([^@\s\"']+)@")
    for path in [*INFRA.rglob("*"), PRECOMMIT]:
        if not path.is_file() or path.name == ".env":
            continue
        text = path.read_text()
        assert "PRIVATE KEY-----" not in text, path
        assert not base64_key.search(text), f"{path} contains a base64 key-like string"
        for password in url_password.findall(text):
            assert password == PLACEHOLDER or password.startswith("$"), (
                f"{path} embeds a password in a URL"
            )


def test_compose_web_health_check_uses_health_endpoint(
    services: dict[str, dict[str, Any]],
) -> None:
    test = services["web"]["healthcheck"]["test"]
    assert any(f"127.0.0.1:8000{HEALTH_PATH}" in part for part in test)


# --- reverse proxy --------------------------------------------------------------------------


def nginx_block(text: str, header: str) -> str:
    """Body of the first ``header { ... }`` block (nested braces counted)."""
    start = text.index(header)
    depth = 0
    for index in range(text.index("{", start), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    raise AssertionError(f"unbalanced block {header}")


def test_nginx_streams_uploads_with_limits_and_timeouts() -> None:
    text = NGINX.read_text()
    uploads = nginx_block(text, "location ~ ^/(api/v1/)?uploads")
    assert "proxy_request_buffering off;" in uploads
    assert re.search(r"client_max_body_size\s+20g;", uploads)
    assert re.search(r"proxy_read_timeout\s+\d+s;", uploads)
    server = nginx_block(text, "server {")
    assert re.search(r"client_max_body_size\s+64m;", server)
    assert "proxy_request_buffering off" not in server.replace(uploads, "")
    assert "location = /api/v1/health" in text
    assert text.count("{") == text.count("}")


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_final_stage_runs_as_non_root() -> None:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    users = [rest for keyword, rest in instructions[last_from:] if keyword == "USER"]
    assert users, "final stage has no USER instruction (would run as root)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "use a numeric uid so Kubernetes can verify runAsNonRoot"
    values = load_yaml(CHART / "values.yaml")
    assert values["podSecurityContext"]["runAsUser"] == int(user)


def test_dockerfile_pins_torch_and_serves_wsgi_with_gunicorn() -> None:
    instructions = dockerfile_instructions()
    args = [rest for keyword, rest in instructions if keyword == "ARG"]
    assert "TORCH_SPEC=torch==2.13.0" in args
    assert any(rest.startswith("TORCH_INDEX_URL") for rest in args)
    assert instructions[-1] == ("CMD", '["gunicorn", "repository.wsgi:app"]')
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "--bind=0.0.0.0:8000" in env
    assert "MYOVAULT_EMBEDDED_WORKER=false" in env


# --- Helm chart -----------------------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "myovault"


def test_every_values_reference_in_templates_exists(values: dict[str, Any]) -> None:
    referenced: set[tuple[str, ...]] = set()
    for template in (CHART / "templates").iterdir():
        for ref in re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", template.read_text()):
            referenced.add(tuple(ref.strip(".").split(".")))
    assert len(referenced) > 20
    for ref in sorted(referenced):
        node: Any = values
        for part in ref:
            assert isinstance(node, dict) and part in node, f".Values.{'.'.join(ref)} not in values"
            node = node[part]


def test_chart_probes_point_at_health_endpoint(values: dict[str, Any]) -> None:
    assert values["web"]["healthPath"] == HEALTH_PATH
    text = (CHART / "templates" / "web-deployment.yaml").read_text()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        block = text[text.index(f"{probe}:") :]
        block = block[: block.index("timeoutSeconds")]
        assert "path: {{ .Values.web.healthPath }}" in block, probe
        assert "port: http" in block, probe


def test_chart_values_hold_no_secret_literals(values: dict[str, Any]) -> None:
    for path, value in walk(values):
        if path[:2] == ("secret", "keys"):
            assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", str(value)), path
            continue
        if SECRET_NAME.search("_".join(path)) and path[0] not in {"secret", "ingress"}:
            assert value in ("", None, {}, []), f"values {'.'.join(path)} holds a literal secret"
    assert values["secret"]["name"], "the chart must reference an existing Secret"


def test_chart_workloads_are_hardened(values: dict[str, Any]) -> None:
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    container = values["containerSecurityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    for workload in ("web", "worker", "migrate"):
        assert values[workload]["resources"]["requests"], workload
    migrate = (CHART / "templates" / "migrate-job.yaml").read_text()
    assert '"helm.sh/hook": pre-install,pre-upgrade' in migrate
    assert 'command: ["myovault", "db", "upgrade"]' in migrate


@pytest.fixture(scope="module")
def hooks() -> dict[str, dict[str, Any]]:
    config = load_yaml(PRECOMMIT)
    return {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}


def test_precommit_runs_offline_with_required_hooks(hooks: dict[str, dict[str, Any]]) -> None:
    config = load_yaml(PRECOMMIT)
    assert all(repo["repo"] == "local" for repo in config["repos"])
    assert hooks["check-added-large-files"]["args"] == ["--maxkb=1024"]
    for hook_id in ("check-yaml", "end-of-file-fixer", "trailing-whitespace", "detect-private-key"):
        assert hook_id in hooks
    for hook_id in ("ruff-check", "ruff-format", "mypy"):
        assert hooks[hook_id]["language"] == "system"
    assert re.search(hooks["check-yaml"]["exclude"], "infra/helm/myovault/templates/ingress.yaml")
    assert not re.search(hooks["check-yaml"]["exclude"], "infra/helm/myovault/values.yaml")


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("data/sub-01/IM0001.dcm", True),
        ("data/SCAN.DCM", True),
        ("maps/t2.nii", True),
        ("maps/t2.nii.gz", True),
        ("tests/fixtures/tiny.dcm", False),
        ("tests/fixtures/phantom.nii.gz", False),
        ("repository/nifti.py", False),
        ("docs/nii.gz.md", False),
    ],
)
def test_precommit_refuses_imaging_files_outside_fixtures(
    hooks: dict[str, dict[str, Any]], path: str, refused: bool
) -> None:
    hook = hooks["no-imaging-files"]
    assert hook["language"] == "fail"
    matched = re.search(hook["files"], path) and not re.search(hook["exclude"], path)
    assert bool(matched) is refused


def test_precommit_dicom_content_hook(hooks: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    hook = hooks["no-dicom-content"]
    script = ROOT / hook["entry"]
    assert script.is_file()
    dicom = tmp_path / "IM0001"
    dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    other = tmp_path / "image.bin"
    other.write_bytes(b"\0" * 256)
    short = tmp_path / "short"
    short.write_bytes(b"DICM")
    result = subprocess.run(
        [sys.executable, str(script), str(dicom), str(other), str(short)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert str(dicom) in result.stdout
    assert str(other) not in result.stdout and str(short) not in result.stdout
    clean = subprocess.run(
        [sys.executable, str(script), str(other)], capture_output=True, text=True, check=False
    )
    assert clean.returncode == 0
