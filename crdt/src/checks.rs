//! Regional probe checks: what to probe, how often, and what an answer means.
//!
//! A check is a record of its service's document (`chk/<component>`, see `doc/schema.rs`),
//! so it replicates like any other record and every region learns of it within a broadcast.
//! This module owns the check's shape and its validation ([`CheckSpec`], the user's JSON, into
//! [`Check`], with an error naming the field), the parsing of its target ([`Target`]) and the
//! pure meaning of a probe's outcome ([`ProbeOutcome`] into a state and a message, with
//! `failures_before_down` applied by [`FailureCount`]). Running probes is the node's job.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::CrdtError;
use crate::model::{truncate_for_error, Name, State};

/// Shortest probe interval, in seconds.
pub const INTERVAL_S_MIN: u64 = 1;
/// Longest probe interval, in seconds (an hour).
pub const INTERVAL_S_MAX: u64 = 3600;
/// Probe interval when the spec gives none, in seconds.
pub const INTERVAL_S_DEFAULT: u64 = 30;
/// Shortest probe timeout, in milliseconds.
pub const TIMEOUT_MS_MIN: u64 = 50;
/// Longest probe timeout, in milliseconds.
pub const TIMEOUT_MS_MAX: u64 = 60_000;
/// Probe timeout when the spec gives none, in milliseconds (capped to the interval).
pub const TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Consecutive failures before a region reports the component down, when the spec gives none.
pub const FAILURES_BEFORE_DOWN_DEFAULT: u32 = 2;
/// Most consecutive failures a spec may ask for before down.
pub const FAILURES_BEFORE_DOWN_MAX: u32 = 10;
/// Longest target, in bytes.
pub const TARGET_LEN_MAX: usize = 512;
/// Longest `body_contains`, in bytes.
pub const BODY_CONTAINS_LEN_MAX: usize = 256;
/// Most status codes `expect_status` may list.
pub const EXPECT_STATUS_MAX: usize = 16;
/// Most regions a check may name.
pub const REGIONS_MAX: usize = 32;

/// How a check probes its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// An HTTP(S) GET; the status code, the body and the latency are judged.
    Http,
    /// A TCP connect; only reachability and latency are judged.
    Tcp,
}

/// The `agreement` object of a spec.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgreementSpec {
    /// Regions with fresh observations that must report down for `major_outage`.
    pub down_when: Option<u32>,
}

/// A check as a client writes it (`PUT /v1/checks/{service}/{component}`): every field but
/// `kind` and `target` may be left out and takes its documented default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    pub kind: String,
    pub target: String,
    pub interval_s: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub expect_status: Option<Vec<u16>>,
    pub body_contains: Option<String>,
    pub degraded_above_ms: Option<u64>,
    pub failures_before_down: Option<u32>,
    pub regions: Option<Vec<String>>,
    pub agreement: Option<AgreementSpec>,
}

/// A validated check, as stored in the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub kind: CheckKind,
    /// `http://host[:port][/path]`, `https://…` for `http`; `host:port` for `tcp`.
    pub target: String,
    pub interval_s: u64,
    /// The whole probe (DNS, connect, TLS, request, body) must finish within it.
    pub timeout_ms: u64,
    /// Status codes that count as up; empty means any 2xx (`http` only).
    pub expect_status: Vec<u16>,
    /// Text the body (its first 64 KiB) must contain (`http` only).
    pub body_contains: Option<String>,
    /// A successful probe slower than this reports `degraded_performance`.
    pub degraded_above_ms: Option<u64>,
    /// Consecutive failed probes before the region reports `major_outage`.
    pub failures_before_down: u32,
    /// The regions that probe it; `None`: every region of the topology.
    pub regions: Option<Vec<Name>>,
    /// Fresh regions that must agree for `major_outage`; `None`: a majority of the regions
    /// probing it.
    pub down_when: Option<u32>,
    pub author: String,
    pub updated_at_ms: u64,
}

/// Where a check's probe goes, parsed from its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Http {
        tls: bool,
        /// A host name, an IPv4 address or a bracket-less IPv6 address.
        host: String,
        port: u16,
        /// The path and query, starting with '/'.
        path: String,
    },
    Tcp {
        host: String,
        port: u16,
    },
}

