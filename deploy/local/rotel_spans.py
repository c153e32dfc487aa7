"""Trace processor of the rotel OTLP receiver (tests/src/otlp.rs and the dev stack).

rotel-agent calls `process_spans` with each batch of spans it receives (one ResourceSpans at a
time); this appends one JSON object per span, one per line, to the file named by $SPANS_JSONL:

    trace_id, span_id, parent_span_id   lowercase hex ("" for a root span)
    name, kind                          OTLP kind: 0 unspecified, 1 internal, 2 server, 3 client,
                                        4 producer, 5 consumer
    attributes                          {key: value} (arrays as lists, key-value lists as objects,
                                        bytes as hex)
    events                              [{name, time_unix_nano, attributes}]
    links                               [{trace_id, span_id, attributes}]
    status                              {code: 0 unset, 1 ok, 2 error, message}
    start_time_unix_nano, end_time_unix_nano
    resource                            the resource's attributes (service.name, ...)
    scope                               {name, version} of the instrumentation scope

The agent runs this file in the system's Python through libpython: standard library only. An
exception escaping `process_spans` crashes the agent, so every error is caught and appended, with
its traceback, to $SPANS_JSONL.errors (the harness reports that file's content as a failure).
"""

import json
import os
import traceback

_SPANS_PATH = os.environ.get("SPANS_JSONL", "")
_ERRORS_PATH = (_SPANS_PATH or "spans.jsonl") + ".errors"


def process_spans(resource_spans):
    """Appends every span of one ResourceSpans to $SPANS_JSONL; never raises."""
    try:
        if not _SPANS_PATH:
            raise RuntimeError("SPANS_JSONL is not set: nowhere to write the spans")
        lines = [json.dumps(record, sort_keys=True) for record in _records(resource_spans)]
        if lines:
            # One write per batch, so a reader sees whole lines (it skips an unfinished last one).
            with open(_SPANS_PATH, "a", encoding="utf-8") as spans:
                spans.write("\n".join(lines) + "\n")
    except BaseException:  # noqa: BLE001 - an escaping exception would crash the agent
        _report(traceback.format_exc())


def _report(text):
    try:
        with open(_ERRORS_PATH, "a", encoding="utf-8") as errors:
            errors.write(text.replace("\n", "\\n") + "\n")
    except BaseException:  # noqa: BLE001 - nothing left to report to
        pass


def _records(resource_spans):
    resource = _attributes(resource_spans.resource.attributes) if resource_spans.resource else {}
    for scope_spans in resource_spans.scope_spans:
        scope = scope_spans.scope
        scope_fields = {"name": scope.name, "version": scope.version} if scope else {}
        for span in scope_spans.spans:
            yield {
                "trace_id": _hex(span.trace_id),
                "span_id": _hex(span.span_id),
                "parent_span_id": _hex(span.parent_span_id),
                "name": span.name,
                "kind": int(span.kind),
                "start_time_unix_nano": span.start_time_unix_nano,
                "end_time_unix_nano": span.end_time_unix_nano,
                "attributes": _attributes(span.attributes),
                "events": [
                    {
                        "name": event.name,
                        "time_unix_nano": event.time_unix_nano,
                        "attributes": _attributes(event.attributes),
                    }
                    for event in span.events
                ],
                "links": [
                    {
                        "trace_id": _hex(link.trace_id),
                        "span_id": _hex(link.span_id),
                        "attributes": _attributes(link.attributes),
                    }
                    for link in span.links
                ],
                "status": _status(span.status),
                "resource": resource,
                "scope": scope_fields,
            }


def _hex(identifier):
    return bytes(identifier).hex() if identifier else ""


def _status(status):
    if not status:
        return {"code": 0, "message": ""}
    return {"code": int(status.code), "message": status.message or ""}


def _attributes(key_values):
    return {key_value.key: _value(key_value.value) for key_value in key_values}


def _value(any_value):
    """An OTLP AnyValue as JSON: scalars as they are, bytes as hex, arrays as lists and
    key-value lists as objects (rotel's wrappers are indexed, not iterated)."""
    if any_value is None:
        return None
    value = any_value.value if hasattr(any_value, "value") else any_value
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    items = []
    index = 0
    while True:
        try:
            item = value[index]
        except IndexError:
            break
        items.append(item)
        index += 1
    if items and all(hasattr(item, "key") for item in items):
        return {item.key: _value(item.value) for item in items}
    return [_value(item) for item in items]
