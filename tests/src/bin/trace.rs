//! Prints one job's trace as a text waterfall, from the spans the dev stack's OTLP receiver
//! wrote (`.devstack/spans.jsonl`, or `--spans FILE`): the trace whose spans carry the job's id
//! (`job_id` or `download.job_id`), then the traces linked to it (status reads). Exits 1 when
//! no span carries the id. Run by `deploy/local/trace <jobId>`.

use std::path::PathBuf;
use std::process::ExitCode;

use system_tests::otlp::{dev_stack_dir, job_traces, read_processor_errors, read_spans, waterfall};

const USAGE: &str = "usage: trace <jobId> [--spans FILE]   (default FILE: .devstack/spans.jsonl of the dev stack)";

fn main() -> ExitCode {
    let mut job_id = None;
    let mut spans_path = dev_stack_dir().join("spans.jsonl");
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--spans" => match arguments.next() {
                Some(path) => spans_path = PathBuf::from(path),
                None => return usage_error("--spans needs a file"),
            },
            flag if flag.starts_with('-') => return usage_error(&format!("unknown option {flag}")),
            _ if job_id.is_some() => return usage_error("one job id only"),
            _ => job_id = Some(argument),
        }
    }
    let Some(job_id) = job_id else {
        return usage_error("a job id is required");
    };
    match run(&job_id, &spans_path) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error:#}");
            ExitCode::from(1)
        }
    }
}

fn usage_error(problem: &str) -> ExitCode {
    eprintln!("{problem}\n{USAGE}");
    ExitCode::from(2)
}

/// The job's waterfall, then its linked traces'.
fn run(job_id: &str, spans_path: &std::path::Path) -> anyhow::Result<String> {
    anyhow::ensure!(
        spans_path.exists(),
        "no spans file at {}: is the dev stack running (deploy/local/up)?",
        spans_path.display()
    );
    for error in read_processor_errors(spans_path)? {
        eprintln!("warning: the receiver's trace processor failed on a batch (its spans are missing):\n{error}");
    }
    let spans = read_spans(spans_path)?;
    let traces = job_traces(&spans, job_id).map_err(|_| {
        let traces: std::collections::HashSet<&str> = spans.iter().map(|span| span.trace_id.as_str()).collect();
        anyhow::anyhow!(
            "job {job_id} is unknown: no span carries its id among the {} spans of {} traces in {} \
             (a job of another run of the dev stack, or its spans not exported yet: the services \
             send them every half second)",
            spans.len(),
            traces.len(),
            spans_path.display()
        )
    })?;
    let mut text = waterfall(&traces.job);
    if !traces.linked.is_empty() {
        let linked: std::collections::HashSet<&str> = traces.linked.iter().map(|span| span.trace_id.as_str()).collect();
        text.push_str(&format!(
            "\n{} trace(s) linked to the job's (status reads, ...):\n\n",
            linked.len()
        ));
        text.push_str(&waterfall(&traces.linked));
    }
    Ok(text)
}
