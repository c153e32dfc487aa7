//! Traces as text waterfalls, what Jaeger would draw: per trace, its spans in tree order
//! (children under their parent, by start), with service, kind, name, start offset, duration, a
//! timeline bar and the status.
//!
//! ```text
//! trace 4bf92f3577b34da6a3ce929d0e0e4736 · 3 spans · 12.40 ms · intake, processor · job 0190…
//! service    kind      span                              start ms    dur ms  timeline                                  status
//! intake     server    POST /v1/download/initiate            0.00      3.10  ██████████──────────────────────────────  ok
//! intake     producer    publish downloads.jobs              1.20      0.80  ────███───────────────────────────────────
//! processor  consumer      process downloads.jobs            4.00      8.40  ────────────██████████████████████████████  error: storage unavailable
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt::Write;

use super::record::{SpanKind, SpanRecord, SpanStatus};

/// Width of the timeline bar, in characters.
const BAR_WIDTH: usize = 40;
/// The span column is cut to this many characters (indentation included).
const MAX_NAME_WIDTH: usize = 72;

/// Every trace among `spans` as a waterfall, traces ordered by their first span's start.
pub fn waterfall(spans: &[SpanRecord]) -> String {
    let mut traces: Vec<(&str, Vec<&SpanRecord>)> = Vec::new();
    for span in spans {
        match traces.iter_mut().find(|(trace_id, _)| *trace_id == span.trace_id) {
            Some((_, members)) => members.push(span),
            None => traces.push((&span.trace_id, vec![span])),
        }
    }
    traces.sort_by_key(|(trace_id, members)| (first_start(members), *trace_id));
    let mut text = String::new();
    for (index, (trace_id, members)) in traces.iter().enumerate() {
        if index > 0 {
            text.push('\n');
        }
        write_trace(&mut text, trace_id, members);
    }
    if traces.is_empty() {
        text.push_str("(no spans)\n");
    }
    text
}

fn first_start(spans: &[&SpanRecord]) -> u64 {
    spans.iter().map(|span| span.start_unix_nano).min().unwrap_or_default()
}

/// One line of a waterfall: a span at its depth in the tree.
#[derive(Debug)]
struct Row<'a> {
    span: &'a SpanRecord,
    depth: usize,
    /// Why a span with a parent is shown as a root.
    note: Option<&'static str>,
}

/// Spans of one trace in tree order: roots by start, each followed by its children (by start),
/// depth first. A span whose parent is not among them is a root noted `(parent not received)`.
fn tree_rows<'a>(spans: &[&'a SpanRecord]) -> Vec<Row<'a>> {
    let by_start = |left: &&SpanRecord, right: &&SpanRecord| {
        (left.start_unix_nano, left.end_unix_nano, &left.name).cmp(&(
            right.start_unix_nano,
            right.end_unix_nano,
            &right.name,
        ))
    };
    let ids: HashSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
    let mut roots: Vec<&SpanRecord> = Vec::new();
    for span in spans {
        match span.parent_span_id.as_deref() {
            Some(parent) if ids.contains(parent) => children.entry(parent).or_default().push(span),
            _ => roots.push(span),
        }
    }
    roots.sort_by(by_start);
    for siblings in children.values_mut() {
        siblings.sort_by(by_start);
    }
    let mut rows = Vec::with_capacity(spans.len());
    // A span id seen twice (a batch exported again) lists its children once.
    let mut expanded: HashSet<&str> = HashSet::new();
    let mut stack: Vec<(&SpanRecord, usize)> = roots.iter().rev().map(|span| (*span, 0)).collect();
    while let Some((span, depth)) = stack.pop() {
        let note = (depth == 0 && span.parent_span_id.is_some()).then_some("(parent not received)");
        rows.push(Row { span, depth, note });
        if !expanded.insert(span.span_id.as_str()) {
            continue;
        }
        if let Some(siblings) = children.get(span.span_id.as_str()) {
            stack.extend(siblings.iter().rev().map(|child| (*child, depth + 1)));
        }
    }
    if rows.len() == spans.len() {
        return rows;
    }
    // Spans whose parents form a cycle are reached from no root: still show them.
    let mut unreached: Vec<&SpanRecord> = spans
        .iter()
        .copied()
        .filter(|span| !rows.iter().any(|row| std::ptr::eq(row.span, *span)))
        .collect();
    unreached.sort_by(by_start);
    rows.extend(unreached.into_iter().map(|span| Row {
        span,
        depth: 0,
        note: Some("(parent cycle)"),
    }));
    rows
}

/// A timeline of `BAR_WIDTH` characters: `█` where the span runs within the trace's
/// `[trace_start, trace_end]`, `─` elsewhere; at least one `█`.
fn bar(span: &SpanRecord, trace_start: u64, trace_end: u64) -> String {
    let length = trace_end.saturating_sub(trace_start).max(1) as f64;
    let position = |at: u64| at.saturating_sub(trace_start) as f64 / length * BAR_WIDTH as f64;
    let first = (position(span.start_unix_nano).floor() as usize).min(BAR_WIDTH - 1);
    let last = (position(span.end_unix_nano).ceil() as usize).clamp(first + 1, BAR_WIDTH);
    (0..BAR_WIDTH)
        .map(|cell| if (first..last).contains(&cell) { '█' } else { '─' })
        .collect()
}

