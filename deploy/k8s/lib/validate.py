"""The check's validator: renders every kustomization, validates every object against the
Kubernetes 1.33 schemas in strict mode (kubernetes-validate) and the ScaledObject against the
vendored KEDA schema, then holds the manifests to what the code and the repository say. Prints
each failure, then one summary line; exits 1 on any failure."""

import json
import os
import re
import sys

import jsonschema
import yaml

import manifests
import natsconf

KUBERNETES_VERSION = "1.33"
IMAGE = "ghcr.io/download-service/download-service"
KEDA_SCHEMA = os.path.join(manifests.HERE, "schemas", "keda-scaledobject-v1alpha1.schema.json")
NATS_VALUES = os.path.join(manifests.HERE, "nats", "values.yaml")
NATS_DIR = os.path.join(manifests.REPO, "nats")

# Variables the manifests set that README's configuration table does not list, and why (none:
# every variable the manifests set is in the table).
NOT_IN_README_TABLE: set[str] = set()
# Names whose values are credentials: never in a ConfigMap, always from a Secret.
SECRET_LIKE = re.compile(r"(SECRET|PASSWORD|_TOKEN$|HEADERS$|ACCESS_KEY)")
PORT_SETTING = {"intake": "PORT", "notifier": "PORT", "processor": "METRICS_PORT", "presigner": "METRICS_PORT"}
AUTOSCALED_BY_HPA = ("intake", "notifier")


class Results:
    def __init__(self):
        self.passed = 0
        self.failures = []

    def check(self, condition, message):
        if condition:
            self.passed += 1
        else:
            self.failures.append(message)
        return condition


