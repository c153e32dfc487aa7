//! The operator files in `observability/` hold together: promtool accepts the Prometheus
//! configuration and the alert rules, the rules' unit tests pass, every alert is tested firing and
//! silent and tells the operator what to do, and the alerts and the dashboard query only the
//! metrics that `observability/README.md` documents. Needs `promtool` (Debian's `prometheus`
//! package, installed by `deploy/local/install`); no servers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use system_tests::servers::workspace_root;

/// Suffixes of the series a histogram is exported as.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Grafana's interval variables, replaced by a duration to check a dashboard query as PromQL.
const GRAFANA_INTERVALS: [&str; 4] = ["$__rate_interval", "$__interval", "$__range", "${__range}"];

fn observability_dir() -> PathBuf {
    workspace_root().join("observability")
}

fn read_observability_file(name: &str) -> String {
    let path = observability_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// The metrics of the table in `observability/README.md`: name to type (`counter`, `gauge`,
/// `histogram`). Also for tests that compare a service's real `/metrics` output with the contract.
pub fn documented_metrics() -> BTreeMap<String, String> {
    let readme = read_observability_file("README.md");
    let mut metrics = BTreeMap::new();
    let mut in_metrics_table = false;
    for line in readme.lines() {
        let line = line.trim();
        if line.starts_with("| Metric |") {
            in_metrics_table = true;
            continue;
        }
        if !in_metrics_table {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(name_cell), Some(type_cell)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Some(name) = name_cell.strip_prefix('`').and_then(|rest| rest.strip_suffix('`')) else {
            continue; // the separator row
        };
        let metric_type = type_cell.split_whitespace().next().unwrap_or_default();
        metrics.insert(name.to_string(), metric_type.to_string());
    }
    metrics
}

/// Whether a series name is a documented metric, or a series of a documented histogram.
fn is_documented_series(name: &str, documented: &BTreeMap<String, String>) -> bool {
    if name == "up" || documented.contains_key(name) {
        return true;
    }
    HISTOGRAM_SUFFIXES.iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|base| documented.get(base))
            .is_some_and(|metric_type| metric_type == "histogram")
    })
}

/// The identifiers of a PromQL expression that name this system's metrics (`download_…`), label
/// values (quoted strings) left out.
fn metric_names_in(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for character in expression.chars().chain([' ']) {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if character == '\\' {
                escaped = true;
            } else if character == open {
                quote = None;
            }
            continue;
        }
        if character.is_ascii_alphanumeric() || character == '_' || character == ':' {
            current.push(character);
            continue;
        }
        if current.starts_with("download_") {
            names.insert(current.clone());
        }
        current.clear();
        if matches!(character, '"' | '\'' | '`') {
            quote = Some(character);
        }
    }
    names
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The `expr` of every rule of a rules file, inline or as a block scalar (`expr: |`).
fn rule_expressions(rules_yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = rules_yaml.lines().collect();
    let mut expressions = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        index += 1;
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with('|') && !rest.starts_with('>') {
            expressions.push(rest.to_string());
            continue;
        }
        let mut block = String::new();
        while index < lines.len() && (lines[index].trim().is_empty() || indentation(lines[index]) > indentation(line)) {
            block.push_str(lines[index].trim());
            block.push('\n');
            index += 1;
        }
        expressions.push(block);
    }
    expressions
}

/// Each alert of a rules file: its name and the lines of its rule.
fn alert_rules(rules_yaml: &str) -> Vec<(String, String)> {
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in rules_yaml.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push((name.trim().to_string(), String::new()));
            continue;
        }
        if trimmed.starts_with("- record:") || trimmed.starts_with("- name:") {
            continue;
        }
        if let Some((_, body)) = rules.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    rules
}

/// The alerts a promtool test file expects to fire at some evaluation, and those it expects
/// silent at some evaluation (`exp_alerts: []`).
fn tested_alerts(test_yaml: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    let mut current_alert: Option<String> = None;
    for line in test_yaml.lines() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("alertname:") {
            current_alert = Some(name.trim().to_string());
        } else if let Some(expected) = trimmed.strip_prefix("exp_alerts:") {
            let alert = current_alert.take().expect("exp_alerts follows an alertname");
            if expected.trim() == "[]" {
                silent.insert(alert);
            } else {
                firing.insert(alert);
            }
        }
    }
    (firing, silent)
}

/// Runs promtool in `directory`, asserts it succeeded and returns what it printed.
fn promtool(directory: &Path, arguments: &[&str]) -> String {
    promtool_with_input(directory, arguments, "")
}

/// Runs promtool in `directory` with `input` on its standard input (`check metrics` reads the
/// exposition there), asserts it succeeded and returns what it printed.
pub fn promtool_with_input(directory: &Path, arguments: &[&str], input: &str) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let spawned = Command::new("promtool")
        .args(arguments)
        .current_dir(directory)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is missing: run deploy/local/install (it installs Debian's prometheus package, /usr/bin/promtool)"
        ),
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n{printed}",
        arguments.join(" "),
        output.status
    );
    printed
}

/// The dashboard's panels, those nested in collapsed rows included.
fn dashboard_panels(dashboard: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    panels
}

