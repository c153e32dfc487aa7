//! Spans as the rotel receiver writes them (`deploy/local/rotel_spans.py`: one JSON object per
//! line), parsed into [`SpanRecord`]s, and the selection of one job's traces.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Map, Value};

/// Attributes that carry a job's id, on the spans that handle it.
pub const JOB_ID_ATTRIBUTES: [&str; 2] = ["job_id", "download.job_id"];

/// A span's kind (OTLP numbers 1 to 5; anything else is unspecified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// 0, or a number OTLP does not define.
    Unspecified,
    /// 1.
    Internal,
    /// 2.
    Server,
    /// 3.
    Client,
    /// 4.
    Producer,
    /// 5.
    Consumer,
}

impl SpanKind {
    /// The kind of an OTLP number.
    pub fn from_otlp(number: i64) -> Self {
        match number {
            1 => SpanKind::Internal,
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Unspecified,
        }
    }
}

/// A span's status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanStatus {
    /// 0: nothing set (the usual status of a span that went well).
    Unset,
    /// 1: explicitly ok.
    Ok,
    /// 2: failed; the span's `status_message` says why.
    Error,
}

impl SpanStatus {
    /// The status of an OTLP code (unknown codes read as unset).
    pub fn from_otlp(code: i64) -> Self {
        match code {
            1 => SpanStatus::Ok,
            2 => SpanStatus::Error,
            _ => SpanStatus::Unset,
        }
    }
}

/// A link from a span to a span of another (or the same) trace.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanLink {
    /// The linked span's trace id (32 hex digits).
    pub trace_id: String,
    /// The linked span's id (16 hex digits).
    pub span_id: String,
    /// The link's attributes.
    pub attributes: Map<String, Value>,
}

/// An event recorded on a span (a log line inside it, an exception).
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    /// Its name (a log line's message).
    pub name: String,
    /// When it happened.
    pub time_unix_nano: u64,
    /// Its attributes.
    pub attributes: Map<String, Value>,
}

/// One received span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// The parent's span id; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// The span's name (`POST /v1/download/initiate`, `publish downloads.jobs`, ...).
    pub name: String,
    /// Server, client, producer, consumer or internal.
    pub kind: SpanKind,
    /// The span's attributes.
    pub attributes: Map<String, Value>,
    /// Events recorded on the span.
    pub events: Vec<SpanEvent>,
    /// Links to other spans (a status read links to its job's trace).
    pub links: Vec<SpanLink>,
    /// The status code.
    pub status: SpanStatus,
    /// The status message (set on errors).
    pub status_message: String,
    /// When the span started.
    pub start_unix_nano: u64,
    /// When the span ended.
    pub end_unix_nano: u64,
    /// The resource's `service.name` (empty when the resource has none).
    pub service: String,
    /// Every attribute of the resource (`service.name`, `service.version`, ...).
    pub resource: Map<String, Value>,
    /// The instrumentation scope's name.
    pub scope: String,
}

impl SpanRecord {
    /// An attribute, whatever its type.
    pub fn attribute(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    /// A string attribute.
    pub fn attribute_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    /// An integer attribute.
    pub fn attribute_i64(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }

    /// The job id the span carries (`job_id` or `download.job_id`).
    pub fn job_id(&self) -> Option<&str> {
        JOB_ID_ATTRIBUTES.iter().find_map(|key| self.attribute_str(key))
    }

    /// How long the span lasted (zero if it claims to end before it starts).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nano.saturating_sub(self.start_unix_nano))
    }

    /// Whether the span failed.
    pub fn is_error(&self) -> bool {
        self.status == SpanStatus::Error
    }

    /// Parses one line of the spans file.
    pub fn from_json_line(line: &str) -> anyhow::Result<Self> {
        let value: Value = serde_json::from_str(line).context("a span line is not JSON")?;
        Self::from_json(&value)
    }