fn kind_label(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Unspecified => "-",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    }
}

fn status_label(span: &SpanRecord) -> String {
    match (span.status, span.status_message.is_empty()) {
        (SpanStatus::Unset, _) => String::new(),
        (SpanStatus::Ok, _) => "ok".to_string(),
        (SpanStatus::Error, true) => "error".to_string(),
        (SpanStatus::Error, false) => format!("error: {}", span.status_message),
    }
}

fn milliseconds(nanos: u64) -> f64 {
    nanos as f64 / 1_000_000.0
}

/// `text` cut to `width` characters, the last one `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut kept: String = text.chars().take(width.saturating_sub(1)).collect();
    kept.push('…');
    kept
}

fn write_trace(text: &mut String, trace_id: &str, spans: &[&SpanRecord]) {
    let rows = tree_rows(spans);
    let trace_start = first_start(spans);
    let trace_end = spans
        .iter()
        .map(|span| span.end_unix_nano)
        .max()
        .unwrap_or(trace_start)
        .max(trace_start);
    let mut services: Vec<&str> = Vec::new();
    for span in spans {
        if !services.contains(&span.service.as_str()) {
            services.push(&span.service);
        }
    }
    let jobs: Vec<&str> = {
        let mut jobs: Vec<&str> = spans.iter().filter_map(|span| span.job_id()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        jobs
    };
    let _ = write!(
        text,
        "trace {trace_id} · {} span{} · {:.2} ms · {}",
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        milliseconds(trace_end - trace_start),
        services.join(", ")
    );
    if !jobs.is_empty() {
        let _ = write!(text, " · job {}", jobs.join(", "));
    }
    text.push('\n');

    let service_width = rows
        .iter()
        .map(|row| row.span.service.chars().count())
        .chain(["service".len()])
        .max()
        .unwrap_or_default();
    let kind_width = "consumer".len();
    let label = |row: &Row| {
        let mut label = format!("{}{}", "  ".repeat(row.depth), row.span.name);
        if let Some(note) = row.note {
            label.push(' ');
            label.push_str(note);
        }
        cut(&label, MAX_NAME_WIDTH)
    };
    let name_width = rows
        .iter()
        .map(|row| label(row).chars().count())
        .chain(["span".len()])
        .max()
        .unwrap_or_default();
    let _ = writeln!(
        text,
        "{:<service_width$}  {:<kind_width$}  {:<name_width$}  {:>10}  {:>10}  {:<BAR_WIDTH$}  status",
        "service", "kind", "span", "start ms", "dur ms", "timeline"
    );
    for row in &rows {
        let span = row.span;
        let line = format!(
            "{:<service_width$}  {:<kind_width$}  {:<name_width$}  {:>10.2}  {:>10.2}  {}  {}",
            span.service,
            kind_label(span.kind),
            label(row),
            milliseconds(span.start_unix_nano.saturating_sub(trace_start)),
            milliseconds(span.end_unix_nano.saturating_sub(span.start_unix_nano)),
            bar(span, trace_start, trace_end),
            status_label(span),
        );
        text.push_str(line.trim_end());
        text.push('\n');
        for link in &span.links {
            let target = if link.trace_id == span.trace_id {
                format!("span {} of this trace", link.span_id)
            } else {
                format!("trace {} (span {})", link.trace_id, link.span_id)
            };
            let _ = writeln!(
                text,
                "{:<service_width$}  {:<kind_width$}  {}  ↪ linked to {target}",
                "",
                "",
                "  ".repeat(row.depth)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::otlp::record::SpanLink;

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

    /// A span of `TRACE` from `start_ms` to `end_ms`.
    fn span(id: &str, parent: Option<&str>, name: &str, start_ms: u64, end_ms: u64) -> SpanRecord {
        SpanRecord {
            trace_id: TRACE.to_string(),
            span_id: id.to_string(),
            parent_span_id: parent.map(str::to_string),
            name: name.to_string(),
            kind: SpanKind::Internal,
            attributes: Map::new(),
            events: Vec::new(),
            links: Vec::new(),
            status: SpanStatus::Unset,
            status_message: String::new(),
            start_unix_nano: 1_700_000_000_000_000_000 + start_ms * 1_000_000,
            end_unix_nano: 1_700_000_000_000_000_000 + end_ms * 1_000_000,
            service: "intake".to_string(),
            resource: Map::new(),
            scope: String::new(),
        }
    }

    /// The span column of each line after the trace's two header lines.
    fn names(text: &str) -> Vec<String> {
        text.lines()
            .skip(2)
            .map(|line| line.split("  ").filter(|cell| !cell.is_empty()).collect::<Vec<_>>())
            .map(|cells| cells[2].to_string())
            .collect()
    }

    #[test]
    fn children_follow_their_parent_by_start_and_are_indented_by_depth() {
        let spans = vec![
            span("b", Some("a"), "second child", 5, 9),
            span("d", Some("b"), "grandchild", 6, 7),
            span("a", None, "root", 0, 10),
            span("c", Some("a"), "first child", 2, 4),
        ];
        let rows = tree_rows(&spans.iter().collect::<Vec<_>>());
        let order: Vec<(&str, usize)> = rows.iter().map(|row| (row.span.name.as_str(), row.depth)).collect();
        assert_eq!(
            order,
            [("root", 0), ("first child", 1), ("second child", 1), ("grandchild", 2)]
        );
        let text = waterfall(&spans);
        assert!(text.starts_with(&format!("trace {TRACE} · 4 spans · 10.00 ms · intake\n")));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].contains("  root  "), "{text}");
        assert!(lines[3].contains("    first child  "), "{text}");
        assert!(lines[5].contains("      grandchild  "), "{text}");
    }

    #[test]
    fn a_span_whose_parent_did_not_arrive_is_a_root_marked_as_such() {
        let spans = vec![
            span("a", None, "root", 0, 10),
            span("x", Some("never-sent"), "orphan", 3, 4),
        ];
        let text = waterfall(&spans);
        assert_eq!(names(&text), ["root", "orphan (parent not received)"], "{text}");
    }

    #[test]
    fn spans_in_a_parent_cycle_are_still_shown() {
        let spans = vec![span("a", Some("b"), "one", 0, 2), span("b", Some("a"), "two", 1, 2)];
        let text = waterfall(&spans);
        assert_eq!(names(&text), ["one (parent cycle)", "two (parent cycle)"], "{text}");
    }

    #[test]
    fn the_bar_places_a_span_on_the_traces_timeline() {
        let root = span("a", None, "root", 0, 100);
        let late = span("b", Some("a"), "second half", 50, 100);
        let instant = span("c", Some("a"), "instant", 25, 25);
        let (start, end) = (root.start_unix_nano, root.end_unix_nano);
        assert_eq!(bar(&root, start, end), "█".repeat(40));
        assert_eq!(bar(&late, start, end), format!("{}{}", "─".repeat(20), "█".repeat(20)));
        assert_eq!(
            bar(&instant, start, end),
            format!("{}█{}", "─".repeat(10), "─".repeat(29)),
            "a span of no duration still shows"
        );
    }

    #[test]
    fn offsets_durations_statuses_and_links_are_shown() {
        let mut root = span("a", None, "POST /v1/download/initiate", 0, 40);
        root.kind = SpanKind::Server;
        root.status = SpanStatus::Ok;
        let mut failed = span("b", Some("a"), "HeadObject", 10, 25);
        failed.service = "processor".to_string();
        failed.kind = SpanKind::Client;
        failed.status = SpanStatus::Error;
        failed.status_message = "storage unavailable".to_string();
        failed.links = vec![SpanLink {
            trace_id: "ffffffffffffffffffffffffffffffff".to_string(),
            span_id: "00f067aa0ba902b7".to_string(),
            attributes: Map::new(),
        }];
        let text = waterfall(&[root, failed]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(text.starts_with(&format!("trace {TRACE} · 2 spans · 40.00 ms · intake, processor\n")));
        assert!(lines[1].starts_with("service    kind      span "), "{text}");
        assert!(
            lines[2].starts_with("intake     server    POST /v1/download/initiate  "),
            "{text}"
        );
        assert!(lines[2].contains("      0.00       40.00  "), "{text}");
        assert!(lines[2].ends_with("  ok"), "{text}");
        assert!(lines[3].starts_with("processor  client      HeadObject  "), "{text}");
        assert!(lines[3].contains("     10.00       15.00  "), "{text}");
        assert!(lines[3].ends_with("  error: storage unavailable"), "{text}");
        assert!(
            lines[4].ends_with("  ↪ linked to trace ffffffffffffffffffffffffffffffff (span 00f067aa0ba902b7)"),
            "{text}"
        );
    }

    #[test]
    fn traces_are_listed_by_their_first_start_each_with_its_job() {
        let mut late = span("a", None, "late trace", 50, 60);
        late.trace_id = "2".repeat(32);
        late.attributes.insert("job_id".into(), "job-2".into());
        let mut early = span("b", None, "early trace", 0, 10);
        early.trace_id = "1".repeat(32);
        early.attributes.insert("download.job_id".into(), "job-1".into());
        let text = waterfall(&[late, early]);
        let headers: Vec<&str> = text.lines().filter(|line| line.starts_with("trace ")).collect();
        assert_eq!(headers.len(), 2, "{text}");
        assert!(headers[0].starts_with(&format!("trace {}", "1".repeat(32))) && headers[0].ends_with("· job job-1"));
        assert!(headers[1].ends_with("· job job-2"), "{text}");
        assert_eq!(waterfall(&[]), "(no spans)\n");
    }

    #[test]
    fn a_long_name_is_cut() {
        let long = span("a", None, &"x".repeat(100), 0, 1);
        let text = waterfall(&[long]);
        assert!(text.contains(&format!("{}…", "x".repeat(MAX_NAME_WIDTH - 1))), "{text}");
    }
}