fn panel_expressions(panel: &Value) -> Vec<String> {
    panel["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|target| target["expr"].as_str())
        .filter(|expression| !expression.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_metrics_table_documents_names_and_types_prometheus_style() {
    let documented = documented_metrics();
    assert!(
        documented.len() >= 20,
        "the README's metrics table is read: {documented:?}"
    );
    for (name, metric_type) in &documented {
        assert!(name.starts_with("download_"), "{name} is prefixed download_");
        match metric_type.as_str() {
            "counter" => assert!(name.ends_with("_total"), "counter {name} ends in _total"),
            "histogram" => assert!(name.ends_with("_seconds"), "histogram {name} is in seconds"),
            "gauge" => {}
            other => panic!("{name} has an unknown type {other:?}"),
        }
    }
}

#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests_pass() {
    let directory = observability_dir();
    let checked = promtool(&directory, &["check", "rules", "alerts.yml"]);
    println!("{checked}");
    let tested = promtool(&directory, &["test", "rules", "alerts.test.yml"]);
    println!("{tested}");
}

#[test]
fn promtool_accepts_the_prometheus_configuration_and_its_rule_files() {
    let checked = promtool(&observability_dir(), &["check", "config", "prometheus.yml"]);
    println!("{checked}");
    assert!(
        checked.contains("alerts.yml"),
        "the configuration loads alerts.yml:\n{checked}"
    );
}

#[test]
fn every_alert_is_tested_firing_and_silent_and_tells_the_operator_what_to_do() {
    let rules = alert_rules(&read_observability_file("alerts.yml"));
    assert!(!rules.is_empty(), "alerts.yml holds alerts");
    let (firing, silent) = tested_alerts(&read_observability_file("alerts.test.yml"));
    for (alert, body) in &rules {
        for key in ["severity:", "summary:", "description:", "runbook:"] {
            assert!(body.contains(key), "{alert} has {key}");
        }
        assert!(firing.contains(alert), "alerts.test.yml has a case where {alert} fires");
        assert!(
            silent.contains(alert),
            "alerts.test.yml has a case where {alert} stays silent"
        );
    }
    let defined: BTreeSet<&String> = rules.iter().map(|(alert, _)| alert).collect();
    for alert in firing.iter().chain(&silent) {
        assert!(
            defined.contains(alert),
            "alerts.test.yml tests {alert}, which alerts.yml does not define"
        );
    }
}

#[test]
fn the_alerts_query_only_documented_metrics() {
    let documented = documented_metrics();
    let alerts = read_observability_file("alerts.yml");
    let expressions = rule_expressions(&alerts);
    assert_eq!(
        expressions.len(),
        alert_rules(&alerts).len(),
        "one expression per alert is read: {expressions:#?}"
    );
    for expression in &expressions {
        let names = metric_names_in(expression);
        assert!(
            !names.is_empty() || expression.contains("up{"),
            "the expression queries a metric: {expression}"
        );
        for name in names {
            assert!(
                is_documented_series(&name, &documented),
                "alerts.yml queries {name}, which observability/README.md does not document:\n{expression}"
            );
        }
    }
}

#[test]
fn the_dashboard_queries_only_documented_metrics_in_valid_promql() {
    let documented = documented_metrics();
    let dashboard: Value = serde_json::from_str(&read_observability_file("grafana-dashboard.json"))
        .expect("grafana-dashboard.json is valid JSON");
    let panels = dashboard_panels(&dashboard);
    assert!(!panels.is_empty(), "the dashboard has panels");

    let mut rules_yaml = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, panel) in panels.iter().enumerate() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or_default();
        let expressions = panel_expressions(panel);
        assert!(!expressions.is_empty(), "panel {title:?} has a target with an expr");
        for (target, expression) in expressions.iter().enumerate() {
            for name in metric_names_in(expression) {
                assert!(
                    is_documented_series(&name, &documented),
                    "panel {title:?} queries {name}, which observability/README.md does not document:\n{expression}"
                );
            }
            let promql = GRAFANA_INTERVALS
                .iter()
                .fold(expression.clone(), |promql, variable| promql.replace(variable, "5m"));
            // A JSON string is a valid YAML double-quoted scalar.
            let quoted = serde_json::to_string(&promql).unwrap();
            rules_yaml.push_str(&format!(
                "      - record: dashboard:panel_{index}:target_{target}\n        expr: {quoted}\n"
            ));
        }
    }
    // promtool parses each query as the expression of a recording rule.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("dashboard-queries.yml"), rules_yaml).unwrap();
    promtool(scratch.path(), &["check", "rules", "dashboard-queries.yml"]);
}

#[test]
fn the_metric_name_scanner_skips_label_values_and_functions() {
    let names = metric_names_in(
        r#"histogram_quantile(0.95, sum by (le, route) (rate(download_http_request_duration_seconds_bucket{route="/v1/download_x"}[5m])))"#,
    );
    assert_eq!(
        names,
        BTreeSet::from(["download_http_request_duration_seconds_bucket".to_string()])
    );
    let documented = BTreeMap::from([
        ("download_job_duration_seconds".to_string(), "histogram".to_string()),
        ("download_jobs_accepted_total".to_string(), "counter".to_string()),
    ]);
    assert!(is_documented_series("download_job_duration_seconds_count", &documented));
    assert!(!is_documented_series("download_jobs_accepted_total_count", &documented));
    assert!(!is_documented_series("download_jobs_accepted", &documented));
}
