#!/usr/bin/env python3
"""Holds the edge of the download service to the notifier's SSE heartbeat (stdlib only).

A progress stream is quiet between events except for a comment heartbeat every
SSE_HEARTBEAT_SECONDS; every hop that cuts a quiet connection must wait at least twice that. It
reads the heartbeat's default from the README's configuration table (and any value compose.yaml
or deploy/k8s sets: the largest counts), then checks:

- the idle timeouts on the way: the ALB (alb.tf), Cloudflare (cloudflare.tf), nginx's
  STREAM_TIMEOUT in deploy/compose/compose.yaml and in deploy/k8s, or there the stream Ingress's
  ingress-nginx proxy-read-timeout (when deploy/k8s exists);
- the stream route unbuffered and uncompressed: nginx's stream location (the template), the
  k8s stream Ingress (proxy-buffering off), the Cloudflare compression rule for text/event-stream (and response buffering off where set);
- health checks on /readyz (ALB target group, Cloudflare monitor), caching bypassed on Cloudflare;
- the ALB's idle timeout below nginx's keepalive_timeout (65 s in the official image), so that
  the ALB closes idle keep-alive connections first.

Prints what it checked as JSON; exits 1 if any check failed. `--quiet`: print only on failure.
"""

import json
import re
import sys
from pathlib import Path

EDGE = Path(__file__).resolve().parent
ROOT = EDGE.parents[1]
README = ROOT / "README.md"
ALB = EDGE / "alb.tf"
CLOUDFLARE = EDGE / "cloudflare.tf"
TEMPLATE = ROOT / "deploy" / "nginx" / "downloads.conf.template"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
K8S = ROOT / "deploy" / "k8s"
# keepalive_timeout of the official nginx image's /etc/nginx/nginx.conf (http context); the
# template sets none of its own.
NGINX_IMAGE_KEEPALIVE_SECONDS = 65
ALB_DEFAULT_IDLE_SECONDS = 60


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- readers -------------------------------------------------------------------------------------


def readme_heartbeat_default() -> int:
    """The default of SSE_HEARTBEAT_SECONDS in the README's configuration table."""
    for line in README.read_text().splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 3 and cells[1] == "`SSE_HEARTBEAT_SECONDS`":
            return int(cells[2].strip("`"))
    raise SystemExit("README.md: no SSE_HEARTBEAT_SECONDS row in the configuration table")


def nginx_seconds(value: str) -> float:
    """An nginx time (`60s`, `1h`, `1m30s`, `500ms`, `90` = seconds) in seconds."""
    value = value.strip().strip("\"'")
    if re.fullmatch(r"\d+", value):
        return float(value)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|[smhdwMy])", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not an nginx time: {value!r}")
    return sum(int(number) * units[unit] for number, unit in parts)


def hcl_block(text: str, header: str) -> str | None:
    """The body of the first block whose opening line matches `header` (a regex), braces
    inside strings (`"${var.x}"`) skipped; None when there is none."""
    match = re.search(header + r"\s*\{", text)
    if not match:
        return None
    depth, index, in_string = 1, match.end(), False
    while index < len(text) and depth:
        char = text[index]
        if in_string:
            if char == "\\":
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "#":
            index = text.find("\n", index)
            if index < 0:
                break
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        index += 1
    return text[match.end() : index - 1]


def hcl_attribute(body: str | None, name: str) -> str | None:
    """A top-level-looking `name = value` of a block body (the first one), comments removed."""
    if body is None:
        return None
    lines = [re.sub(r"\s+#.*$", "", line) for line in body.splitlines() if not line.strip().startswith("#")]
    for line in lines:
        match = re.match(rf"\s*{name}\s*=\s*(.+?)\s*$", line)
        if match:
            return match.group(1)
    return None


def yaml_values(text: str, name: str) -> list[str]:
    """Values of an env variable in Compose or Kubernetes YAML: `NAME: v`, `NAME=v`, or
    `- name: NAME` followed by `value: v` (good enough for these files; stdlib has no YAML)."""
    values = re.findall(rf"^\s*-?\s*{name}\s*[:=]\s*(\S+?)\s*$", text, re.MULTILINE)
    values += re.findall(rf"name:\s*[\"']?{name}[\"']?\s*\n\s*value:\s*(\S+)", text)
    return [value.strip("\"'") for value in values]


