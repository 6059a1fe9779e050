//! `statusmesh watch`: follows a node's event stream, printing each change once, and fails
//! over to the next nearest node, resuming from its cursor with jittered backoff.

use std::collections::BTreeMap;
use std::io::Write;

use futures_util::StreamExt;
use rand::Rng;
use serde_json::Value;

use super::{rank_by_rtt, ClientError, BACKOFF_MAX, BACKOFF_MIN, SSE_BUFFER_MAX};

/// One parsed Server-Sent Event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// Incremental SSE parser: feed bytes, take complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: String,
}

impl SseParser {
    /// Adds bytes; returns the events they completed. Errors when a line grows past the bound.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buffer.push_str(&String::from_utf8_lossy(bytes));
        if self.buffer.len() > SSE_BUFFER_MAX {
            return Err("event larger than the client's buffer".into());
        }
        let mut events = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut event = SseEvent::default();
            let mut data_lines = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    event.id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data_lines.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            if event.event.is_empty() && data_lines.is_empty() {
                continue;
            }
            event.data = data_lines.join("\n");
            events.push(event);
        }
        Ok(events)
    }
}

/// What `watch` has printed per cell, so that a fresh snapshot after a failover prints only
/// what actually changed while it was away.
type Printed = BTreeMap<String, (String, String)>;

/// `statusmesh watch`: follows events on the nearest node; on failure resumes on the next
/// nearest from the last cursor. Prints one line per change. Stops after `max_reconnects`
/// consecutive failures.
pub async fn watch(
    client: &reqwest::Client,
    urls: &[String],
    service: Option<&str>,
    max_reconnects: u32,
    out: &mut (dyn Write + Send),
) -> Result<(), ClientError> {
    let mut cursor: Option<String> = None;
    let mut printed: Printed = BTreeMap::new();
    let mut failures = 0u32;
    let mut backoff = BACKOFF_MIN;
    loop {
        let ranked = rank_by_rtt(client, urls).await;
        if ranked.iter().all(|(_, rtt)| rtt.is_none()) {
            if let Some(error) = super::tls::untrusted(client, urls).await {
                return Err(error);
            }
        }
        let mut progressed = false;
        for (url, rtt) in ranked.iter().filter(|(_, rtt)| rtt.is_some()) {
            let mut request = client
                .get(format!("{url}/v1/events"))
                .header("accept", "text/event-stream");
            if let Some(s) = service {
                request = request.query(&[("service", s)]);
            }
            if let Some(c) = &cursor {
                request = request.header("last-event-id", c.as_str());
            }
            let Ok(response) = request.send().await else {
                continue;
            };
            if !response.status().is_success() {
                continue;
            }
            writeln!(out, "# following {url} (rtt {:?})", rtt.unwrap_or_default())
                .map_err(|e| ClientError::Output(e.to_string()))?;
            out.flush()
                .map_err(|e| ClientError::Output(e.to_string()))?;
            let mut parser = SseParser::default();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                let Ok(events) = parser.feed(&chunk) else {
                    break;
                };
                for event in events {
                    print_event(&event, &mut printed, out)?;
                    if let Some(id) = event.id {
                        cursor = Some(id);
                    }
                    progressed = true;
                    failures = 0;
                    backoff = BACKOFF_MIN;
                }
            }
            writeln!(out, "# lost {url}; failing over")
                .map_err(|e| ClientError::Output(e.to_string()))?;
        }
        if !progressed {
            failures += 1;
            if failures > max_reconnects {
                return Err(ClientError::GaveUp(max_reconnects));
            }
        }
        let jittered = backoff.mul_f64(rand::rng().random_range(0.5..1.0));
        tokio::time::sleep(jittered).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn print_event(
    event: &SseEvent,
    printed: &mut Printed,
    out: &mut (dyn Write + Send),
) -> Result<(), ClientError> {
    let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
        return Ok(());
    };
    let io = |e: std::io::Error| ClientError::Output(e.to_string());
    match event.event.as_str() {
        "snapshot" => {
            for svc in data["services"].as_array().into_iter().flatten() {
                for comp in svc["components"].as_array().into_iter().flatten() {
                    for cell in comp["regions"].as_array().into_iter().flatten() {
                        let line = CellLine {
                            service: svc["name"].as_str().unwrap_or(""),
                            component: comp["name"].as_str().unwrap_or(""),
                            region: cell["region"].as_str().unwrap_or(""),
                            state: cell["state"].as_str().unwrap_or(""),
                            message: cell["message"].as_str().unwrap_or(""),
                        };
                        line.print_if_new(printed, out).map_err(io)?;
                    }
                }
            }
        }
        "status" => {
            let line = CellLine {
                service: data["service"].as_str().unwrap_or(""),
                component: data["component"].as_str().unwrap_or(""),
                region: data["region"].as_str().unwrap_or(""),
                state: data["state"].as_str().unwrap_or("removed"),
                message: data["message"].as_str().unwrap_or(""),
            };
            line.print_if_new(printed, out).map_err(io)?;
        }
        other => {
            writeln!(out, "{other} {}", event.data).map_err(io)?;
        }
    }
    out.flush().map_err(io)
}

struct CellLine<'a> {
    service: &'a str,
    component: &'a str,
    region: &'a str,
    state: &'a str,
    message: &'a str,
}

impl CellLine<'_> {
    fn print_if_new(
        &self,
        printed: &mut Printed,
        out: &mut (dyn Write + Send),
    ) -> std::io::Result<()> {
        let key = format!("{}/{}/{}", self.service, self.component, self.region);
        let value = (self.state.to_owned(), self.message.to_owned());
        if printed.get(&key) == Some(&value) {
            return Ok(());
        }
        writeln!(out, "{key} {} {:?}", self.state, self.message)?;
        printed.insert(key, value);
        Ok(())
    }
}