    /// Reads a span from the object `deploy/local/rotel_spans.py` writes.
    pub fn from_json(value: &Value) -> anyhow::Result<Self> {
        let text = |key: &str| -> anyhow::Result<String> {
            value[key]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("a span without a string {key}"))
        };
        let nanos = |key: &str| -> anyhow::Result<u64> {
            value[key]
                .as_u64()
                .with_context(|| format!("a span without an unsigned {key}"))
        };
        let (trace_id, span_id, name) = (text("trace_id")?, text("span_id")?, text("name")?);
        let resource = object(&value["resource"]);
        let parent = value["parent_span_id"].as_str().unwrap_or_default().to_string();
        let links = value["links"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|link| SpanLink {
                trace_id: link["trace_id"].as_str().unwrap_or_default().to_string(),
                span_id: link["span_id"].as_str().unwrap_or_default().to_string(),
                attributes: object(&link["attributes"]),
            })
            .collect();
        let events = value["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|event| SpanEvent {
                name: event["name"].as_str().unwrap_or_default().to_string(),
                time_unix_nano: event["time_unix_nano"].as_u64().unwrap_or_default(),
                attributes: object(&event["attributes"]),
            })
            .collect();
        Ok(SpanRecord {
            trace_id,
            span_id,
            parent_span_id: (!parent.is_empty()).then_some(parent),
            name,
            kind: SpanKind::from_otlp(value["kind"].as_i64().unwrap_or_default()),
            attributes: object(&value["attributes"]),
            events,
            links,
            status: SpanStatus::from_otlp(value["status"]["code"].as_i64().unwrap_or_default()),
            status_message: value["status"]["message"].as_str().unwrap_or_default().to_string(),
            start_unix_nano: nanos("start_time_unix_nano")?,
            end_unix_nano: nanos("end_time_unix_nano")?,
            service: resource
                .get("service.name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            resource,
            scope: value["scope"]["name"].as_str().unwrap_or_default().to_string(),
        })
    }
}

fn object(value: &Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

/// Every span of a spans file so far (none when the file does not exist yet). The receiver
/// appends whole batches; an unfinished last line (no newline yet) is left for the next read.
pub fn read_spans(path: &Path) -> anyhow::Result<Vec<SpanRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            SpanRecord::from_json_line(line).with_context(|| format!("{} line {}", path.display(), index + 1))
        })
        .collect()
}

/// What the trace processor reported failing (`<spans file>.errors`: one Python traceback a
/// line, its newlines escaped), empty when nothing failed.
pub fn read_processor_errors(spans_path: &Path) -> anyhow::Result<Vec<String>> {
    let errors_path = processor_errors_path(spans_path);
    match std::fs::read_to_string(&errors_path) {
        Ok(text) => Ok(text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| line.replace("\\n", "\n"))
            .collect()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error).with_context(|| format!("reading {}", errors_path.display())),
    }
}

/// Where the trace processor reports its failures: `<spans file>.errors`.
pub fn processor_errors_path(spans_path: &Path) -> PathBuf {
    let mut path = spans_path.as_os_str().to_owned();
    path.push(".errors");
    PathBuf::from(path)
}

/// One job's traces: its own (the spans carrying its id, from the initiate request on), and the
/// traces linked to them (status reads: short traces of their own with a span link to the job's).
#[derive(Debug, Clone, Default)]
pub struct JobTraces {
    /// Every span of the job's own trace(s).
    pub job: Vec<SpanRecord>,
    /// Every span of the traces that link to the job's.
    pub linked: Vec<SpanRecord>,
}