def nginx_location(template: str, pattern: str) -> str:
    body = hcl_block(template, re.escape(pattern))
    if body is None:
        raise SystemExit(f"{relative(TEMPLATE)}: no `{pattern}` block")
    return body


# --- the checks ----------------------------------------------------------------------------------


def main() -> int:
    quiet = "--quiet" in sys.argv[1:]
    checks: list[dict] = []

    def check(name: str, ok: bool, **details) -> None:
        checks.append({"check": name, "ok": bool(ok), **details})

    # The heartbeat: the README's default, or a larger one a deployment sets.
    heartbeat_sources = {"README.md configuration table (default)": readme_heartbeat_default()}
    compose_text = COMPOSE.read_text() if COMPOSE.exists() else ""
    for value in yaml_values(compose_text, "SSE_HEARTBEAT_SECONDS"):
        heartbeat_sources[relative(COMPOSE)] = max(int(value), heartbeat_sources.get(relative(COMPOSE), 0))
    k8s_files = sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml", ".env", ".properties")) if K8S.exists() else []
    for path in k8s_files:
        for value in yaml_values(path.read_text(), "SSE_HEARTBEAT_SECONDS"):
            if value.isdigit():
                heartbeat_sources[relative(path)] = max(int(value), heartbeat_sources.get(relative(path), 0))
    heartbeat = max(heartbeat_sources.values())
    most = 2 * heartbeat

    # Idle timeouts of every hop.
    alb_text = ALB.read_text()
    alb = hcl_block(alb_text, r'resource\s+"aws_lb"\s+"[^"]+"')
    alb_idle = int(hcl_attribute(alb, "idle_timeout") or ALB_DEFAULT_IDLE_SECONDS)
    idle = [{"hop": "AWS ALB idle_timeout", "seconds": alb_idle, "source": relative(ALB)}]

    cloudflare_text = CLOUDFLARE.read_text()
    locals_body = hcl_block(cloudflare_text, r"locals")
    cloudflare_idle = hcl_attribute(locals_body, "cloudflare_proxy_read_timeout_seconds")
    if cloudflare_idle is None:
        check("Cloudflare proxy read timeout declared", False, source=relative(CLOUDFLARE))
    else:
        idle.append({"hop": "Cloudflare proxy read timeout", "seconds": int(cloudflare_idle), "source": relative(CLOUDFLARE)})
        if int(cloudflare_idle) > 100:
            enterprise = hcl_block(cloudflare_text, r'resource\s+"cloudflare_zone_setting"\s+"proxy_read_timeout"')
            check("Cloudflare read timeout above 100 s is set (Enterprise)", enterprise is not None, source=relative(CLOUDFLARE))

    compose_timeouts = yaml_values(compose_text, "STREAM_TIMEOUT")
    if compose_text and not compose_timeouts:
        check("nginx STREAM_TIMEOUT set in compose", False, source=relative(COMPOSE))
    for value in compose_timeouts:
        idle.append({"hop": "nginx STREAM_TIMEOUT (compose)", "seconds": nginx_seconds(value), "value": value, "source": relative(COMPOSE)})
    k8s_timeouts = 0
    for path in k8s_files:
        for value in yaml_values(path.read_text(), "STREAM_TIMEOUT"):
            k8s_timeouts += 1
            idle.append({"hop": "nginx STREAM_TIMEOUT (k8s)", "seconds": nginx_seconds(value), "value": value, "source": relative(path)})
    # Kubernetes behind ingress-nginx: the stream route's Ingress (the YAML document routing a
    # `/stream` path) carries the read timeout and buffering as annotations.
    for path in k8s_files:
        for document in re.split(r"^---\s*$", path.read_text(), flags=re.MULTILINE):
            if not re.search(r"^\s*kind:\s*Ingress\s*$", document, re.M) or "/stream" not in document:
                continue
            for value in re.findall(r"nginx\.ingress\.kubernetes\.io/proxy-read-timeout:\s*[\"']?(\d+)", document):
                k8s_timeouts += 1
                idle.append({"hop": "ingress-nginx proxy-read-timeout (k8s stream Ingress)", "seconds": float(value), "source": relative(path)})
            check(
                "ingress-nginx stream route: proxy-buffering off",
                re.search(r"nginx\.ingress\.kubernetes\.io/proxy-buffering:\s*[\"']?off", document) is not None,
                source=relative(path),
            )
    skipped = [] if k8s_timeouts else [f"{relative(K8S)}: no stream read timeout found" + ("" if K8S.exists() else " (no such folder yet)")]

    for hop in idle:
        check(
            f"heartbeat at most half of {hop['hop']}",
            heartbeat <= hop["seconds"] / 2,
            heartbeat_seconds=heartbeat,
            **hop,
        )

    check(
        "ALB idle timeout below nginx keepalive_timeout (the ALB closes idle connections first)",
        alb_idle < NGINX_IMAGE_KEEPALIVE_SECONDS,
        alb_idle_seconds=alb_idle,
        nginx_keepalive_seconds=NGINX_IMAGE_KEEPALIVE_SECONDS,
        source="official nginx image /etc/nginx/nginx.conf",
    )

    # The stream route: unbuffered and uncompressed at every hop that could do either.
    template = TEMPLATE.read_text()
    stream = nginx_location(template, "location ~ ^/v1/download/[^/]+/stream$")
    check("nginx stream route: proxy_buffering off", re.search(r"^\s*proxy_buffering\s+off;", stream, re.M) is not None, source=relative(TEMPLATE))
    check("nginx stream route: proxy_cache off", re.search(r"^\s*proxy_cache\s+off;", stream, re.M) is not None, source=relative(TEMPLATE))
    check(
        "nginx stream route: read timeout is STREAM_TIMEOUT",
        re.search(r"^\s*proxy_read_timeout\s+\$\{STREAM_TIMEOUT\};", stream, re.M) is not None,
        source=relative(TEMPLATE),
    )
    check("nginx: no gzip turned on (stream not compressed)", re.search(r"^\s*gzip\s+on;", template, re.M) is None, source=relative(TEMPLATE))
    compression = hcl_block(cloudflare_text, r'resource\s+"cloudflare_ruleset"\s+"stream_compression"') or ""
    check(
        "Cloudflare: compression none for text/event-stream",
        hcl_attribute(compression, "phase") == '"http_response_compression"'
        and 'text/event-stream' in (hcl_attribute(compression, "expression") or "")
        and re.search(r'algorithms\s*=\s*\[\s*\{\s*name\s*=\s*"none"\s*\}\s*\]', compression) is not None
        and hcl_attribute(compression, "enabled") == "true",
        source=relative(CLOUDFLARE),
    )
    buffering = hcl_block(cloudflare_text, r'resource\s+"cloudflare_zone_setting"\s+"response_buffering"')
    check(
        "Cloudflare: response buffering off (where settable)",
        buffering is None or hcl_attribute(buffering, "value") == '"off"',
        source=relative(CLOUDFLARE),
    )
    check(
        "AWS ALB: no response buffering or compression to turn off",
        True,
        note="an ALB forwards response bytes as they arrive and never compresses",
    )

    # Health checks and caching.
    target_group = hcl_block(alb_text, r'resource\s+"aws_lb_target_group"\s+"[^"]+"')
    health = hcl_block(target_group or "", r"health_check")
    check("ALB target group health check GET /readyz expects 200", hcl_attribute(health, "path") == '"/readyz"' and hcl_attribute(health, "matcher") == '"200"', source=relative(ALB))
    stickiness = hcl_block(target_group or "", r"stickiness")
    check("ALB stickiness off (any notifier serves any stream)", stickiness is None or hcl_attribute(stickiness, "enabled") == "false", source=relative(ALB))
    monitor = hcl_block(cloudflare_text, r'resource\s+"cloudflare_load_balancer_monitor"\s+"[^"]+"')
    check("Cloudflare monitor GET /readyz expects 200", hcl_attribute(monitor, "path") == '"/readyz"' and hcl_attribute(monitor, "expected_codes") == '"200"', source=relative(CLOUDFLARE))
    cache = hcl_block(cloudflare_text, r'resource\s+"cloudflare_ruleset"\s+"no_cache"') or ""
    check(
        "Cloudflare: cache bypassed for the API host (presigned URLs, streams)",
        hcl_attribute(cache, "phase") == '"http_request_cache_settings"'
        and re.search(r"cache\s*=\s*false", cache) is not None
        and hcl_attribute(cache, "enabled") == "true",
        source=relative(CLOUDFLARE),
    )

    ok = all(item["ok"] for item in checks)
    report = {
        "ok": ok,
        "heartbeat_seconds": heartbeat,
        "heartbeat_sources": heartbeat_sources,
        "rule": "every idle timeout on the stream's way is at least twice the heartbeat",
        "checks": checks,
        "not_checked": skipped,
    }
    if not quiet or not ok:
        print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
