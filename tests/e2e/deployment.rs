//! The deployment files, checked offline as CI can: the Kubernetes manifests render and validate
//! against the Kubernetes 1.33 schemas (deploy/k8s/check), the compose file against the compose
//! specification, the Dockerfile with hadolint, the NATS and nginx configs with their own
//! checkers (deploy/compose/check), the edge settings against the stream heartbeat
//! (deploy/edge/check.py). And the manifests say what the code reads: every container's
//! variables parse as its service's settings (so a misspelt or out-of-range value fails here),
//! every variable set is one the service reads, ports, probe paths, grace periods, NATS users,
//! the stream and consumer KEDA watches, the provisioning steps: a renamed consumer or setting
//! fails this test, not a deployment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use system_tests::servers::{venv_binary, workspace_root};

/// Runs a check script from the workspace root with the venv first on `PATH`; its output.
fn run_check(program: &Path, args: &[&str]) -> String {
    let root = workspace_root();
    let path = format!(
        "{}:{}",
        root.join(".venv/bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new(program)
        .args(args)
        .current_dir(&root)
        .env("PATH", path)
        .output()
        .unwrap_or_else(|error| panic!("{} cannot run: {error}", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} failed:\n{stdout}\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_kubernetes_compose_docker_and_edge_files_pass_their_offline_checks() {
    let root = workspace_root();
    let k8s = run_check(&root.join("deploy/k8s/check"), &[]);
    assert!(k8s.contains("0 failed") && k8s.contains("Kubernetes 1.33"), "{k8s}");
    let compose = run_check(&root.join("deploy/compose/check"), &[]);
    assert!(compose.contains("0 failed"), "{compose}");
    for part in ["schema", "hadolint", "nats-1", "nginx", "edge"] {
        assert!(compose.contains(part), "the compose check ran {part}: {compose}");
    }
    let edge: Value =
        serde_json::from_str(&run_check(&venv_binary("python").unwrap(), &["deploy/edge/check.py"])).unwrap();
    assert_eq!(edge["ok"], true, "{edge}");
}

/// The objects of the production overlay, rendered as `kubectl kustomize` renders them.
fn rendered_production() -> Vec<Value> {
    let output = Command::new("kubectl")
        .args(["kustomize", "deploy/k8s/overlays/production"])
        .current_dir(workspace_root())
        .output()
        .expect("kubectl is installed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    text.split("\n---\n")
        .map(|document| serde_yaml::from_str::<Value>(document).unwrap())
        .filter(|object| !object.is_null())
        .collect()
}

/// A stand-in for a secret's value, of the shape its setting wants.
fn secret_value(key: &str) -> String {
    match key {
        "WEBHOOK_SECRETS" => "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
        "OTEL_EXPORTER_OTLP_HEADERS" => "authorization=Bearer%20x".into(),
        _ => "stand-in-secret-0123456789abcdef-0123456789abcdef".into(),
    }
}

/// A container's variables as Kubernetes would set them (secrets as stand-ins; optional secret
/// keys unset).
fn container_env(container: &Value, config_maps: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let name = source["configMapRef"]["name"].as_str().expect("config maps only");
        let data = config_maps
            .get(name)
            .unwrap_or_else(|| panic!("config map {name} exists"));
        env.extend(data.iter().map(|(key, value)| (key.clone(), value.clone())));
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap().to_string();
        let from = &variable["valueFrom"];
        let value = if let Some(value) = variable["value"].as_str() {
            value.to_string()
        } else if from["secretKeyRef"].is_object() {
            if from["secretKeyRef"]["optional"] == true {
                continue;
            }
            secret_value(from["secretKeyRef"]["key"].as_str().unwrap())
        } else if let Some(key) = from["configMapKeyRef"]["key"].as_str() {
            let map = from["configMapKeyRef"]["name"].as_str().unwrap();
            config_maps[map][key].clone()
        } else if from["fieldRef"].is_object() {
            "download-processor-7d9f8-abcde".into()
        } else {
            panic!("unknown source of {name}: {variable}");
        };
        env.retain(|(key, _)| *key != name);
        env.push((name, value));
    }
    env
}

/// Whether `container` takes `variable` from the Secret `secret` (not a default, not a map).
fn from_secret(container: &Value, variable: &str, secret: &str) -> bool {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|entry| entry["name"] == variable && entry["valueFrom"]["secretKeyRef"]["name"] == secret)
}

/// What runs S3 code: its credentials come from the S3 Secret (the settings would otherwise
/// fall back to the dev stack's), and its pod may reach S3 (the NetworkPolicy's label).
fn assert_reaches_s3(what: &str, container: &Value, pod_labels: &Value) {
    for variable in ["S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"] {
        assert!(
            from_secret(container, variable, "download-s3"),
            "{what} takes {variable} from download-s3"
        );
    }
    assert_eq!(pod_labels["download-service/s3-client"], "true", "{what} may reach S3");
}

/// Variables read by the OpenTelemetry SDK or the log setup from the process itself, not
/// through the service's settings.
const READ_BY_THE_SDK: &[&str] = &[
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "LOG_FORMAT",
    "RUST_LOG",
];

/// Parses `env` as `service`'s settings (and its trace settings); the names it read.
fn parse_as(service: &str, env: &[(String, String)]) -> BTreeSet<String> {
    let snapshot = common::config::Env::from_pairs(env.iter().cloned());
    let parsed = match service {
        "intake" => intake::settings::Settings::from_env(&snapshot).map(drop),
        "processor" => processor::Settings::from_env(&snapshot).map(drop),
        "notifier" => notifier::Settings::from_env(&snapshot).map(drop),
        "presigner" => presigner::Settings::from_env(&snapshot).map(drop),
        other => panic!("no service {other}"),
    };
    parsed.unwrap_or_else(|error| panic!("{service}'s variables do not parse: {error}"));
    common::telemetry::TraceSettings::from_env(&snapshot, service)
        .unwrap_or_else(|error| panic!("{service}'s trace variables do not parse: {error}"));
    snapshot.asked()
}

#[test]
fn the_kubernetes_manifests_configure_each_service_as_its_code_reads_it() {
    let objects = rendered_production();
    let of_kind = |kind: &'static str| objects.iter().filter(move |object| object["kind"] == kind);
    let config_maps: BTreeMap<String, BTreeMap<String, String>> = of_kind("ConfigMap")
        .map(|map| {
            let data = map["data"].as_object().cloned().unwrap_or_default();
            let data = data
                .into_iter()
                .map(|(key, value)| (key, value.as_str().unwrap_or_default().to_string()))
                .collect();
            (map["metadata"]["name"].as_str().unwrap().to_string(), data)
        })
        .collect();

    let mut services = BTreeSet::new();
    // What the pods are given and what their services read (a shared config map gives some
    // services settings only others read; a setting that no service reads is misspelt or stale).
    let (mut given, mut read) = (BTreeSet::new(), BTreeSet::new());
    for deployment in of_kind("Deployment") {
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let service = container["name"].as_str().unwrap();
        services.insert(service.to_string());
        assert_eq!(container["command"][0], format!("/usr/local/bin/{service}"));
        let env = container_env(container, &config_maps);
        read.extend(parse_as(service, &env));
        given.extend(env.iter().map(|(name, _)| name.clone()));
        let value = |name: &str| env.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
        // Its own NATS user, its port, its probes, a grace period above its drain.
        assert_eq!(value("NATS_USER").as_deref(), Some(service), "{service}'s NATS user");
        let port_variable = if matches!(service, "intake" | "notifier") {
            "PORT"
        } else {
            "METRICS_PORT"
        };
        let port = value(port_variable).unwrap_or_else(|| panic!("{service} sets {port_variable}"));
        assert_eq!(container["ports"][0]["containerPort"].to_string(), port, "{service}");
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"],
            common::readiness::LIVE_PATH
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"],
            common::readiness::READY_PATH
        );
        // The pod outlives its drain: a processor's running jobs, an intake's requests (after
        // the preStop pause), a notifier's and presigner's quick stop.
        let drain_seconds = match service {
            "processor" => value("SHUTDOWN_GRACE_SECONDS").map_or(30, |grace| grace.parse().unwrap()),
            "intake" => {
                let request_ms: u64 = value("REQUEST_TIMEOUT_MS").map_or(30_000, |ms| ms.parse().unwrap());
                let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
                    .as_u64()
                    .unwrap_or(0);
                request_ms.div_ceil(1000) + pause
            }
            _ => 10,
        };
        assert!(
            pod["terminationGracePeriodSeconds"].as_u64().unwrap() > drain_seconds,
            "{service}: the pod outlives its drain of {drain_seconds} s"
        );
        if matches!(service, "intake" | "processor") {
            assert_reaches_s3(
                service,
                container,
                &deployment["spec"]["template"]["metadata"]["labels"],
            );
        }
        assert_eq!(
            value("NATS_PROVISION").as_deref(),
            Some("false"),
            "{service} provisions nothing itself"
        );
    }
    assert_eq!(
        services,
        ["intake", "notifier", "presigner", "processor"]
            .map(String::from)
            .into()
    );
    let unread: Vec<&String> = given
        .iter()
        .filter(|name| !read.contains(*name) && !READ_BY_THE_SDK.contains(&name.as_str()))
        .collect();
    assert!(unread.is_empty(), "settings no service reads: {unread:?}");

    // Every service's provisioning step runs as the admin, with settings that parse.
    let job = of_kind("Job").next().expect("a provisioning job");
    let steps: Vec<&Value> = job["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(job["spec"]["template"]["spec"]["containers"].as_array().unwrap())
        .collect();
    let mut provisioned = BTreeSet::new();
    for step in steps {
        let binary = step["command"][0]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(step["command"][1], "provision", "{step}");
        let env = container_env(step, &config_maps);
        parse_as(&binary, &env);
        assert!(
            env.contains(&("NATS_USER".to_string(), "admin".to_string())),
            "{binary} provisions as admin"
        );
        if binary == "processor" {
            // It sets the bucket's lifecycle.
            assert_reaches_s3(
                "processor provision",
                step,
                &job["spec"]["template"]["metadata"]["labels"],
            );
        }
        provisioned.insert(binary);
    }
    assert_eq!(provisioned, services, "every service's resources are provisioned");

    // The processors scale on the backlog of the stream and consumer the code uses.
    let scaled = of_kind("ScaledObject").next().expect("a KEDA ScaledObject");
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "nats-jetstream");
    assert_eq!(trigger["metadata"]["stream"], common::names::JOBS_STREAM);
    assert_eq!(trigger["metadata"]["consumer"], common::names::PROCESSOR_CONSUMER);
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "download-processor");

    // Streams reach the notifier, unbuffered, with a read timeout far above the heartbeat.
    let stream_ingress = of_kind("Ingress")
        .find(|ingress| {
            ingress["spec"]["rules"][0]["http"]["paths"][0]["path"]
                .as_str()
                .is_some_and(|path| path.ends_with("/stream$"))
        })
        .expect("an ingress for the streams");
    let backend = &stream_ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"];
    assert_eq!(backend, "download-notifier");
    let annotations = &stream_ingress["metadata"]["annotations"];
    assert_eq!(annotations["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
    let read_timeout: u64 = annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let heartbeat: u64 = config_maps
        .values()
        .find_map(|data| data.get("SSE_HEARTBEAT_SECONDS"))
        .map_or(15, |seconds| seconds.parse().unwrap());
    assert!(
        read_timeout >= 2 * heartbeat,
        "{read_timeout} s vs a heartbeat every {heartbeat} s"
    );
}

/// One end of a connection: a pod (its namespace and labels) or an address outside the cluster.
enum Peer<'a> {
    Pod(&'a str, BTreeMap<String, String>),
    Address(std::net::Ipv4Addr),
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_string(), (*value).to_string()))
        .collect()
}

/// Whether a label selector (`matchLabels`, `matchExpressions` with `In`) selects `labels`.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(key, value)| labels.get(key).map(String::as_str) == value.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|expression| {
            assert_eq!(expression["operator"], "In", "only In is modelled: {expression}");
            let values: Vec<&str> = expression["values"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            labels
                .get(expression["key"].as_str().unwrap())
                .is_some_and(|value| values.contains(&value.as_str()))
        });
    by_labels && by_expressions
}

