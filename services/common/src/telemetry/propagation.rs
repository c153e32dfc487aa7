//! Trace context without OpenTelemetry spans, for a service that exports no traces.
//!
//! Without an exporter, OpenTelemetry spans would be built, recorded and dropped only so that
//! each carries ids: measured, that was a third of the intake's CPU per accepted job and an
//! eighth of the processor's. This layer keeps just the ids: each workspace span holds a
//! [`SpanContext`] in its extensions, the trace (and its sampled flag and `tracestate`) of its
//! parent with a span id of its own, or a new trace decided by the configured sampler. So a job
//! keeps one trace id across every hop, and a service that does export continues it, whether
//! the services before it export or not.

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};
use tracing::Subscriber;
use tracing::span::{Attributes, Id};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// A span's trace context, in its extensions.
struct Ids(SpanContext);

/// Gives every span it sees a [`SpanContext`].
pub(super) struct Layer {
    sampler: Sampler,
}

impl Layer {
    pub(super) fn new(sampler: Sampler) -> Self {
        Layer { sampler }
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Layer {
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        let Some(span) = context.span(id) else { return };
        // The nearest parent this layer saw (spans of other crates are filtered out).
        let parent = span
            .parent()
            .and_then(|parent| parent.extensions().get::<Ids>().map(|ids| ids.0.clone()));
        let ids = match parent {
            Some(parent) => child_of(&parent),
            None => root(&self.sampler, attributes.metadata().name(), new_span_id()),
        };
        span.extensions_mut().insert(Ids(ids));
    }
}

fn child_of(parent: &SpanContext) -> SpanContext {
    SpanContext::new(
        parent.trace_id(),
        new_span_id(),
        parent.trace_flags(),
        false,
        parent.trace_state().clone(),
    )
}

/// A span `span_id` starting a new trace, sampled as `sampler` decides.
fn root(sampler: &Sampler, name: &str, span_id: SpanId) -> SpanContext {
    let trace_id = loop {
        let candidate = TraceId::from(rand::random::<u128>());
        if candidate != TraceId::INVALID {
            break candidate;
        }
    };
    let sampled = sampler.should_sample(None, trace_id, name, &SpanKind::Internal, &[], &[]);
    SpanContext::new(trace_id, span_id, flags(&sampled.decision), false, sampled.trace_state)
}

fn new_span_id() -> SpanId {
    loop {
        let candidate = SpanId::from(rand::random::<u64>());
        if candidate != SpanId::INVALID {
            return candidate;
        }
    }
}

fn flags(decision: &SamplingDecision) -> TraceFlags {
    match decision {
        SamplingDecision::RecordAndSample => TraceFlags::SAMPLED,
        SamplingDecision::Drop | SamplingDecision::RecordOnly => TraceFlags::default(),
    }
}

/// Runs `f` on the extensions of `span` (if this layer saw it) in the installed registry.
fn with_span<R>(
    span: &tracing::Span,
    f: impl FnOnce(tracing_subscriber::registry::SpanRef<'_, Registry>) -> Option<R>,
) -> Option<R> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        f(registry.span(id)?)
    })
    .flatten()
}

/// The trace context of `span`, or of its nearest ancestor that has one.
pub(super) fn context_of(span: &tracing::Span) -> Option<SpanContext> {
    with_span(span, |span| {
        span.scope()
            .find_map(|ancestor| ancestor.extensions().get::<Ids>().map(|ids| ids.0.clone()))
    })
}