impl Target {
    /// The host to resolve and connect to.
    pub fn host(&self) -> &str {
        match self {
            Target::Http { host, .. } | Target::Tcp { host, .. } => host,
        }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        match self {
            Target::Http { port, .. } | Target::Tcp { port, .. } => *port,
        }
    }
}

impl CheckSpec {
    /// Validates the spec into a check written by `author` at `now_ms`; the error names the
    /// first field that breaks a rule. Regions are checked against the topology by the caller
    /// (this crate does not know it).
    pub fn into_check(self, author: &str, now_ms: u64) -> Result<Check, CrdtError> {
        let kind = match self.kind.as_str() {
            "http" => CheckKind::Http,
            "tcp" => CheckKind::Tcp,
            other => return Err(invalid("kind", other, "must be one of http, tcp")),
        };
        let interval_s = self.interval_s.unwrap_or(INTERVAL_S_DEFAULT);
        let timeout_ms = self
            .timeout_ms
            .unwrap_or(TIMEOUT_MS_DEFAULT.min(interval_s.saturating_mul(1000)));
        let check = Check {
            kind,
            target: self.target,
            interval_s,
            timeout_ms,
            expect_status: self.expect_status.unwrap_or_default(),
            body_contains: self.body_contains,
            degraded_above_ms: self.degraded_above_ms,
            failures_before_down: self
                .failures_before_down
                .unwrap_or(FAILURES_BEFORE_DOWN_DEFAULT),
            regions: self
                .regions
                .map(|list| {
                    list.iter()
                        .map(|r| Name::parse("regions", r))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?,
            down_when: self.agreement.and_then(|a| a.down_when),
            author: author.to_owned(),
            updated_at_ms: now_ms,
        };
        check.validate()?;
        Ok(check)
    }
}

impl Check {
    /// Checks every bound; the error names the first field that breaks one.
    pub fn validate(&self) -> Result<(), CrdtError> {
        self.parse_target()?;
        if !(INTERVAL_S_MIN..=INTERVAL_S_MAX).contains(&self.interval_s) {
            return Err(invalid(
                "interval_s",
                &self.interval_s.to_string(),
                &format!("must be between {INTERVAL_S_MIN} and {INTERVAL_S_MAX} seconds"),
            ));
        }
        if !(TIMEOUT_MS_MIN..=TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            return Err(invalid(
                "timeout_ms",
                &self.timeout_ms.to_string(),
                &format!("must be between {TIMEOUT_MS_MIN} and {TIMEOUT_MS_MAX} milliseconds"),
            ));
        }
        if self.timeout_ms > self.interval_s * 1000 {
            return Err(invalid(
                "timeout_ms",
                &self.timeout_ms.to_string(),
                "must not be longer than the interval (one probe at a time)",
            ));
        }
        let http = self.kind == CheckKind::Http;
        if !self.expect_status.is_empty() && !http {
            return Err(invalid(
                "expect_status",
                &format!("{:?}", self.expect_status),
                "only an http check has a status code",
            ));
        }
        if self.expect_status.len() > EXPECT_STATUS_MAX {
            return Err(invalid(
                "expect_status",
                &self.expect_status.len().to_string(),
                &format!("at most {EXPECT_STATUS_MAX} status codes"),
            ));
        }
        if let Some(bad) = self
            .expect_status
            .iter()
            .find(|c| !(100..=599).contains(*c))
        {
            return Err(invalid(
                "expect_status",
                &bad.to_string(),
                "status codes are between 100 and 599",
            ));
        }
        if let Some(text) = &self.body_contains {
            if !http {
                return Err(invalid(
                    "body_contains",
                    text,
                    "only an http check has a body",
                ));
            }
            if text.is_empty() || text.len() > BODY_CONTAINS_LEN_MAX {
                return Err(invalid(
                    "body_contains",
                    text,
                    &format!("must be 1 to {BODY_CONTAINS_LEN_MAX} bytes"),
                ));
            }
        }
        if let Some(ms) = self.degraded_above_ms {
            if ms == 0 || ms >= self.timeout_ms {
                return Err(invalid(
                    "degraded_above_ms",
                    &ms.to_string(),
                    "must be above 0 and below timeout_ms",
                ));
            }
        }
        if !(1..=FAILURES_BEFORE_DOWN_MAX).contains(&self.failures_before_down) {
            return Err(invalid(
                "failures_before_down",
                &self.failures_before_down.to_string(),
                &format!("must be between 1 and {FAILURES_BEFORE_DOWN_MAX}"),
            ));
        }
        if let Some(regions) = &self.regions {
            if regions.is_empty() || regions.len() > REGIONS_MAX {
                return Err(invalid(
                    "regions",
                    &regions.len().to_string(),
                    &format!("must name 1 to {REGIONS_MAX} regions (leave it out for all)"),
                ));
            }
            for (i, region) in regions.iter().enumerate() {
                if regions[..i].contains(region) {
                    return Err(invalid("regions", region.as_str(), "named twice"));
                }
            }
        }
        if let Some(k) = self.down_when {
            let most = self.regions.as_ref().map_or(REGIONS_MAX, Vec::len);
            if k == 0 || k as usize > most {
                return Err(invalid(
                    "agreement.down_when",
                    &k.to_string(),
                    &format!("must be between 1 and {most} (the regions probing it)"),
                ));
            }
        }
        Name::parse("author", &self.author)?;
        Ok(())
    }

    /// The target, parsed for the check's kind.
    pub fn parse_target(&self) -> Result<Target, CrdtError> {
        parse_target(self.kind, &self.target)
    }

    /// Whether `region` runs this check.
    pub fn probed_from(&self, region: &str) -> bool {
        self.regions
            .as_ref()
            .is_none_or(|list| list.iter().any(|r| r.as_str() == region))
    }

    /// Fresh regions that must report down for `major_outage`, given how many regions probe
    /// the check: the spec's `down_when`, else a majority.
    pub fn down_when_of(&self, regions_probing: usize) -> usize {
        match self.down_when {
            Some(k) => k as usize,
            None => regions_probing / 2 + 1,
        }
    }

    /// The time-to-live of a region's observation: three intervals, in milliseconds.
    pub fn ttl_ms(&self) -> u64 {
        (3 * self.interval_s * 1000).max(crate::model::TTL_MS_MIN)
    }

    /// Whether `status` counts as up.
    pub fn status_ok(&self, status: u16) -> bool {
        if self.expect_status.is_empty() {
            (200..300).contains(&status)
        } else {
            self.expect_status.contains(&status)
        }
    }
}

/// Parses a target for `kind`: an `http://` or `https://` URL without user info or fragment,
/// or `host:port` for tcp. The error is an invalid `target`.
pub fn parse_target(kind: CheckKind, target: &str) -> Result<Target, CrdtError> {
    let bad = |reason: &str| invalid("target", target, reason);
    if target.is_empty() || target.len() > TARGET_LEN_MAX {
        return Err(bad(&format!("must be 1 to {TARGET_LEN_MAX} bytes")));
    }
    if let Some(c) = target
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(bad(&format!("character {c:?} is not allowed")));
    }
    match kind {
        CheckKind::Http => {
            let (tls, rest) = if let Some(rest) = target.strip_prefix("http://") {
                (false, rest)
            } else if let Some(rest) = target.strip_prefix("https://") {
                (true, rest)
            } else {
                return Err(bad(
                    "an http check's target starts with http:// or https://",
                ));
            };
            if rest.contains('#') {
                return Err(bad("a target has no fragment"));
            }
            let (authority, path) = match rest.find(['/', '?']) {
                Some(at) if rest.as_bytes()[at] == b'/' => (&rest[..at], rest[at..].to_owned()),
                Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
                None => (rest, "/".to_owned()),
            };
            if authority.contains('@') {
                return Err(bad("a target has no user info"));
            }
            let (host, port) = host_port(authority, Some(if tls { 443 } else { 80 }))
                .map_err(|reason| bad(&reason))?;
            Ok(Target::Http {
                tls,
                host,
                port,
                path,
            })
        }
        CheckKind::Tcp => {
            let (host, port) = host_port(target, None).map_err(|reason| bad(&reason))?;
            Ok(Target::Tcp { host, port })
        }
    }
}

/// `host[:port]`, `[v6][:port]`; the port is required when `default_port` is `None`.
fn host_port(authority: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address is closed by ']'")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("':' goes before the port")?),
        };
        (host.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    let host_ok = host.contains(':')
        || host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !host_ok {
        return Err(format!("{host:?} is not a host name or address"));
    }
    let port = match (port, default_port) {
        (Some(text), _) => match text.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("port {text:?} is not between 1 and 65535")),
        },
        (None, Some(p)) => p,
        (None, None) => return Err("a tcp target is host:port".into()),
    };
    Ok((host, port))
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The target answered (for tcp: the connection opened).
    Answered {
        latency_ms: u64,
        /// The HTTP status code (`None` for tcp).
        status: Option<u16>,
        /// Whether the body held `body_contains` (`None` when not asked or tcp).
        body_matched: Option<bool>,
    },
    /// The probe failed before an answer: the reason, for the observation's message
    /// ("timeout after 5000 ms", "connection refused", "tls: …", "dns: …").
    Failed { reason: String },
}