/// Whether one `to`/`from` entry of a policy in `namespace` matches `peer`.
fn peer_matches(entry: &Value, namespace: &str, peer: &Peer) -> bool {
    match peer {
        Peer::Address(address) => {
            entry["ipBlock"].is_object() && {
                let within = |cidr: &str| {
                    let (network, bits) = cidr.split_once('/').unwrap();
                    let Ok(network) = network.parse::<std::net::Ipv4Addr>() else {
                        return false; // an IPv6 block
                    };
                    let bits: u32 = bits.parse().unwrap();
                    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
                    u32::from(*address) & mask == u32::from(network) & mask
                };
                within(entry["ipBlock"]["cidr"].as_str().unwrap())
                    && !entry["ipBlock"]["except"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|except| within(except.as_str().unwrap()))
            }
        }
        Peer::Pod(peer_namespace, pod_labels) => {
            if entry["ipBlock"].is_object() {
                return false;
            }
            let namespace_ok = match entry.get("namespaceSelector") {
                Some(selector) => selects(selector, &labels(&[("kubernetes.io/metadata.name", peer_namespace)])),
                None => *peer_namespace == namespace,
            };
            let pod_ok = entry
                .get("podSelector")
                .is_none_or(|selector| selects(selector, pod_labels));
            namespace_ok && pod_ok
        }
    }
}