/// Puts `span` (one this layer saw) in the trace of a remote `parent`, keeping its own span id;
/// the sampler decides its flag, as the SDK's decides a span's with a remote parent. A `parent`
/// without a valid context makes `span` the root of a trace of its own, as OpenTelemetry's
/// `set_parent` does. Call it before `span` has children: theirs keep the trace they began in.
pub(super) fn set_parent(span: &tracing::Span, parent: &opentelemetry::Context, sampler: &Sampler) {
    let remote = parent.span().span_context().clone();
    with_span(span, |span| {
        let mut extensions = span.extensions_mut();
        let ids = extensions.get_mut::<Ids>()?;
        let own = ids.0.span_id();
        ids.0 = if remote.is_valid() {
            let sampled = sampler.should_sample(
                Some(parent),
                remote.trace_id(),
                span.name(),
                &SpanKind::Internal,
                &[],
                &[],
            );
            SpanContext::new(
                remote.trace_id(),
                own,
                flags(&sampled.decision),
                false,
                sampled.trace_state,
            )
        } else {
            root(sampler, span.name(), own)
        };
        Some(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use std::collections::HashMap;
    use tracing_subscriber::layer::SubscriberExt;

    fn subscriber(sampler: Sampler) -> impl Subscriber + Send + Sync {
        let traced = tracing_subscriber::filter::Targets::new().with_target("common", tracing::Level::INFO);
        // As in a service: a log layer enables other crates' spans too.
        let logs = tracing_subscriber::fmt::layer().with_writer(std::io::sink);
        tracing_subscriber::registry()
            .with(tracing_subscriber::Layer::with_filter(Layer::new(sampler), traced))
            .with(logs)
    }

    fn remote(traceparent: &str, tracestate: &str) -> opentelemetry::Context {
        let headers = HashMap::from([
            ("traceparent".to_string(), traceparent.to_string()),
            ("tracestate".to_string(), tracestate.to_string()),
        ]);
        TraceContextPropagator::new().extract(&headers)
    }

    #[test]
    fn children_share_their_roots_trace_with_span_ids_of_their_own() {
        tracing::subscriber::with_default(subscriber(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))), || {
            let root = tracing::info_span!("root");
            let child = root.in_scope(|| tracing::info_span!("child"));
            let (root_ids, child_ids) = (context_of(&root).unwrap(), context_of(&child).unwrap());
            assert!(root_ids.is_valid() && child_ids.is_valid());
            assert_eq!(root_ids.trace_id(), child_ids.trace_id());
            assert_ne!(root_ids.span_id(), child_ids.span_id());
            assert!(root_ids.is_sampled() && child_ids.is_sampled());

            let other = tracing::info_span!("another root");
            assert_ne!(context_of(&other).unwrap().trace_id(), root_ids.trace_id());
        });
    }

    #[test]
    fn a_remote_parent_gives_its_trace_flags_and_state_to_the_span_and_later_children() {
        tracing::subscriber::with_default(subscriber(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))), || {
            let span = tracing::info_span!("server");
            let parent = remote("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "vendor=a");
            set_parent(&span, &parent, &Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
            let own = context_of(&span).unwrap();
            assert_eq!(own.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(own.span_id().to_string(), "00f067aa0ba902b7");
            assert!(!own.is_sampled(), "a parent not sampled is followed");
            assert_eq!(own.trace_state().header(), "vendor=a");
            let child = span.in_scope(|| tracing::info_span!("publish"));
            let child = context_of(&child).unwrap();
            assert_eq!(child.trace_id(), own.trace_id());
            assert_eq!(child.trace_state().header(), "vendor=a");

            // No valid parent (headers without a traceparent): a trace of its own, as
            // OpenTelemetry's set_parent makes it.
            let child = span.in_scope(|| tracing::info_span!("consume"));
            let before = context_of(&child).unwrap();
            let invalid = remote("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "");
            set_parent(&child, &invalid, &Sampler::AlwaysOn);
            let after = context_of(&child).unwrap();
            assert!(after.is_valid() && after.is_sampled());
            assert_ne!(after.trace_id(), before.trace_id());
            assert_eq!(after.span_id(), before.span_id());
        });
    }

    #[test]
    fn roots_follow_the_configured_sampler_and_other_crates_spans_are_skipped() {
        tracing::subscriber::with_default(subscriber(Sampler::AlwaysOff), || {
            let root = tracing::info_span!("root");
            let ids = context_of(&root).unwrap();
            assert!(ids.is_valid() && !ids.is_sampled());
            // A span of another crate has no context of its own: its nearest traced ancestor's.
            let foreign = root.in_scope(|| tracing::info_span!(target: "hyper", "foreign"));
            assert_eq!(context_of(&foreign), Some(ids.clone()));
            let inner = foreign.in_scope(|| tracing::info_span!("inner"));
            assert_eq!(context_of(&inner).unwrap().trace_id(), ids.trace_id());
        });
    }
}