/// Judges one outcome: the state it shows and why, before `failures_before_down`.
pub fn judge(check: &Check, outcome: &ProbeOutcome) -> (State, String) {
    match outcome {
        ProbeOutcome::Failed { reason } => (State::MajorOutage, reason.clone()),
        ProbeOutcome::Answered {
            latency_ms,
            status,
            body_matched,
        } => {
            if let Some(code) = status.filter(|c| !check.status_ok(*c)) {
                return (State::MajorOutage, format!("status {code}"));
            }
            if *body_matched == Some(false) {
                return (State::MajorOutage, "body mismatch".to_owned());
            }
            match check.degraded_above_ms {
                // The message does not carry the latency itself: an unchanged state must make
                // no change (a heartbeat), and the latency is in the metrics.
                Some(above) if *latency_ms > above => (
                    State::DegradedPerformance,
                    format!("latency above {above} ms"),
                ),
                _ => (State::Operational, String::new()),
            }
        }
    }
}

/// Consecutive failures of one (check, region) on its prober, so that a single lost probe
/// does not page anyone: a failure reports down only once `failures_before_down` are in a row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureCount {
    consecutive: u32,
    /// What was last reported, kept while failures are below the threshold.
    last: Option<(State, String)>,
}

impl FailureCount {
    /// The state and message to report after `outcome`.
    pub fn report(&mut self, check: &Check, outcome: &ProbeOutcome) -> (State, String) {
        let (state, message) = judge(check, outcome);
        if state == State::MajorOutage {
            self.consecutive = self.consecutive.saturating_add(1);
            if self.consecutive < check.failures_before_down {
                if let Some(last) = &self.last {
                    return last.clone();
                }
                return (
                    State::Operational,
                    format!(
                        "{message} (failure {} of {})",
                        self.consecutive, check.failures_before_down
                    ),
                );
            }
        } else {
            self.consecutive = 0;
        }
        self.last = Some((state, message.clone()));
        (state, message)
    }