/// Whether the policies let `peer` reach `pod` (`ingress`) or `pod` reach `peer` (egress) on
/// `port`: the pod is isolated in that direction when a policy selects it, and then one of
/// those policies must have a rule matching the peer and the port.
fn allowed(policies: &[&Value], pod: &BTreeMap<String, String>, ingress: bool, peer: &Peer, port: u64) -> bool {
    let (kind, rules_key, peers_key) = if ingress {
        ("Ingress", "ingress", "from")
    } else {
        ("Egress", "egress", "to")
    };
    let selecting: Vec<&&Value> = policies
        .iter()
        .filter(|policy| {
            policy["spec"]["policyTypes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|value| value == kind)
                && selects(&policy["spec"]["podSelector"], pod)
        })
        .collect();
    if selecting.is_empty() {
        return true;
    }
    selecting.iter().any(|policy| {
        let namespace = policy["metadata"]["namespace"].as_str().unwrap_or("downloads");
        policy["spec"][rules_key].as_array().into_iter().flatten().any(|rule| {
            let peers_ok = rule[peers_key]
                .as_array()
                .is_none_or(|peers| peers.iter().any(|entry| peer_matches(entry, namespace, peer)));
            let ports_ok = rule["ports"].as_array().is_none_or(|ports| {
                ports
                    .iter()
                    .any(|entry| entry.get("port").is_none_or(|value| value.as_u64() == Some(port)))
            });
            peers_ok && ports_ok
        })
    })
}

/// Every connection the system needs passes the NetworkPolicies, from both ends where both are
/// in the namespace, and what it must not do does not: services and the provisioning Job to
/// NATS, what runs S3 code to S3, the notifier to webhook receivers (not to private addresses),
/// the ingress controller to the intake and notifier, Prometheus to every metrics port, KEDA to
/// NATS's monitoring port, everything to DNS; nobody else to the intake.
#[test]
fn the_network_policies_let_through_what_the_system_needs_and_nothing_else() {
    let objects = rendered_production();
    let policies: Vec<&Value> = objects
        .iter()
        .filter(|object| object["kind"] == "NetworkPolicy")
        .collect();
    let pod_of = |kind: &str, name: &str| -> BTreeMap<String, String> {
        let object = objects
            .iter()
            .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name}"));
        serde_json::from_value(object["spec"]["template"]["metadata"]["labels"].clone()).unwrap()
    };
    let services = ["intake", "processor", "notifier", "presigner"];
    let pods: BTreeMap<&str, BTreeMap<String, String>> = services
        .iter()
        .map(|service| (*service, pod_of("Deployment", &format!("download-{service}"))))
        .chain([("provision", pod_of("Job", "download-provision"))])
        .collect();
    let nats = labels(&[
        ("app.kubernetes.io/name", "nats"),
        ("app.kubernetes.io/instance", "nats"),
    ]);
    let s3 = Peer::Address("52.216.8.10".parse().unwrap());
    let receiver = Peer::Address("203.0.113.10".parse().unwrap());
    let private_receiver = Peer::Address("10.1.2.3".parse().unwrap());
    let dns = Peer::Pod("kube-system", labels(&[("k8s-app", "kube-dns")]));
    let ingress_controller = Peer::Pod("ingress-nginx", labels(&[("app.kubernetes.io/name", "ingress-nginx")]));
    let prometheus = Peer::Pod("monitoring", labels(&[("app.kubernetes.io/name", "prometheus")]));
    let keda = Peer::Pod("keda", labels(&[("app", "keda-operator")]));
    let stranger = Peer::Pod("default", labels(&[("app", "curious")]));

    for (name, pod) in &pods {
        assert!(
            allowed(&policies, pod, false, &Peer::Pod("downloads", nats.clone()), 4222),
            "{name} → NATS"
        );
        assert!(
            allowed(&policies, &nats, true, &Peer::Pod("downloads", pod.clone()), 4222),
            "NATS ← {name}"
        );
        assert!(allowed(&policies, pod, false, &dns, 53), "{name} → DNS");
        let runs_s3_code = matches!(*name, "intake" | "processor" | "provision");
        assert_eq!(
            allowed(&policies, pod, false, &s3, 443),
            runs_s3_code || *name == "notifier",
            "{name} → S3's address"
        );
    }
    assert!(
        allowed(&policies, &pods["notifier"], false, &receiver, 443),
        "notifier → a webhook receiver"
    );
    assert!(
        !allowed(&policies, &pods["notifier"], false, &private_receiver, 443),
        "notifier ↛ a private address"
    );
    assert!(
        !allowed(&policies, &pods["presigner"], false, &receiver, 443),
        "the presigner calls nobody outside"
    );
    for (service, port) in [("intake", 3000), ("notifier", 3001)] {
        assert!(
            allowed(&policies, &pods[service], true, &ingress_controller, port),
            "ingress → {service}"
        );
        assert!(
            !allowed(&policies, &pods[service], true, &stranger, port),
            "a stranger ↛ {service}"
        );
    }
    for (service, port) in [
        ("intake", 3000),
        ("notifier", 3001),
        ("processor", 9090),
        ("presigner", 9090),
    ] {
        assert!(
            allowed(&policies, &pods[service], true, &prometheus, port),
            "Prometheus → {service}:{port}"
        );
    }
    assert!(allowed(&policies, &nats, true, &keda, 8222), "KEDA → NATS monitoring");
    assert!(!allowed(&policies, &nats, true, &stranger, 4222), "a stranger ↛ NATS");
}
