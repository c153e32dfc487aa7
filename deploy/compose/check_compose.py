"""What the compose specification's schema cannot see in compose.yaml: that it runs this system
as the README configures it. Run by deploy/compose/check with the project venv's Python (ruamel
comes with check-jsonschema); prints one line per failed rule and exits 1 if any failed.

Rules: service env names are in the README's configuration table; every service runs as its
own NATS user and only provisioning has the admin's password; each provision-X step runs
`X provision` with X's settings; probes hit /readyz on the port the service listens on; the
dependencies exist with the right conditions; stop_grace_period exceeds the drain times; every
interpolated variable is in .env.example or has a default; third-party images are pinned; nginx
gets exactly the template's variables and upstreams that exist; NATS nodes get every password
auth.conf and their configs read; mounted files exist.
"""

import re
import sys
from pathlib import Path

from ruamel.yaml import YAML

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
COMPOSE = HERE / "compose.yaml"
ENV_EXAMPLE = HERE / ".env.example"
README = ROOT / "README.md"
TEMPLATE = ROOT / "deploy" / "nginx" / "downloads.conf.template"
AUTH_CONF = ROOT / "nats" / "auth.conf"

# Read by the services although the configuration table does not list it (none: the table
# lists every variable compose sets).
NOT_IN_TABLE_BUT_READ: set[str] = set()
# The binaries of the image and the NATS user each one runs as.
SERVICE_USERS = {"intake": "intake", "processor": "processor", "notifier": "notifier", "presigner": "presigner"}
# Ports the probes must use: PORT for the HTTP services, METRICS_PORT for the others.
PORT_VARIABLE = {"intake": "PORT", "notifier": "PORT", "processor": "METRICS_PORT", "presigner": "METRICS_PORT"}
# What a service may still be doing after SIGTERM: running jobs (SHUTDOWN_GRACE_SECONDS, 30) or
# an in-flight request (REQUEST_TIMEOUT_MS, 30 s).
DRAIN_SECONDS = {"intake": 30, "processor": 30, "notifier": 0, "presigner": 0}

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)


def seconds(duration: str) -> float:
    """A Compose duration (`45s`, `1m30s`, `1h`) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    if not parts:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(float(number) * units[unit] for number, unit in parts)


def table_variables() -> set[str]:
    """Every variable named in the first column of the README's configuration table."""
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_column = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)", first_column))
    return names


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def binary_of(service: dict) -> str | None:
    """Which of the image's binaries a service runs (None for third-party images)."""
    if "build" not in service:
        return None
    command = service.get("entrypoint") or service.get("command") or []
    return command[0] if command else None


