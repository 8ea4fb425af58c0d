"""The deployment files: Dockerfile, .dockerignore, docker-compose.yml and deploy/k8s/.

Nothing here needs a Docker engine or a Kubernetes cluster. The Compose file is checked
against the Compose specification (check-jsonschema) and every Kubernetes object against
Kubernetes' own schemas (kubernetes-validate, offline); the rest checks what no schema
knows: that each role runs a command Caredeck has, as a non-root user, with no secret in
the files, and that the files agree with each other.

The overlay is rendered by ``render`` below, a small kustomize that knows only the
fields our kustomizations use and refuses any other, so that a new field fails here
instead of being ignored.
"""

import configparser
import copy
import fnmatch
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core import health
from core.config import CORE_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
GUNICORN_CONFIG = ROOT / "deploy" / "gunicorn.conf.py"
K8S_BASE = ROOT / "deploy" / "k8s" / "base"
K8S_OVERLAY = ROOT / "deploy" / "k8s" / "overlays" / "example"
SECRET_EXAMPLE = K8S_BASE / "secret.example.yaml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

KUBERNETES_VERSION = "1.30.0"
IMAGE = "caredeck"  # the image's name in the base manifests; an overlay sets registry and tag
SECRET_NAME = "caredeck-secrets"
GUNICORN_CONFIG_IN_IMAGE = "/etc/caredeck/gunicorn.conf.py"
SITE_PACKAGES_IN_IMAGE = "/opt/venv/lib/python3.11/site-packages/"
# The long-running roles: a Compose service and a Kubernetes Deployment each.
ROLES = ("web", "worker", "consumer", "publisher", "scheduler")
# One replica, strategy Recreate, no PodDisruptionBudget (deploy/k8s/base/scheduler.yaml).
SINGLE_ROLES = ("scheduler",)
# The roles that serve HTTP: gunicorn, probed at /healthz and /readyz, behind a Service.
HTTP_ROLES = ("web", "publisher")
# The publisher's HTTP face: the web app with only the plugin whose endpoint it serves.
PUBLISHER_PLUGINS = "medications"
PUBLISHER_ENDPOINT = "/api/medication-events"
PUBLISHER_COMPOSE_PORT = "127.0.0.1:8001:8000"
HEARTBEAT_OPTION = "--heartbeat-file"

SECRET_SETTINGS = {setting.env_name for setting in CORE_SETTINGS if setting.secret}
SECRET_LOOKING_NAME = re.compile(r"PASS|SECRET|TOKEN|PRIVATE|CREDENTIAL|_KEY$")


def _tool(name: str) -> str:
    """An installed command-line tool, next to this Python first (the virtualenv)."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed; run pip install -e '.[test]'"
    return found


# A kustomize for our kustomizations ------------------------------------------------------

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "replicas"}
KUSTOMIZATION_FIELDS |= {"patches"}
SCALABLE_KINDS = {"Deployment", "StatefulSet", "ReplicaSet"}


def render(directory: Path) -> list[dict]:
    """The objects ``kubectl kustomize directory`` gives, for the fields we use."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, (
        f"{directory / 'kustomization.yaml'} uses {sorted(unknown)}, which render() in "
        "tests/test_deploy.py does not implement; add it there."
    )
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(render(path))
        else:
            objects.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"target", "patch"}, f"only inline JSON 6902 patches: {patch}"
        targets = [obj for obj in objects if _selected(obj, patch["target"])]
        assert len(targets) == 1, f"patch target {patch['target']} matches {len(targets)}"
        for operation in yaml.safe_load(patch["patch"]):
            _json_patch(targets[0], operation)
    for replicas in kustomization.get("replicas", []):
        targets = [
            obj
            for obj in objects
            if obj["kind"] in SCALABLE_KINDS and obj["metadata"]["name"] == replicas["name"]
        ]
        assert targets, f"replicas: nothing is named {replicas['name']}"
        for obj in targets:
            obj["spec"]["replicas"] = replicas["count"]
    for image in kustomization.get("images", []):
        for container in (c for obj in objects for c in containers(obj)):
            if _image_name(container["image"]) == image["name"]:
                name = image.get("newName", image["name"])
                tag = image.get("newTag", _image_tag(container["image"]))
                container["image"] = f"{name}:{tag}" if tag else name
    if "namespace" in kustomization:
        for obj in objects:
            obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