    /// Failed probes in a row so far.
    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }
}

impl fmt::Display for CheckKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
        })
    }
}

pub(crate) fn invalid(field: &'static str, value: &str, reason: &str) -> CrdtError {
    CrdtError::InvalidField {
        field,
        value: truncate_for_error(value),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> CheckSpec {
        serde_json::from_str(json).expect("spec json")
    }

    fn field_of(json: &str) -> Option<&'static str> {
        spec(json)
            .into_check("ops", 1)
            .expect_err("refused")
            .field()
    }

    #[test]
    fn a_minimal_http_spec_takes_the_documented_defaults() {
        let check = spec(r#"{"kind":"http","target":"http://127.0.0.1:8080/health"}"#)
            .into_check("ops", 7)
            .expect("valid");
        assert_eq!(check.interval_s, INTERVAL_S_DEFAULT);
        assert_eq!(check.timeout_ms, TIMEOUT_MS_DEFAULT);
        assert_eq!(check.failures_before_down, FAILURES_BEFORE_DOWN_DEFAULT);
        assert_eq!(check.regions, None);
        assert_eq!(check.down_when_of(3), 2);
        assert_eq!(check.down_when_of(4), 3);
        assert_eq!(check.ttl_ms(), 90_000);
        assert!(check.status_ok(204) && !check.status_ok(301));
        assert_eq!(
            check.parse_target().expect("target"),
            Target::Http {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/health".into()
            }
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (r#"{"kind":"icmp","target":"x:1"}"#, "kind"),
            (r#"{"kind":"http","target":"ftp://x"}"#, "target"),
            (r#"{"kind":"http","target":"http://a b"}"#, "target"),
            (r#"{"kind":"http","target":"http://u@x/"}"#, "target"),
            (r#"{"kind":"http","target":"http://x:0/"}"#, "target"),
            (r#"{"kind":"tcp","target":"x"}"#, "target"),
            (
                r#"{"kind":"http","target":"http://x","interval_s":0}"#,
                "interval_s",
            ),
            (
                r#"{"kind":"http","target":"http://x","interval_s":2,"timeout_ms":3000}"#,
                "timeout_ms",
            ),
            (
                r#"{"kind":"http","target":"http://x","timeout_ms":10}"#,
                "timeout_ms",
            ),
            (
                r#"{"kind":"tcp","target":"x:1","expect_status":[200]}"#,
                "expect_status",
            ),
            (
                r#"{"kind":"http","target":"http://x","expect_status":[99]}"#,
                "expect_status",
            ),
            (
                r#"{"kind":"http","target":"http://x","body_contains":""}"#,
                "body_contains",
            ),
            (
                r#"{"kind":"http","target":"http://x","degraded_above_ms":9000}"#,
                "degraded_above_ms",
            ),
            (
                r#"{"kind":"http","target":"http://x","failures_before_down":0}"#,
                "failures_before_down",
            ),
            (
                r#"{"kind":"http","target":"http://x","regions":[]}"#,
                "regions",
            ),
            (
                r#"{"kind":"http","target":"http://x","regions":["EU"]}"#,
                "regions",
            ),
            (
                r#"{"kind":"http","target":"http://x","regions":["eu","eu"]}"#,
                "regions",
            ),
            (
                r#"{"kind":"http","target":"http://x","regions":["eu"],"agreement":{"down_when":2}}"#,
                "agreement.down_when",
            ),
        ];
        for (json, field) in cases {
            assert_eq!(field_of(json), Some(field), "{json}");
        }
    }

    #[test]
    fn targets_parse_ipv6_default_ports_and_queries() {
        let http = |t: &str| parse_target(CheckKind::Http, t).expect(t);
        assert_eq!(http("https://example.com").port(), 443);
        assert_eq!(http("http://[::1]:81/x").host(), "::1");
        match http("http://h?q=1") {
            Target::Http { path, .. } => assert_eq!(path, "/?q=1"),
            other => panic!("{other:?}"),
        }
        let tcp = parse_target(CheckKind::Tcp, "db.internal:5432").expect("tcp");
        assert_eq!((tcp.host(), tcp.port()), ("db.internal", 5432));
        assert!(parse_target(CheckKind::Tcp, "[::1]").is_err());
    }

    #[test]
    fn outcomes_are_judged_by_status_body_and_latency() {
        let check = spec(
            r#"{"kind":"http","target":"http://x","expect_status":[200],
                "body_contains":"ok","degraded_above_ms":800}"#,
        )
        .into_check("ops", 1)
        .expect("valid");
        let answered = |latency_ms, status, body| ProbeOutcome::Answered {
            latency_ms,
            status: Some(status),
            body_matched: Some(body),
        };
        assert_eq!(judge(&check, &answered(5, 200, true)).0, State::Operational);
        assert_eq!(
            judge(&check, &answered(5, 500, true)),
            (State::MajorOutage, "status 500".into())
        );
        assert_eq!(
            judge(&check, &answered(5, 200, false)).0,
            State::MajorOutage
        );
        assert_eq!(
            judge(&check, &answered(900, 200, true)).0,
            State::DegradedPerformance
        );
    }

    #[test]
    fn down_is_reported_only_after_enough_failures_in_a_row() {
        let check = spec(r#"{"kind":"tcp","target":"x:1","failures_before_down":2}"#)
            .into_check("ops", 1)
            .expect("valid");
        let ok = ProbeOutcome::Answered {
            latency_ms: 1,
            status: None,
            body_matched: None,
        };
        let refused = ProbeOutcome::Failed {
            reason: "connection refused".into(),
        };
        let mut count = FailureCount::default();
        assert_eq!(count.report(&check, &ok).0, State::Operational);
        assert_eq!(count.report(&check, &refused).0, State::Operational);
        assert_eq!(
            count.report(&check, &refused),
            (State::MajorOutage, "connection refused".into())
        );
        assert_eq!(count.consecutive(), 2);
        assert_eq!(count.report(&check, &ok).0, State::Operational);
        assert_eq!(count.consecutive(), 0);
    }
}