def main() -> int:
    # An other compose file (a mutated copy, in a test of these rules) may be given.
    raw = (Path(sys.argv[1]) if len(sys.argv) > 1 else COMPOSE).read_text()
    compose = YAML(typ="safe").load(raw)
    services: dict[str, dict] = compose["services"]
    table = table_variables()
    example = env_example()

    # Interpolation: `${VAR}`, `${VAR:-default}`, `${VAR:?error}`; `$$` is a literal dollar.
    for match in re.finditer(r"(?<!\$)\$\{([A-Z][A-Z0-9_]*)(:?[-?])?", raw):
        name, operator = match.group(1), match.group(2)
        if name not in example and operator not in (":-", "-"):
            fail(f"${{{name}}} is interpolated without a default and missing from .env.example")
    for name, value in example.items():
        if not re.search(r"\$\{" + name + r"(?![A-Z0-9_])", raw):
            fail(f".env.example sets {name}, which compose.yaml never reads")
        if "PASSWORD" in name and not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", value):
            fail(f".env.example {name}: NATS reads passwords as config values: letters and digits, a letter first")

    nats_nodes = sorted(name for name in services if re.fullmatch(r"nats-\d+", name))
    if len(nats_nodes) != 3:
        fail(f"expected a 3-node NATS cluster, found {nats_nodes}")

    for name, service in services.items():
        binary = binary_of(service)
        image = service.get("image", "")
        if binary is None:
            if ":" not in image or image.endswith(":latest"):
                fail(f"{name}: image {image!r} is not pinned to a version")
        if "restart" not in service:
            fail(f"{name}: no restart policy")
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                if not (HERE / source).exists():
                    fail(f"{name}: mounts {source}, which does not exist")
        for dependency, spec in (service.get("depends_on") or {}).items():
            if dependency not in services:
                fail(f"{name}: depends on {dependency}, which is not a service")
            elif spec.get("condition") not in ("service_healthy", "service_completed_successfully"):
                fail(f"{name}: depends on {dependency} without a health or completion condition")
            elif spec["condition"] == "service_healthy" and "healthcheck" not in services[dependency]:
                fail(f"{name}: waits for {dependency} to be healthy, which has no healthcheck")

        if binary is None or binary == "download-admin":
            continue
        environment = {key: str(value) for key, value in (service.get("environment") or {}).items()}
        unknown = set(environment) - table - NOT_IN_TABLE_BUT_READ
        if unknown:
            fail(f"{name}: variables not in the README's configuration table: {sorted(unknown)}")
        if environment.get("NATS_PROVISION") != "false" and "provision" not in service.get("command", []):
            fail(f"{name}: services run with NATS_PROVISION=false")
        is_provision = service.get("command", [])[1:] == ["provision"]
        user = environment.get("NATS_USER")
        password = environment.get("NATS_PASSWORD", "")
        if is_provision:
            if user != "admin" or "NATS_ADMIN_PASSWORD" not in password:
                fail(f"{name}: provisioning runs as the NATS admin")
            if service.get("restart") != "no":
                fail(f"{name}: a one-shot step must not restart")
            runner = next((s for s in services.values() if binary_of(s) == binary and s.get("command") == [binary]), None)
            if runner is not None:
                runner_env = {k: str(v) for k, v in runner["environment"].items()}
                for key in set(runner_env) | set(environment):
                    if key in ("NATS_USER", "NATS_PASSWORD", "PROCESSOR_ID"):
                        continue
                    if runner_env.get(key) != environment.get(key):
                        fail(f"{name}: {key} differs from the {binary} service's (provisioning must use its settings)")
            continue
        expected_user = SERVICE_USERS.get(binary)
        if user != expected_user or f"NATS_{expected_user.upper()}_PASSWORD" not in password:
            fail(f"{name}: runs {binary} as NATS user {user!r}, not {expected_user!r} with its own password")
        if "NATS_ADMIN_PASSWORD" in str(environment):
            fail(f"{name}: a long-running service holds the admin's password")
        if environment.get("NATS_REPLICAS") != str(len(nats_nodes)):
            fail(f"{name}: NATS_REPLICAS is not the cluster size {len(nats_nodes)}")
        for node in nats_nodes:
            if f"nats://{node}:4222" not in environment.get("NATS_URL", ""):
                fail(f"{name}: NATS_URL does not list {node}")
        if environment.get("HOST") != "0.0.0.0":
            fail(f"{name}: HOST must be 0.0.0.0 in a container")
        port = environment.get(PORT_VARIABLE[binary])
        probe = " ".join(service.get("healthcheck", {}).get("test", []))
        if not port or f"http://127.0.0.1:{port}/readyz" not in probe:
            fail(f"{name}: the healthcheck must GET /readyz on {PORT_VARIABLE[binary]} ({port})")
        provision = f"provision-{binary}"
        condition = (service.get("depends_on") or {}).get(provision, {}).get("condition")
        if condition != "service_completed_successfully":
            fail(f"{name}: must wait for {provision} to complete successfully")
        grace = seconds(service.get("stop_grace_period", "10s"))
        drain = max(DRAIN_SECONDS[binary], int(environment.get("SHUTDOWN_GRACE_SECONDS", 0)))
        if grace <= drain:
            fail(f"{name}: stop_grace_period {grace:.0f}s does not exceed its drain time {drain}s")
        otlp = environment.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        collector = re.match(r"http://([a-z0-9-]+):4318$", otlp)
        if not collector or collector.group(1) not in services:
            fail(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT {otlp!r} is not the collector's OTLP/HTTP port")

    for binary in SERVICE_USERS:
        if f"provision-{binary}" not in services:
            fail(f"no provision-{binary} step")

    # nginx: the template's variables, no others; upstreams name services that exist.
    nginx = services.get("nginx", {})
    nginx_env = {k: str(v) for k, v in (nginx.get("environment") or {}).items()}
    template_variables = set(re.findall(r"\$\{([A-Z_]+)\}", TEMPLATE.read_text()))
    given = set(nginx_env) - {"NGINX_ENVSUBST_FILTER"}
    if given != template_variables:
        fail(f"nginx: env {sorted(given)} is not the template's variables {sorted(template_variables)}")
    for variable in template_variables:
        if variable not in nginx_env.get("NGINX_ENVSUBST_FILTER", ""):
            fail(f"nginx: NGINX_ENVSUBST_FILTER leaves out {variable}")
    for variable, binary in (("INTAKE_UPSTREAM", "intake"), ("NOTIFIER_UPSTREAM", "notifier")):
        listed = re.findall(r"server ([a-z0-9-]+):(\d+);", nginx_env.get(variable, ""))
        running = {name for name, s in services.items() if binary_of(s) == binary and s.get("command") == [binary]}
        if {host for host, _ in listed} != running:
            fail(f"nginx: {variable} lists {sorted(h for h, _ in listed)}, the {binary} services are {sorted(running)}")
        for host, port in listed:
            if host in services and str(services[host]["environment"].get("PORT")) != port:
                fail(f"nginx: {variable} reaches {host} on {port}, not its PORT")
    if "/etc/nginx/templates/" not in " ".join(map(str, nginx.get("volumes", []))):
        fail("nginx: the template is not mounted under /etc/nginx/templates/")

    # NATS nodes: every password auth.conf reads; the route URLs their configs read.
    auth_passwords = set(re.findall(r"\$(NATS_[A-Z]+_PASSWORD)", AUTH_CONF.read_text()))
    for node in nats_nodes:
        node_env = set((services[node].get("environment") or {}).keys())
        config = (HERE / "nats" / f"{node}.conf").read_text()
        wanted = auth_passwords | set(re.findall(r"\$(NATS_[A-Z0-9_]+)", config))
        if wanted - node_env:
            fail(f"{node}: environment lacks {sorted(wanted - node_env)}")

    for message in failures:
        print(f"compose.yaml: {message}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