def _selected(obj: dict, target: dict) -> bool:
    assert set(target) <= {"kind", "name"}, f"target by kind and name only: {target}"
    return all(
        obj["kind"] == target["kind"] if key == "kind" else obj["metadata"]["name"] == value
        for key, value in target.items()
    )


def _json_patch(document: dict, operation: dict) -> None:
    """One RFC 6902 operation: add, replace or remove."""
    *parents, last = [
        part.replace("~1", "/").replace("~0", "~") for part in operation["path"].split("/")[1:]
    ]
    node = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, operation["value"])
        elif op == "replace":
            node[index] = operation["value"]
        elif op == "remove":
            del node[index]
        else:
            raise AssertionError(f"unsupported patch operation {op}")
    elif op in {"add", "replace"}:
        assert op == "add" or last in node, f"replace of a missing {operation['path']}"
        node[last] = operation["value"]
    elif op == "remove":
        del node[last]
    else:
        raise AssertionError(f"unsupported patch operation {op}")


def _image_name(image: str) -> str:
    image = image.split("@")[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > slash else image


def _image_tag(image: str) -> str | None:
    image = image.split("@")[0]
    colon = image.rfind(":")
    return image[colon + 1 :] if colon > image.rfind("/") else None


def pod_spec(obj: dict) -> dict | None:
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        return obj["spec"]["template"]["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def pod_labels(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    return obj["spec"]["template"]["metadata"]["labels"]


def containers(obj: dict) -> list[dict]:
    spec = pod_spec(obj)
    if spec is None:
        return []
    return spec.get("initContainers", []) + spec.get("containers", [])


def find(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render(K8S_BASE)


@pytest.fixture(scope="module")
def overlay() -> list[dict]:
    return render(K8S_OVERLAY)


# Files read once -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def app_services(compose: dict) -> dict[str, dict]:
    """The Compose services that run the Caredeck image."""
    return {
        name: service
        for name, service in compose["services"].items()
        if "build" in service or _image_name(service.get("image", "")).endswith(IMAGE)
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            result.append((instruction.upper(), arguments.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def dockerfile_arg_defaults() -> dict[str, str]:
    defaults = {}
    for name, arguments in dockerfile_instructions():
        if name == "ARG" and "=" in arguments:
            key, _, value = arguments.partition("=")
            defaults[key] = value.strip('"')
    return defaults


def read_setup_cfg() -> configparser.ConfigParser:
    setup = configparser.ConfigParser(interpolation=None)
    setup.optionxform = str
    setup.read(ROOT / "setup.cfg")
    return setup


def gunicorn_settings() -> dict:
    return runpy.run_path(str(GUNICORN_CONFIG))


@pytest.fixture(scope="module")
def command_tree(tmp_path_factory) -> dict:
    """Every ``caredeck`` command (plugins' included) with its options and arguments,
    read from the click group of a freshly created app."""
    script = """
import json
import click
from core.cli import cli

def walk(ctx, group):
    tree = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        entry = {
            "options": sorted(
                opt
                for param in command.params
                if isinstance(param, click.Option)
                for opt in param.opts + param.secondary_opts
            ) + ["--help"],
            "arguments": [p.name for p in command.params if isinstance(p, click.Argument)],
        }
        if isinstance(command, click.Group):
            entry["commands"] = walk(click.Context(command, parent=ctx, info_name=name), command)
        tree[name] = entry
    return tree

with cli.make_context("caredeck", [], resilient_parsing=True) as ctx:
    ctx.obj.load_app()  # raises if the app cannot start (list_commands would hide it)
    print(json.dumps(walk(ctx, cli)))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDECK_")}
    env["CAREDECK_INSTANCE_PATH"] = str(tmp_path_factory.mktemp("instance"))
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def role_commands(compose: dict, objects: list[dict]) -> list[tuple[str, list[str]]]:
    """``(where, argv)`` for every command that runs the Caredeck image."""
    found = []
    for instruction, arguments in final_stage():
        if instruction == "CMD":
            found.append(("Dockerfile CMD", json.loads(arguments)))
    for name, service in app_services(compose).items():
        command = service.get("command")
        assert isinstance(command, list), f"compose service {name}: give command as a list"
        found.append((f"compose service {name}", command))
    for obj in objects:
        for container in containers(obj):
            if _image_name(container["image"]).endswith(IMAGE):
                assert "command" in container, f"{obj['metadata']['name']}: no command"
                where = f"{obj['kind']} {obj['metadata']['name']}"
                found.append((where, container["command"] + container.get("args", [])))
    return found


# Schemas -------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification():
    done = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_objects_follow_the_kubernetes_schemas(base, overlay, tmp_path):
    files = {"base.yaml": base, "overlay-example.yaml": overlay}
    files["secret.example.yaml"] = list(yaml.safe_load_all(SECRET_EXAMPLE.read_text()))
    for name, objects in files.items():
        (tmp_path / name).write_text(yaml.safe_dump_all(objects))
    done = subprocess.run(
        [_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION]
        + [str(tmp_path / name) for name in files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # An unknown kind or apiVersion is only a warning there ("Couldn't find schema").
    assert "WARN" not in output and "ERROR" not in output, output
    assert output.count("passed for resource") == sum(len(o) for o in files.values()), output


def test_the_base_kustomization_lists_every_manifest_but_the_secret_example():
    kustomization = yaml.safe_load((K8S_BASE / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S_BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - {SECRET_EXAMPLE.name}
    for directory in (K8S_BASE, K8S_OVERLAY):
        listed = yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]
        assert not any("secret" in entry for entry in listed), (directory, listed)


# Roles and their commands --------------------------------------------------------------


def test_every_role_runs_a_real_caredeck_command_or_gunicorn_wsgi_app(
    compose, base, overlay, command_tree
):
    commands = role_commands(compose, base + overlay)
    assert commands
    for where, argv in commands:
        if argv[0] == "gunicorn":
            assert argv == ["gunicorn", "--config", GUNICORN_CONFIG_IN_IMAGE, "wsgi:app"], where
            continue
        assert argv[0] == "caredeck", f"{where}: {argv} is neither caredeck nor gunicorn"
        node, path = {"commands": command_tree}, []
        for token in argv[1:]:
            if token.startswith("-") or token not in node.get("commands", {}):
                break
            node, path = node["commands"][token], path + [token]
        assert path, f"{where}: `caredeck {argv[1]}` does not exist"
        assert "commands" not in node, f"{where}: `caredeck {' '.join(path)}` needs a subcommand"
        rest = argv[1 + len(path) :]
        for token in rest:
            if token.startswith("--"):
                option = token.split("=")[0]
                command = " ".join(path)
                assert option in node["options"], f"{where}: `caredeck {command}` has no {option}"


def test_wsgi_app_and_the_gunicorn_config_are_in_the_image():
    assert "app = create_app()" in (ROOT / "wsgi.py").read_text()
    setup = read_setup_cfg()
    assert "wsgi" in setup["options"]["py_modules"].split()  # installed, not only copied
    copies = [a for name, a in final_stage() if name == "COPY"]
    assert f"deploy/gunicorn.conf.py {GUNICORN_CONFIG_IN_IMAGE}" in copies
    settings = gunicorn_settings()
    assert settings["bind"] == "0.0.0.0:8000"
    assert settings["workers"] >= 1 and settings["threads"] >= 1
    assert settings["accesslog"] is None  # Caredeck logs each request itself


def test_files_a_role_reads_from_the_package_are_shipped(compose, overlay):
    # The venv's path in the image: the runtime's Python version and `python -m venv /opt/venv`.
    assert dockerfile_arg_defaults()["PYTHON_IMAGE"] == "python:3.11-slim"
    assert any("python -m venv /opt/venv" in a for name, a in final_stage() if name == "RUN")
    setup = read_setup_cfg()
    package_data = {
        package.strip(): [pattern.strip() for pattern in patterns.split(",")]
        for package, patterns in setup["options.package_data"].items()
    }
    paths = [
        token.removeprefix(SITE_PACKAGES_IN_IMAGE)
        for _, argv in role_commands(compose, overlay)
        for token in argv
        if token.startswith(SITE_PACKAGES_IN_IMAGE)
    ]
    assert paths, "the publisher should read the sample file shipped in the package"
    for path in paths:
        assert (ROOT / path).exists(), f"{path} is not in the repository"
        parts = Path(path).parts
        shipped = any(
            fnmatch.fnmatch("/".join(parts[i:]), pattern)
            for i in range(1, len(parts))
            for pattern in package_data.get(".".join(parts[:i]), [])
        )
        assert shipped, f"{path} is not in setup.cfg [options.package_data], so not in the wheel"


def test_compose_runs_every_role_after_the_migrations(compose):
    services = app_services(compose)
    assert {"migrate", *ROLES, "publish-sample"} <= set(services)
    assert services["migrate"]["command"] == ["caredeck", "db", "upgrade"]
    assert services["publish-sample"]["command"][:2] == ["caredeck", "publish"]
    for name in ("migrate", "publish-sample"):
        assert services[name]["restart"] == "no", name
    for name in ROLES:
        assert services[name]["restart"] == "unless-stopped", name
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name
    assert "minio-setup" in compose["services"]
    assert compose["services"]["rabbitmq"]["image"].endswith("-management")
    for name in ("postgres", "redis", "rabbitmq", "mailpit", "minio"):
        assert name in compose["services"], name


def test_compose_waits_for_healthy_servers_and_keeps_data_in_named_volumes(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                check = services[dependency].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in compose["volumes"], f"{name}: {source} is not a named volume"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    for name in ("postgres", "redis", "rabbitmq", "mailpit", "minio"):
        assert services[name]["volumes"], f"{name} keeps its data in no volume"


# Non-root, no secrets ------------------------------------------------------------------


def test_the_image_runs_as_an_unprivileged_user(compose, base, overlay):
    users = [arguments for name, arguments in final_stage() if name == "USER"]
    assert users, "the runtime stage sets no USER, so it runs as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, "a numeric, non-zero uid (runAsNonRoot checks it)"
    assert any(f"--uid {uid}" in a for name, a in final_stage() if name == "RUN")
    for name, service in app_services(compose).items():
        assert "user" not in service, f"compose service {name} overrides the image's user"
    for obj in base + overlay:
        spec = pod_spec(obj)
        if spec is None:
            continue
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == int(uid), where
        assert spec["securityContext"]["runAsGroup"] == int(gid or uid), where
        for container in containers(obj):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where


def test_no_secret_value_is_committed(compose, base, overlay):
    # Dockerfile: no secret is baked into the image.
    for name, arguments in dockerfile_instructions():
        if name in {"ENV", "ARG"}:
            for key in re.findall(r"([A-Z_][A-Z0-9_]*)=", arguments):
                assert not SECRET_LOOKING_NAME.search(key), f"Dockerfile {name} {key}"
                assert key not in SECRET_SETTINGS, f"Dockerfile {name} {key}"
    # Kubernetes: secret settings come from the Secret, which is not applied from here.
    for obj in base + overlay:
        assert obj["kind"] != "Secret", f"Secret {obj['metadata']['name']} in a kustomization"
        if obj["kind"] == "ConfigMap":
            leaked = (set(obj["data"]) & SECRET_SETTINGS) | {
                key for key in obj["data"] if SECRET_LOOKING_NAME.search(key)
            }
            assert not leaked, f"ConfigMap {obj['metadata']['name']} holds {sorted(leaked)}"
        for container in containers(obj):
            for variable in container.get("env", []):
                secretish = variable["name"] in SECRET_SETTINGS or SECRET_LOOKING_NAME.search(
                    variable["name"]
                )
                assert not (secretish and "value" in variable), variable["name"]
            refs = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
            assert refs == [SECRET_NAME], obj["metadata"]["name"]
    # The example Secret: every secret setting, placeholders only.
    (example,) = yaml.safe_load_all(SECRET_EXAMPLE.read_text())
    assert example["metadata"]["name"] == SECRET_NAME
    assert set(example["stringData"]) == SECRET_SETTINGS
    for key, value in example["stringData"].items():
        assert "CHANGE-ME" in value, f"{SECRET_EXAMPLE.name}: {key} is not a placeholder"
    # Compose: every password and the secret key is a ${VARIABLE:-dev default}.
    interpolation = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:-[^}]*)?\}$")
    # scheme://user:password@host, where user and password may be ${...} themselves.
    url_password = re.compile(r"^[a-z][a-z0-9+.-]*://(?:\$\{[^}]*\}|[^:@/]*):([^@/]*)@")
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            value = str(value)
            if "://" in value:
                password = url_password.match(value)
                if password:
                    assert interpolation.match(password.group(1)), f"{name}: password in {key}"
            elif key in SECRET_SETTINGS or SECRET_LOOKING_NAME.search(key):
                assert interpolation.match(value), f"{name}: {key} is written into the file"
    secret_key = str(compose["services"]["web"]["environment"]["CAREDECK_SECRET_KEY"])
    assert secret_key.startswith("${CAREDECK_SECRET_KEY:-dev-only-"), secret_key
    # No environment file with values next to the deployment files.
    for path in (ROOT / "deploy").rglob("*"):
        assert not (path.name == ".env" or path.suffix == ".env"), path


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (last matching rule wins;
    a rule that matches a parent folder matches what is inside it)."""

    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!").strip("/"))
        if any(compiled.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_secrets_and_local_data_out_of_the_build():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in (
        ".env",
        "deploy/.env",
        ".git/config",
        ".venv/bin/python",
        "instance/secret_key",
        "instance/caredeck.db",
        "core/__pycache__/app.cpython-311.pyc",
        "tests/test_api.py",
        "bench/results.md",
        "deploy/k8s/base/secret.example.yaml",
    ):
        assert _dockerignored(path, patterns), f"{path} would be sent to the Docker build"
    sources = [
        arguments.split()[:-1]
        for name, arguments in dockerfile_instructions()
        if name == "COPY" and "--from" not in arguments
    ]
    for source in [s for group in sources for s in group] + ["core/app.py", "static/caredeck.css"]:
        assert not _dockerignored(source, patterns), f"{source} is needed by the build"


# Health --------------------------------------------------------------------------------


def test_dockerfile_builds_in_stages_and_checks_health_without_curl():
    instructions = dockerfile_instructions()
    stages = [arguments for name, arguments in instructions if name == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith(" AS builder"), stages
    runtime_installs = [a for name, a in final_stage() if name == "RUN" and "pip install" in a]
    assert runtime_installs and all("--no-index" in a for a in runtime_installs)
    checks = [arguments for name, arguments in final_stage() if name == "HEALTHCHECK"]
    assert len(checks) == 1
    command = json.loads(checks[0].split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"]
    port = gunicorn_settings()["bind"].rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{port}/healthz" in command[2]
    for name, arguments in instructions:  # comments may mention them
        assert not re.search(r"\b(curl|wget)\b", arguments), f"{name} {arguments}"


def test_compose_checks_http_roles_at_healthz_and_no_other_role_over_http(compose):
    services = app_services(compose)
    port = gunicorn_settings()["bind"].rsplit(":", 1)[1]
    for name in HTTP_ROLES:
        check = services[name]["healthcheck"]["test"]
        assert check[:3] == ["CMD", "python", "-c"], name
        assert f"http://127.0.0.1:{port}/healthz" in check[3], name
    for name, service in services.items():
        if name not in {*HTTP_ROLES, "consumer"}:
            assert service["healthcheck"] == {"disable": True}, name


def heartbeat_file(argv: list[str]) -> str:
    """The file a command line's ``--heartbeat-file`` names."""
    for i, token in enumerate(argv):
        if token == HEARTBEAT_OPTION:
            return argv[i + 1]
        if token.startswith(f"{HEARTBEAT_OPTION}="):
            return token.split("=", 1)[1]
    raise AssertionError(f"{argv} has no {HEARTBEAT_OPTION}")


def _probe_passes(command: list[str], file: str, beat_age: float | None, tmp_path) -> bool:
    """Run a probe's command here, against a stand-in for ``file`` last touched
    ``beat_age`` seconds ago (``None``: no file), with this virtualenv's Python."""
    stand_in = tmp_path / "heartbeat"
    stand_in.unlink(missing_ok=True)
    if beat_age is not None:
        stand_in.touch()
        then = time.time() - beat_age
        os.utime(stand_in, (then, then))
    # The exec form, no shell: the image's Python runs it, and an argument is an argument.
    assert command[:3] == ["python", "-m", "core.heartbeat"], command
    argv = [sys.executable, *command[1:]]
    argv = [str(stand_in) if token == file else token for token in argv]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode in {0, 1}, (command, done.stderr)
    return done.returncode == 0


def test_compose_checks_the_consumer_by_its_heartbeat_file(compose, tmp_path):
    consumer = app_services(compose)["consumer"]
    file = heartbeat_file(consumer["command"])
    check = consumer["healthcheck"]
    assert check["test"][0] == "CMD" and file in check["test"], check
    command = check["test"][1:]
    # Healthy while the consumer beats (every 5 s), unhealthy soon after it stops.
    assert _probe_passes(command, file, 1, tmp_path)
    assert not _probe_passes(command, file, None, tmp_path)
    assert not _probe_passes(command, file, 120, tmp_path)


def test_kubernetes_probes_the_consumer_by_its_heartbeat_file(base, overlay, tmp_path):
    for objects in (base, overlay):
        deployment = find(objects, "Deployment", "caredeck-consumer")
        (container,) = containers(deployment)
        file = heartbeat_file(container["command"] + container.get("args", []))
        # The file must be writable: a folder of its own unless the root file system is.
        if container["securityContext"].get("readOnlyRootFilesystem"):
            empty_dirs = {v["name"] for v in pod_spec(deployment)["volumes"] if "emptyDir" in v}
            mounts = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
            assert str(Path(file).parent) in mounts, f"{file} is on the read-only root"
        probes = {kind: container[kind] for kind in ("readinessProbe", "livenessProbe")}
        for kind, probe in probes.items():
            command = probe["exec"]["command"]
            assert any(file in token for token in command), (kind, command)
            # A Python start on a throttled CPU can take longer than the default 1 s.
            assert probe["timeoutSeconds"] >= 3, kind
        readiness = probes["readinessProbe"]["exec"]["command"]
        liveness = probes["livenessProbe"]["exec"]["command"]
        # Ready while connected and consuming; not while disconnected (no file) or stuck.
        assert _probe_passes(readiness, file, 1, tmp_path)
        assert not _probe_passes(readiness, file, None, tmp_path)
        assert not _probe_passes(readiness, file, 120, tmp_path)
        # Restarted when stuck while connected (the file is no longer touched), never for
        # being disconnected (no file), or a RabbitMQ outage would restart them all.
        assert _probe_passes(liveness, file, 1, tmp_path)
        assert _probe_passes(liveness, file, None, tmp_path)
        assert _probe_passes(liveness, file, 120, tmp_path)
        assert not _probe_passes(liveness, file, 3600, tmp_path)


@pytest.mark.parametrize("role", HTTP_ROLES)
def test_kubernetes_http_roles_probe_healthz_and_readyz(base, role):
    deployment = find(base, "Deployment", f"caredeck-{role}")
    (container,) = containers(deployment)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": int(gunicorn_settings()["bind"].rsplit(":", 1)[1])}
    probes = {kind: container[kind] for kind in ("startupProbe", "livenessProbe")}
    for kind, probe in probes.items():
        assert probe["httpGet"] == {"path": "/healthz", "port": "http"}, kind
    readiness = container["readinessProbe"]
    assert readiness["httpGet"] == {"path": "/readyz", "port": "http"}
    # /readyz may take up to one backend timeout itself (checks run side by side).
    assert readiness["timeoutSeconds"] > health.CHECK_TIMEOUT_SECONDS
    # gunicorn stops within its graceful_timeout, after the preStop pause.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert grace >= gunicorn_settings()["graceful_timeout"] + pause


def test_roles_without_http_have_no_http_probes(base):
    http = {f"caredeck-{role}" for role in HTTP_ROLES}
    for obj in base:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] not in http:
            for c in containers(obj):
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert "httpGet" not in c.get(probe, {}), f"{obj['metadata']['name']}: no HTTP"


# The Kubernetes objects agree with each other ------------------------------------------


def test_kubernetes_objects_refer_to_each_other_correctly(base, overlay):
    for objects in (base, overlay):
        deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
        assert set(deployments) == {f"caredeck-{role}" for role in ROLES}
        pods = {
            name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()
        }
        for name, deployment in deployments.items():
            selector = deployment["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pods[name].items(), name
        # Every pod template, Jobs' and CronJobs' too: a selector must pick one role only.
        all_pods = {
            f"{o['kind']} {o['metadata']['name']}": pod_labels(o)
            for o in objects
            if pod_spec(o) is not None
        }
        for role in HTTP_ROLES:
            name = f"caredeck-{role}"
            service = find(objects, "Service", name)
            assert service["spec"].get("type", "ClusterIP") == "ClusterIP", name
            selector = service["spec"]["selector"]
            matching = [n for n, pod in all_pods.items() if selector.items() <= pod.items()]
            assert matching == [f"Deployment {name}"], (name, matching)
            (container,) = containers(deployments[name])
            port_names = {port["name"] for port in container["ports"]}
            (service_port,) = service["spec"]["ports"]
            assert service_port["targetPort"] in port_names, name
        service_port = find(objects, "Service", "caredeck-web")["spec"]["ports"][0]
        # The Ingress is web's; the publisher is reached inside the cluster (its Service).
        assert [o["metadata"]["name"] for o in objects if o["kind"] == "Ingress"] == [
            "caredeck-web"
        ]
        ingress = find(objects, "Ingress", "caredeck-web")
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"] == {
                    "name": "caredeck-web",
                    "port": {"name": service_port["name"]},
                }
        tls_hosts = {h for tls in ingress["spec"]["tls"] for h in tls["hosts"]}
        assert tls_hosts == {rule["host"] for rule in ingress["spec"]["rules"]}
        scaled = set()
        for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
            target = hpa["spec"]["scaleTargetRef"]["name"]
            assert target in deployments, target
            # The autoscaler owns the count; a count in the Deployment resets it on apply.
            assert "replicas" not in deployments[target]["spec"], target
            assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
            scaled.add(target)
        assert scaled == {"caredeck-web", "caredeck-worker", "caredeck-publisher"}
        budgeted = set()
        for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
            labels = pdb["spec"]["selector"]["matchLabels"]
            matching = [n for n, pod in all_pods.items() if labels.items() <= pod.items()]
            assert len(matching) == 1, (pdb["metadata"]["name"], matching)
            assert matching[0].startswith("Deployment "), (pdb["metadata"]["name"], matching)
            budgeted.add(matching[0].removeprefix("Deployment "))
        assert budgeted == {f"caredeck-{role}" for role in ROLES if role not in SINGLE_ROLES}
        for role in SINGLE_ROLES:
            spec = deployments[f"caredeck-{role}"]["spec"]
            assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}, role
        migrate = find(objects, "Job", "caredeck-migrate")
        assert containers(migrate)[0]["command"] == ["caredeck", "db", "upgrade"]
        for obj in objects:
            for container in containers(obj):
                resources = container["resources"]
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources[bound]), obj["metadata"]["name"]
                refs = {e.get("configMapRef", {}).get("name") for e in container["envFrom"]}
                assert "caredeck-config" in refs, obj["metadata"]["name"]
        configmap = find(objects, "ConfigMap", "caredeck-config")
        assert all(isinstance(value, str) for value in configmap["data"].values())


# The publisher's HTTP face ---------------------------------------------------------------


def _env(container: dict) -> dict[str, str]:
    return {variable["name"]: variable["value"] for variable in container.get("env", [])}


def test_the_publisher_runs_the_web_app_with_only_its_plugin(compose, base, overlay):
    for objects in (base, overlay):
        web = find(objects, "Deployment", "caredeck-web")
        publisher = find(objects, "Deployment", "caredeck-publisher")
        (web_container,) = containers(web)
        (container,) = containers(publisher)
        assert container["command"] == web_container["command"]
        assert container["image"] == web_container["image"]
        env = _env(container)
        assert env["CAREDECK_PLUGINS"] == PUBLISHER_PLUGINS
        # No proxy in front of its ClusterIP Service: X-Forwarded-For is not believed.
        assert env["CAREDECK_TRUSTED_PROXIES"] == "0"
        # The same hardening as web: pod and container security, read-only root, volumes.
        assert pod_spec(publisher)["securityContext"] == pod_spec(web)["securityContext"]
        assert container["securityContext"] == web_container["securityContext"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["volumeMounts"] == web_container["volumeMounts"]
        assert pod_spec(publisher)["volumes"] == pod_spec(web)["volumes"]
        assert pod_spec(publisher)["automountServiceAccountToken"] is False
        assert container["envFrom"] == web_container["envFrom"]
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    services = app_services(compose)
    publisher, web = services["publisher"], services["web"]
    assert publisher["command"] == web["command"]
    assert publisher["environment"]["CAREDECK_PLUGINS"] == PUBLISHER_PLUGINS
    others = {k: v for k, v in publisher["environment"].items() if k != "CAREDECK_PLUGINS"}
    assert others == {k: v for k, v in web["environment"].items() if k != "CAREDECK_PLUGINS"}
    assert publisher["ports"] == [PUBLISHER_COMPOSE_PORT]
    assert publisher["restart"] == "unless-stopped"
    assert publisher["depends_on"]["rabbitmq"] == {"condition": "service_healthy"}


def _app_routes(settings: dict[str, str], instance: Path) -> dict:
    """The plugins and URL rules of an app created with these ``CAREDECK_*`` settings."""
    script = """
import json
from core.app import create_app

app = create_app()
print(json.dumps({
    "plugins": sorted(app.extensions["caredeck"].plugins),
    "rules": sorted({rule.rule for rule in app.url_map.iter_rules()}),
}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREDECK_")}
    env |= settings | {"CAREDECK_INSTANCE_PATH": str(instance)}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_publisher_settings_make_an_app_with_the_endpoint_and_no_other_plugin(base, tmp_path):
    """The publisher Deployment's settings (the ConfigMap, then its own env) give an app
    that serves the health checks, auth and the medication events, and no other plugin."""
    configmap = find(base, "ConfigMap", "caredeck-config")["data"]
    (container,) = containers(find(base, "Deployment", "caredeck-publisher"))
    settings = {k: v for k, v in (configmap | _env(container)).items() if k.startswith("CAREDECK_")}
    publisher = _app_routes(settings, tmp_path / "publisher")
    assert publisher["plugins"] == [PUBLISHER_PLUGINS]
    for rule in ("/healthz", "/readyz", "/api/auth/token", PUBLISHER_ENDPOINT):
        assert rule in publisher["rules"], rule
    # The web role (every plugin) serves more: what the other plugins add.
    everything = _app_routes(settings | {"CAREDECK_PLUGINS": "*"}, tmp_path / "web")
    assert set(publisher["rules"]) < set(everything["rules"])
    assert len(everything["plugins"]) > 1


def test_the_example_overlay_sets_image_host_namespace_and_replicas(overlay):
    images = {c["image"] for obj in overlay for c in containers(obj)}
    assert images == {"registry.example.org/caredeck:0.1.0"}
    assert {obj["metadata"].get("namespace") for obj in overlay} == {"caredeck"}
    ingress = find(overlay, "Ingress", "caredeck-web")
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == ["caredeck.hospital.example"]
    assert find(overlay, "Deployment", "caredeck-consumer")["spec"]["replicas"] == 2
    assert find(overlay, "HorizontalPodAutoscaler", "caredeck-web")["spec"]["minReplicas"] == 3
    publisher = find(overlay, "CronJob", "caredeck-publish-sample-events")
    assert publisher["spec"]["suspend"] is True  # applying the overlay publishes nothing
    assert containers(publisher)[0]["command"][:2] == ["caredeck", "publish"]


def test_render_applies_patches_like_kustomize():
    document = {"spec": {"rules": [{"host": "a"}], "tls": [{"hosts": ["a"]}]}, "metadata": {}}
    original = copy.deepcopy(document)
    for operation in (
        {"op": "replace", "path": "/spec/rules/0/host", "value": "b"},
        {"op": "add", "path": "/spec/tls/0/hosts/-", "value": "c"},
        {"op": "add", "path": "/metadata/annotations", "value": {"x/y": "1"}},
        {"op": "remove", "path": "/spec/tls/0/hosts/0"},
    ):
        _json_patch(document, operation)
    assert document == {
        "spec": {"rules": [{"host": "b"}], "tls": [{"hosts": ["c"]}]},
        "metadata": {"annotations": {"x/y": "1"}},
    }
    assert original != document
    with pytest.raises(AssertionError):
        _json_patch(document, {"op": "replace", "path": "/spec/missing", "value": 1})
    assert (
        _image_name("registry.example.org:5000/caredeck:1.0")
        == "registry.example.org:5000/caredeck"
    )
    assert _image_tag("registry.example.org:5000/caredeck") is None


# Documentation -------------------------------------------------------------------------


def test_operations_guide_covers_every_setting_and_role():
    text = OPERATIONS_DOC.read_text()
    for setting in CORE_SETTINGS:
        assert f"`{setting.env_name}`" in text, f"docs/operations.md omits {setting.env_name}"
    for command in (
        "gunicorn",
        "caredeck db upgrade",
        "caredeck worker",
        "caredeck consume",
        "caredeck publish",
        f"CAREDECK_PLUGINS={PUBLISHER_PLUGINS}",
        "core.heartbeat --missing-ok",
    ):
        assert command in text, command
    for name in ("caredeck-publisher", "`publisher`", "`publish-sample`"):
        assert name in text, name
    assert "test ! -e" not in text  # the probes run core.heartbeat directly, no shell
