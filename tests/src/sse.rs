//! A small Server-Sent Events reader for tests: frames, comments (heartbeats) and `retry:`.

use std::time::Duration;

use futures::StreamExt;

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum SseItem {
    /// An event with its fields.
    Event {
        /// `id:`
        id: Option<String>,
        /// `event:`
        event: Option<String>,
        /// `data:` lines joined with newlines.
        data: String,
    },
    /// A `retry:` hint in milliseconds.
    Retry(u64),
    /// A comment line (a heartbeat).
    Comment,
}

/// Reads items from a streaming response.
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    /// Wraps a `text/event-stream` response.
    pub fn new(response: reqwest::Response) -> Self {
        SseReader {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next item; `None` when the server closed the stream. Fails after `timeout` of silence.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<SseItem>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if let Some(item) = parse_frame(frame.trim_end_matches('\n')) {
                    return Ok(Some(item));
                }
                continue;
            }
            match tokio::time::timeout(timeout, self.body.next()).await {
                Err(_) => anyhow::bail!("no event stream data for {timeout:?}"),
                Ok(None) => return Ok(None),
                Ok(Some(chunk)) => self.buffer.push_str(std::str::from_utf8(&chunk?)?),
            }
        }
    }

    /// Reads until the next event, counting heartbeats on the way; `None` at the end of the stream.
    pub async fn next_event(
        &mut self,
        timeout: Duration,
        heartbeats: &mut usize,
    ) -> anyhow::Result<Option<(Option<String>, Option<String>, serde_json::Value)>> {
        loop {
            match self.next(timeout).await? {
                None => return Ok(None),
                Some(SseItem::Comment) => *heartbeats += 1,
                Some(SseItem::Retry(_)) => {}
                Some(SseItem::Event { id, event, data }) => return Ok(Some((id, event, serde_json::from_str(&data)?))),
            }
        }
    }
}

fn parse_frame(frame: &str) -> Option<SseItem> {
    let mut id = None;
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    let mut comment = false;
    for line in frame.lines() {
        if line.starts_with(':') {
            comment = true;
            continue;
        }
        let (field, value) = line
            .split_once(':')
            .map(|(field, value)| (field, value.strip_prefix(' ').unwrap_or(value)))
            .unwrap_or((line, ""));
        match field {
            "id" => id = Some(value.to_string()),
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            "retry" => return value.parse().ok().map(SseItem::Retry),
            _ => {}
        }
    }
    if data.is_empty() && id.is_none() && event.is_none() {
        return comment.then_some(SseItem::Comment);
    }
    Some(SseItem::Event {
        id,
        event,
        data: data.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_parsed_into_events_comments_and_retry_hints() {
        assert_eq!(parse_frame(":"), Some(SseItem::Comment));
        assert_eq!(parse_frame("retry: 3000"), Some(SseItem::Retry(3000)));
        assert_eq!(
            parse_frame("id: 4\nevent: progress\ndata: {\"a\":1}"),
            Some(SseItem::Event {
                id: Some("4".into()),
                event: Some("progress".into()),
                data: "{\"a\":1}".into()
            })
        );
    }
}