def validate_schemas(target, objects, results, keda_schema):
    import kubernetes_validate

    counts = {"kubernetes": 0, "keda": 0}
    for item in objects:
        name = f"{target}: {item.get('kind')}/{item.get('metadata', {}).get('name')}"
        if item.get("kind") == "ScaledObject":
            errors = sorted(
                jsonschema.Draft202012Validator(keda_schema).iter_errors(item), key=lambda error: list(error.path)
            )
            for error in errors:
                results.check(False, f"{name}: KEDA schema: {'.'.join(map(str, error.path))}: {error.message}")
            if not errors:
                results.check(True, f"{name}: KEDA schema")
            counts["keda"] += 1
            continue
        try:
            kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
            results.check(True, name)
        except kubernetes_validate.ValidationError as error:
            results.check(False, f"{name}: {'.'.join(map(str, error.path))}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            results.check(False, f"{name}: no schema: {error.message}")
        counts["kubernetes"] += 1
    return counts


def check_workloads(target, objects, results):
    deployments = {manifests.workload_service(item): item for item in manifests.by_kind(objects, "Deployment")}
    results.check(sorted(deployments) == sorted(manifests.SERVICES), f"{target}: one Deployment per service: {sorted(deployments)}")
    readme = manifests.readme_settings()
    set_anywhere = set()
    from_secrets = set()
    pdbs = manifests.by_kind(objects, "PodDisruptionBudget")
    hpas = {item["spec"]["scaleTargetRef"]["name"]: item for item in manifests.by_kind(objects, "HorizontalPodAutoscaler")}
    scaled = {item["spec"]["scaleTargetRef"]["name"]: item for item in manifests.by_kind(objects, "ScaledObject")}

    workloads = list(manifests.by_kind(objects, "Deployment")) + list(manifests.by_kind(objects, "Job"))
    for workload in workloads:
        name = f"{target}: {workload['kind']}/{workload['metadata']['name']}"
        spec = manifests.pod_spec(workload)
        pod_security = spec.get("securityContext", {})
        results.check(pod_security.get("runAsNonRoot") is True and pod_security.get("runAsUser") == 10001,
                      f"{name}: pod runs as non-root uid 10001")
        results.check(pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault")
        results.check(spec.get("automountServiceAccountToken") is False, f"{name}: no service account token")
        for container in manifests.all_containers(spec):
            where = f"{name} container {container['name']}"
            security = container.get("securityContext", {})
            results.check(security.get("readOnlyRootFilesystem") is True, f"{where}: read-only root filesystem")
            results.check(security.get("allowPrivilegeEscalation") is False, f"{where}: no privilege escalation")
            results.check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drops ALL capabilities")
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                results.check({"cpu", "memory"} <= set(resources.get(kind, {})), f"{where}: {kind} for cpu and memory")
            image = container.get("image", "")
            results.check(image.split(":")[0] == IMAGE, f"{where}: image {IMAGE}, not {image}")
            if target != "base":
                tag = image.split(":", 1)[1] if ":" in image else ""
                results.check(tag not in ("", "latest"), f"{where}: the overlay pins the image tag ({image})")
            results.check(container.get("command", [""])[0].startswith("/usr/local/bin/"), f"{where}: runs a binary of /usr/local/bin")
            variables = manifests.container_env(container, objects)
            for variable, source in variables.items():
                if variable.startswith("*"):
                    results.check(False, f"{where}: envFrom a whole Secret ({source[1]}): reference keys one by one")
                    continue
                set_anywhere.add(variable)
                results.check(variable in readme or variable in NOT_IN_README_TABLE,
                              f"{where}: {variable} is not a setting of README's configuration table")
                if source[0] == "secret":
                    from_secrets.add(variable)
                if SECRET_LIKE.search(variable):
                    results.check(source[0] == "secret", f"{where}: {variable} comes from a Secret, not {source[0]}")
            if workload["kind"] == "Job":
                results.check(manifests.env_value(variables, "NATS_USER") == "admin", f"{where}: provisions as the NATS admin user")
                results.check(variables.get("NATS_PASSWORD", ("",))[0] == "secret"
                              and variables["NATS_PASSWORD"][2] == "NATS_ADMIN_PASSWORD", f"{where}: admin password from its Secret")
                command = container.get("command", [])
                results.check(len(command) == 2 and command[1] == "provision", f"{where}: runs `<service> provision`")
                continue

            service = manifests.workload_service(workload)
            user = manifests.env_value(variables, "NATS_USER")
            results.check(user == service, f"{where}: NATS_USER={user}, the service's own user")
            password = variables.get("NATS_PASSWORD", ("",))
            results.check(password[0] == "secret" and password[2] == f"NATS_{service.upper()}_PASSWORD",
                          f"{where}: NATS_PASSWORD from key NATS_{service.upper()}_PASSWORD")
            results.check(manifests.env_value(variables, "NATS_PROVISION") == "false", f"{where}: NATS_PROVISION=false")
            results.check(manifests.env_value(variables, "HOST") == "0.0.0.0", f"{where}: HOST=0.0.0.0")
            port_value = manifests.env_value(variables, PORT_SETTING[service])
            ports = {entry["name"]: entry["containerPort"] for entry in container.get("ports", [])}
            results.check(port_value is not None and int(port_value) in ports.values(),
                          f"{where}: {PORT_SETTING[service]}={port_value} is a container port {ports}")
            for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz"), ("startupProbe", "/livez")):
                get = container.get(probe, {}).get("httpGet", {})
                port = ports.get(get.get("port"), get.get("port"))
                results.check(get.get("path") == path and str(port) == str(port_value),
                              f"{where}: {probe} GET {path} on {PORT_SETTING[service]} ({get})")
            # Only the processor reads SHUTDOWN_GRACE_SECONDS (default 30); the intake and the
            # notifier finish their requests well within it.
            grace = manifests.env_value(variables, "SHUTDOWN_GRACE_SECONDS") or "30"
            results.check(spec.get("terminationGracePeriodSeconds", 30) > int(grace),
                          f"{where}: terminationGracePeriodSeconds {spec.get('terminationGracePeriodSeconds')} above SHUTDOWN_GRACE_SECONDS {grace}")
            labels = workload["spec"]["template"]["metadata"]["labels"]
            results.check(any(all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()) for pdb in pdbs),
                          f"{where}: a PodDisruptionBudget selects it")
            results.check(len(spec.get("topologySpreadConstraints", [])) >= 1, f"{where}: topology spread constraints")
            deployment = workload["metadata"]["name"]
            if service in AUTOSCALED_BY_HPA:
                hpa = hpas.get(deployment)
                results.check(hpa is not None and hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu",
                              f"{where}: a CPU HorizontalPodAutoscaler")
                results.check("replicas" not in workload["spec"], f"{where}: no replicas (the HPA owns them)")
                if target == "production" and hpa:
                    results.check(hpa["spec"]["minReplicas"] >= 2, f"{where}: at least 2 replicas in production")
            if service == "processor":
                results.check(deployment in scaled and deployment not in hpas, f"{where}: scaled by KEDA only")
                results.check("replicas" not in workload["spec"], f"{where}: no replicas (KEDA owns them)")
            if service == "presigner" and target == "production":
                results.check(workload["spec"].get("replicas", 1) >= 2, f"{where}: 2 presigners in production")
            if target == "production":
                results.check(manifests.env_value(variables, "NATS_REPLICAS") == "3", f"{where}: NATS_REPLICAS=3 in production")

    config_keys = set()
    for data in manifests.config_maps(objects).values():
        config_keys.update(data)
        for key in data:
            results.check(not SECRET_LIKE.search(key), f"{target}: ConfigMap key {key} looks like a credential")
    for setting in sorted(readme):
        results.check(setting in config_keys or setting in set_anywhere,
                      f"{target}: README setting {setting} is set in no ConfigMap and referenced from no Secret")


def check_keda(target, objects, results, namespace):
    jobs_stream = json.load(open(os.path.join(NATS_DIR, "streams", "DOWNLOAD_JOBS.json")))
    consumers = {}
    for file in os.listdir(os.path.join(NATS_DIR, "consumers")):
        config = json.load(open(os.path.join(NATS_DIR, "consumers", file)))
        consumers.setdefault(file.split("-", 1)[0], set()).add(config["durable_name"])
    scaled_objects = manifests.by_kind(objects, "ScaledObject")
    results.check(len(scaled_objects) == 1, f"{target}: one ScaledObject")
    for scaled in scaled_objects:
        name = f"{target}: ScaledObject/{scaled['metadata']['name']}"
        spec = scaled["spec"]
        results.check(spec["scaleTargetRef"]["name"] == "download-processor", f"{name}: scales the processors")
        if target == "production":
            results.check(spec.get("minReplicaCount", 0) >= 2, f"{name}: at least 2 processors in production")
        for trigger in spec["triggers"]:
            metadata = trigger.get("metadata", {})
            results.check(trigger["type"] == "nats-jetstream", f"{name}: nats-jetstream trigger")
            required = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"}
            results.check(required <= set(metadata), f"{name}: trigger metadata has {sorted(required)}")
            known = required | {"activationLagThreshold", "useHttps"}
            results.check(set(metadata) <= known, f"{name}: unknown trigger metadata {sorted(set(metadata) - known)}")
            results.check(all(isinstance(value, str) for value in metadata.values()), f"{name}: metadata values are strings")
            stream = metadata.get("stream")
            results.check(stream == jobs_stream["name"], f"{name}: stream {stream} is nats/streams/DOWNLOAD_JOBS.json's")
            results.check(metadata.get("consumer") in consumers.get(stream, set()),
                          f"{name}: consumer {metadata.get('consumer')} is a durable consumer of {stream} in nats/consumers")
            results.check(re.fullmatch(r"[0-9]+", metadata.get("lagThreshold", "")) is not None, f"{name}: lagThreshold is a number")
            endpoint = metadata.get("natsServerMonitoringEndpoint", "")
            results.check(endpoint == f"nats-headless.{namespace}.svc.cluster.local:8222",
                          f"{name}: monitoring endpoint {endpoint} is the NATS release's headless Service in {namespace}")
            results.check(metadata.get("account") == "$G", f"{name}: account $G (nats/auth.conf users have no account)")


def check_ingress(target, objects, results):
    routes = []
    for ingress in manifests.by_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                routes.append((path["path"], path["backend"]["service"]["name"], ingress))

    def route(url_path):
        matching = [entry for entry in routes if re.match("^" + entry[0], url_path)]
        return max(matching, key=lambda entry: len(entry[0])) if matching else None

    notifier = next(d for d in manifests.by_kind(objects, "Deployment") if manifests.workload_service(d) == "notifier")
    heartbeat = manifests.env_value(manifests.container_env(manifests.pod_spec(notifier)["containers"][0], objects),
                                    "SSE_HEARTBEAT_SECONDS")
    stream = route("/v1/download/0192d1f2-8c3a-7b4e-9f00-123456789abc/stream")
    results.check(stream is not None and stream[1] == "download-notifier", f"{target}: the SSE stream route goes to the notifier")
    if stream:
        annotations = stream[2]["metadata"].get("annotations", {})
        results.check(annotations.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off", f"{target}: stream route unbuffered")
        timeout = int(annotations.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "60"))
        results.check(heartbeat is not None and timeout > int(heartbeat),
                      f"{target}: stream read timeout {timeout} s above SSE_HEARTBEAT_SECONDS {heartbeat}")
    for path in ("/v1/download/initiate", "/v1/download/status/0192d1f2-8c3a-7b4e-9f00-123456789abc", "/health", "/", "/app"):
        found = route(path)
        results.check(found is not None and found[1] == "download-intake", f"{target}: {path} goes to the intake")
    metrics = route("/metrics")
    denied = metrics and metrics[2]["metadata"].get("annotations", {}).get("nginx.ingress.kubernetes.io/denylist-source-range", "")
    results.check(bool(denied) and "0.0.0.0/0" in denied and "::/0" in denied, f"{target}: /metrics is refused to every address")
    for ingress in manifests.by_kind(objects, "Ingress"):
        results.check(ingress["spec"].get("ingressClassName") == "nginx", f"{target}: Ingress/{ingress['metadata']['name']} class nginx")


def check_network_policies(target, objects, results):
    policies = manifests.by_kind(objects, "NetworkPolicy")
    results.check(any(p["spec"]["podSelector"] == {} and sorted(p["spec"]["policyTypes"]) == ["Egress", "Ingress"]
                      and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies),
                  f"{target}: a default-deny NetworkPolicy")
    results.check(any(any(port.get("port") == 53 for rule in p["spec"].get("egress", []) for port in rule.get("ports", []))
                      for p in policies), f"{target}: DNS egress allowed")


def check_nats_values(results, secret_keys):
    values = yaml.safe_load(open(NATS_VALUES))
    config = values["config"]
    results.check(config["cluster"]["enabled"] is True and config["cluster"]["replicas"] == 3, "nats values: a cluster of 3")
    store = config["jetstream"]["fileStore"]
    results.check(config["jetstream"]["enabled"] and store["enabled"] and store["pvc"]["enabled"], "nats values: JetStream file store on PVCs")
    results.check(config["merge"]["jetstream"]["sync_interval"] == "always", "nats values: sync_interval always")
    results.check(config["monitor"]["enabled"] is True and config["monitor"]["port"] == 8222, "nats values: monitoring on 8222")
    results.check(str(values["container"]["image"]["tag"]) == "2.15.1", "nats values: nats-server 2.15.1")
    results.check({"secretRef": {"name": "download-nats-users"}} in values["container"]["merge"]["envFrom"],
                  "nats values: passwords from the Secret download-nats-users")

    auth = natsconf.parse(open(os.path.join(NATS_DIR, "auth.conf")).read())["authorization"]["users"]
    expected = [{"user": u["user"], "password": u["password"], "permissions": u["permissions"]} for u in auth]
    actual = []
    for user in config["merge"]["authorization"]["users"]:
        password = user["password"]
        match = re.fullmatch(r"<<\s*(\$[A-Z0-9_]+)\s*>>", password)
        results.check(match is not None, f"nats values: user {user['user']}'s password is a << $VAR >> reference")
        actual.append({"user": user["user"], "password": match.group(1) if match else password, "permissions": user["permissions"]})
    results.check([entry["user"] for entry in actual] == [entry["user"] for entry in expected],
                  f"nats values: users {[e['user'] for e in actual]} are nats/auth.conf's {[e['user'] for e in expected]}")
    for wanted in expected:
        found = next((entry for entry in actual if entry["user"] == wanted["user"]), None)
        results.check(found == wanted, f"nats values: user {wanted['user']} differs from nats/auth.conf "
                                       "(password variable or permissions: copy them over)")
    variables = {entry["password"].lstrip("$") for entry in expected}
    for key in sorted(secret_keys.get("download-nats-users", set()) - {"NATS_TOKEN"}):
        results.check(key in variables, f"nats values: the services' Secret key {key} is a password nats-server reads")


def main():
    results = Results()
    keda_schema = json.load(open(KEDA_SCHEMA))
    counts = {"kubernetes": 0, "keda": 0}
    secret_keys = {}
    rendered = 0
    for target in manifests.TARGETS:
        try:
            objects = manifests.render(target)
        except Exception as error:  # a kustomization that does not render
            results.check(False, f"{target}: kubectl kustomize failed: {getattr(error, 'stderr', error)}")
            continue
        rendered += 1
        namespaces = {item["metadata"].get("namespace") for item in objects if item["kind"] != "Namespace"}
        results.check(len(namespaces) == 1, f"{target}: one namespace ({namespaces})")
        namespace = next(iter(namespaces))
        for kind, count in validate_schemas(target, objects, results, keda_schema).items():
            counts[kind] += count
        check_workloads(target, objects, results)
        check_keda(target, objects, results, namespace)
        check_ingress(target, objects, results)
        check_network_policies(target, objects, results)
        for item in manifests.by_kind(objects, "Deployment") + manifests.by_kind(objects, "Job"):
            for container in manifests.all_containers(manifests.pod_spec(item)):
                for source in manifests.container_env(container, objects).values():
                    if source[0] == "secret":
                        secret_keys.setdefault(source[1], set()).add(source[2])
    check_nats_values(results, secret_keys)

    for failure in results.failures:
        print(f"FAIL {failure}")
    print(
        f"k8s check: {rendered}/{len(manifests.TARGETS)} kustomizations rendered ({', '.join(manifests.TARGETS)}); "
        f"{counts['kubernetes']} objects against Kubernetes {KUBERNETES_VERSION} (strict), {counts['keda']} against KEDA 2.16.1; "
        f"{results.passed} passed, {len(results.failures)} failed"
    )
    return 1 if results.failures or rendered != len(manifests.TARGETS) else 0


if __name__ == "__main__":
    sys.exit(main())