/// The traces of `job_id` among `spans`: a trace with a span carrying the id is the job's, unless
/// it links to another such trace (then it is linked to the job, as a status read is); a trace
/// linking to one of the job's is linked. Fails when no span carries the id.
pub fn job_traces(spans: &[SpanRecord], job_id: &str) -> anyhow::Result<JobTraces> {
    let carrying: BTreeSet<&str> = spans
        .iter()
        .filter(|span| span.job_id() == Some(job_id))
        .map(|span| span.trace_id.as_str())
        .collect();
    if carrying.is_empty() {
        bail!("no span carries the job id {job_id}");
    }
    let links_into = |targets: &BTreeSet<&str>| -> HashSet<&str> {
        spans
            .iter()
            .filter(|span| {
                span.links
                    .iter()
                    .any(|link| link.trace_id != span.trace_id && targets.contains(link.trace_id.as_str()))
            })
            .map(|span| span.trace_id.as_str())
            .collect()
    };
    let linking_to_carrying = links_into(&carrying);
    let mut own: BTreeSet<&str> = carrying
        .iter()
        .copied()
        .filter(|trace| !linking_to_carrying.contains(trace))
        .collect();
    if own.is_empty() {
        // Every trace links to another: none can be told apart as the job's own.
        own = carrying;
    }
    let linked = links_into(&own);
    Ok(JobTraces {
        job: spans
            .iter()
            .filter(|span| own.contains(span.trace_id.as_str()))
            .cloned()
            .collect(),
        linked: spans
            .iter()
            .filter(|span| !own.contains(span.trace_id.as_str()) && linked.contains(span.trace_id.as_str()))
            .cloned()
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"attributes": {"job_id": "j1", "http.response.status_code": 202}, "end_time_unix_nano": 3000000, "events": [{"attributes": {"attempt": 2}, "name": "retry", "time_unix_nano": 2000000}], "kind": 2, "links": [{"attributes": {}, "span_id": "00000000000000aa", "trace_id": "0000000000000000000000000000000b"}], "name": "POST /v1/download/initiate", "parent_span_id": "", "resource": {"service.name": "intake", "service.version": "0.1.0"}, "scope": {"name": "intake", "version": ""}, "span_id": "0000000000000001", "start_time_unix_nano": 1000000, "status": {"code": 2, "message": "boom"}, "trace_id": "0000000000000000000000000000000a"}"#;

    #[test]
    fn a_line_of_the_trace_processor_reads_as_a_span_record() {
        let span = SpanRecord::from_json_line(LINE).unwrap();
        assert_eq!(span.trace_id, "0000000000000000000000000000000a");
        assert_eq!(span.parent_span_id, None);
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.status, SpanStatus::Error);
        assert_eq!(span.status_message, "boom");
        assert_eq!(span.service, "intake");
        assert_eq!(span.scope, "intake");
        assert_eq!(span.job_id(), Some("j1"));
        assert_eq!(span.attribute_i64("http.response.status_code"), Some(202));
        assert_eq!(span.duration(), Duration::from_millis(2));
        assert_eq!(span.links[0].trace_id, "0000000000000000000000000000000b");
        assert_eq!(span.events[0].name, "retry");
    }

    #[test]
    fn a_line_without_ids_is_refused_with_the_missing_field() {
        let error = SpanRecord::from_json_line(r#"{"name": "x"}"#).unwrap_err();
        assert!(format!("{error:#}").contains("trace_id"), "{error:#}");
    }

    #[test]
    fn the_spans_file_is_read_up_to_its_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans.jsonl");
        assert!(read_spans(&path).unwrap().is_empty(), "no file yet: no spans");
        std::fs::write(&path, format!("{LINE}\n{}", &LINE[..40])).unwrap();
        assert_eq!(read_spans(&path).unwrap().len(), 1);
        std::fs::write(dir.path().join("spans.jsonl.errors"), "Traceback:\\n  boom\n").unwrap();
        assert_eq!(read_processor_errors(&path).unwrap(), vec!["Traceback:\n  boom"]);
    }

    #[test]
    fn a_jobs_traces_are_those_carrying_its_id_and_those_linked_to_them() {
        let job = SpanRecord::from_json_line(LINE).unwrap();
        let child = SpanRecord {
            span_id: "0000000000000002".into(),
            parent_span_id: Some(job.span_id.clone()),
            attributes: Map::new(),
            links: Vec::new(),
            ..job.clone()
        };
        let status_read = SpanRecord {
            trace_id: "0000000000000000000000000000000c".into(),
            span_id: "0000000000000003".into(),
            // A status read carries the job's id too, and links to its trace.
            links: vec![SpanLink {
                trace_id: job.trace_id.clone(),
                span_id: job.span_id.clone(),
                attributes: Map::new(),
            }],
            ..job.clone()
        };
        let unrelated = SpanRecord {
            trace_id: "0000000000000000000000000000000d".into(),
            span_id: "0000000000000004".into(),
            attributes: Map::new(),
            links: Vec::new(),
            ..job.clone()
        };
        let read_without_id = SpanRecord {
            trace_id: "0000000000000000000000000000000e".into(),
            span_id: "0000000000000005".into(),
            attributes: Map::new(),
            ..status_read.clone()
        };
        let spans = vec![
            job.clone(),
            child.clone(),
            status_read.clone(),
            unrelated,
            read_without_id.clone(),
        ];
        let traces = job_traces(&spans, "j1").unwrap();
        assert_eq!(traces.job, vec![job, child]);
        assert_eq!(traces.linked, vec![status_read, read_without_id]);
        assert!(job_traces(&spans, "j2").is_err());
    }
}
