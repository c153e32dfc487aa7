#!/usr/bin/env python3
"""Prints, as JSON, the names the Kubernetes manifests share with the code, for a test to compare
with the code's own: environment variables, ports, probe paths, commands, the KEDA trigger's
stream and consumer, NATS users and Secret keys.

    .venv/bin/python deploy/k8s/names.py [base|production]     (default: production)

Needs PyYAML (in the project's .venv) and kubectl (KUBECTL, default /usr/bin/kubectl).
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))

try:
    import yaml
except ImportError:
    sys.exit("names.py needs PyYAML: run it with the project's .venv/bin/python")

import manifests  # noqa: E402


def probe(container, kind):
    found = container.get(kind)
    if not found or "httpGet" not in found:
        return None
    port = found["httpGet"]["port"]
    if isinstance(port, str):
        port = next(entry["containerPort"] for entry in container["ports"] if entry["name"] == port)
    return {"path": found["httpGet"]["path"], "port": port}


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "production"
    objects = manifests.render(target)

    services = {}
    for workload in manifests.by_kind(objects, "Deployment"):
        service = manifests.workload_service(workload)
        container = manifests.pod_spec(workload)["containers"][0]
        variables = manifests.container_env(container, objects)
        services[service] = {
            "command": container.get("command", []) + container.get("args", []),
            "env": sorted(name for name in variables if not name.startswith("*")),
            "env_values": {
                name: manifests.env_value(variables, name)
                for name in sorted(variables)
                if manifests.env_value(variables, name) is not None
            },
            "secret_env": {
                name: {"secret": source[1], "key": source[2], "optional": source[3]}
                for name, source in sorted(variables.items())
                if source[0] == "secret"
            },
            "field_env": {name: source[1] for name, source in sorted(variables.items()) if source[0] == "field"},
            "ports": {entry["name"]: entry["containerPort"] for entry in container.get("ports", [])},
            "probes": {
                kind: probe(container, kind)
                for kind in ("startupProbe", "livenessProbe", "readinessProbe")
                if probe(container, kind)
            },
            "nats_user": manifests.env_value(variables, "NATS_USER"),
            "termination_grace_period_seconds": manifests.pod_spec(workload).get("terminationGracePeriodSeconds"),
        }

    provisioning = []
    for job in manifests.by_kind(objects, "Job"):
        for container in manifests.all_containers(manifests.pod_spec(job)):
            variables = manifests.container_env(container, objects)
            provisioning.append({
                "job": job["metadata"]["name"],
                "container": container["name"],
                "command": container.get("command", []) + container.get("args", []),
                "nats_user": manifests.env_value(variables, "NATS_USER"),
                "env": sorted(name for name in variables if not name.startswith("*")),
            })

    triggers = []
    for scaled in manifests.by_kind(objects, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            metadata = trigger.get("metadata", {})
            triggers.append({
                "scaled_object": scaled["metadata"]["name"],
                "target": scaled["spec"]["scaleTargetRef"]["name"],
                "type": trigger["type"],
                "stream": metadata.get("stream"),
                "consumer": metadata.get("consumer"),
                "account": metadata.get("account"),
                "monitoring_endpoint": metadata.get("natsServerMonitoringEndpoint"),
            })

    values = yaml.safe_load(open(os.path.join(manifests.HERE, "nats", "values.yaml")))
    helm_users = [
        {"user": user["user"], "password_variable": user["password"].strip("<> ").lstrip("$")}
        for user in values["config"]["merge"]["authorization"]["users"]
    ]

    everything = set()
    for service in services.values():
        everything.update(service["env"])
    for step in provisioning:
        everything.update(step["env"])
    config_keys = set()
    for data in manifests.config_maps(objects).values():
        config_keys.update(data)

    secret_keys = {}
    for service in services.values():
        for reference in service["secret_env"].values():
            secret_keys.setdefault(reference["secret"], set()).add(reference["key"])
    for job in manifests.by_kind(objects, "Job"):
        for container in manifests.all_containers(manifests.pod_spec(job)):
            for source in manifests.container_env(container, objects).values():
                if source[0] == "secret":
                    secret_keys.setdefault(source[1], set()).add(source[2])

    routes = []
    for ingress in manifests.by_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                routes.append({
                    "ingress": ingress["metadata"]["name"],
                    "path": path["path"],
                    "service": path["backend"]["service"]["name"],
                    "port": path["backend"]["service"]["port"].get("name") or path["backend"]["service"]["port"].get("number"),
                })

    print(json.dumps({
        "target": target,
        "env_names": sorted(everything),
        "config_map_keys": sorted(config_keys),
        "services": services,
        "provisioning": provisioning,
        "keda_triggers": triggers,
        "nats_users": {
            "services": {name: service["nats_user"] for name, service in services.items()},
            "provisioning": sorted({step["nats_user"] for step in provisioning}),
            "helm_values": helm_users,
        },
        "secret_keys": {name: sorted(keys) for name, keys in sorted(secret_keys.items())},
        "ingress_routes": routes,
    }, indent=2, sort_keys=False))


if __name__ == "__main__":
    main()
