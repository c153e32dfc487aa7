"""Rendering the kustomizations and reading what the rendered objects say (shared by the check's
validator and names.py)."""

import os
import subprocess

import yaml

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(HERE))
KUBECTL = os.environ.get("KUBECTL", "/usr/bin/kubectl")

# The kustomizations the check renders, by name.
TARGETS = {
    "base": os.path.join(HERE, "base"),
    "production": os.path.join(HERE, "overlays", "production"),
}

# Workloads by the service they run (app.kubernetes.io/name of their pods).
SERVICES = ("intake", "notifier", "processor", "presigner")


def render(target):
    """The objects `kubectl kustomize` renders for one kustomization."""
    output = subprocess.run(
        [KUBECTL, "kustomize", TARGETS.get(target, target)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [document for document in yaml.safe_load_all(output) if document]


def by_kind(objects, kind):
    return [item for item in objects if item.get("kind") == kind]


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def workload_service(workload):
    return workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]


def config_maps(objects):
    return {item["metadata"]["name"]: item.get("data", {}) for item in by_kind(objects, "ConfigMap")}


def container_env(container, objects):
    """Every variable a container gets: name -> ("configmap", map, value) / ("secret", secret, key,
    optional) / ("value", value) / ("field", path). Later sources win, as in Kubernetes."""
    maps = config_maps(objects)
    variables = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            for key, value in maps.get(name, {}).items():
                variables[key] = ("configmap", name, value)
        elif "secretRef" in source:
            variables["*" + source["secretRef"]["name"]] = ("secret-all", source["secretRef"]["name"])
    for entry in container.get("env", []):
        if "value" in entry:
            variables[entry["name"]] = ("value", entry["value"])
            continue
        reference = entry.get("valueFrom", {})
        if "secretKeyRef" in reference:
            ref = reference["secretKeyRef"]
            variables[entry["name"]] = ("secret", ref["name"], ref["key"], bool(ref.get("optional", False)))
        elif "configMapKeyRef" in reference:
            ref = reference["configMapKeyRef"]
            variables[entry["name"]] = ("configmap", ref["name"], maps.get(ref["name"], {}).get(ref["key"]))
        elif "fieldRef" in reference:
            variables[entry["name"]] = ("field", reference["fieldRef"]["fieldPath"])
        else:
            variables[entry["name"]] = ("other",)
    return variables


def env_value(variables, name):
    """A variable's literal value, if it has one (ConfigMap or plain value)."""
    source = variables.get(name)
    if source is None:
        return None
    if source[0] == "configmap":
        return source[2]
    if source[0] == "value":
        return source[1]
    return None


def all_containers(spec):
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def readme_settings():
    """Every variable name in README.md's "Configuration" table."""
    import re

    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        names.update(re.findall(r"`([A-Z][A-Z0-9_]+)(?:=[^`]*)?`", first_cell))
    return names
