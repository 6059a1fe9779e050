//! Node settings beyond regions.toml: write tokens and storage limits.
//!
//! Parse, don't validate: raw serde structs with `deny_unknown_fields`, then `TryFrom` into
//! validated types. Errors name the file, the line, the key, the value and the rule.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest tokens file read, in bytes.
pub const TOKENS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Most tokens in one file.
pub const TOKENS_MAX: usize = 1024;
/// Shortest secret accepted in a tokens file, in bytes: short secrets are guessable.
pub const SECRET_LEN_MIN: usize = 16;
/// Longest token name or secret, in bytes.
const FIELD_LEN_MAX: usize = 256;
/// Most SSE subscribers (and waiting long-polls) one node serves at once, by default. The
/// open-file hard limit here is 20,000 per process; this leaves room for peers and storage.
pub const SUBSCRIBERS_MAX: usize = 18_000;
/// How long a client may take to send a request's headers, and then its body, by default
/// (hyper's own header default when it has a timer).
pub const REQUEST_READ_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(30);

/// A settings error. Nothing was started; the operator fixes the file and retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The file could not be read.
    #[error("{file}: {reason}")]
    Read { file: String, reason: String },
    /// The file is not valid TOML or has an unknown or missing key.
    #[error("{file}:{line}: {reason}")]
    Syntax {
        file: String,
        line: usize,
        reason: String,
    },
    /// A value breaks a rule.
    #[error("{file}:{line}: {key} = {value:?}: {rule}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        value: String,
        rule: String,
    },
}

/// A write token: a name for logs, the SHA-256 of the secret clients present as
/// `Bearer <secret>` (the secret itself is not kept), and what it may write.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub secret_sha256: [u8; 32],
    pub scope: Scope,
}

/// The SHA-256 of a secret, as tokens keep it.
pub fn secret_sha256(secret: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// A SHA-256 in lower-case hex, as `statusmesh token hash` prints it and a tokens file's
/// `secret_sha256` gives it.
pub fn sha256_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// 64 hex digits parsed into a SHA-256 (either case); `None` for anything else.
fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *out = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(digest)
}

/// What a token may write. `None` lists mean "any".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Services it may write to.
    pub services: Option<Vec<String>>,
    /// Regions whose observations it may write.
    pub regions: Option<Vec<String>>,
    /// Whether it may open and update incidents, schedule maintenance and set overrides.
    pub operator: bool,
    /// A read-only evaluation token: it may evaluate flags (OFREP) and write nothing.
    pub evaluate_only: bool,
}

impl Scope {
    /// Everything: the scope of a `--token` given on the command line.
    pub fn all() -> Self {
        Self {
            services: None,
            regions: None,
            operator: true,
            evaluate_only: false,
        }
    }

    /// Why an observation of `service` in `region` is out of scope, if it is.
    pub fn refuse_status(&self, service: &str, region: &str) -> Option<String> {
        if self.evaluate_only {
            return Some(EVALUATE_ONLY.into());
        }
        if let Some(services) = &self.services {
            if !services.iter().any(|s| s == service) {
                return Some(format!("this token may not write service {service:?}"));
            }
        }
        if let Some(regions) = &self.regions {
            if !regions.iter().any(|r| r == region) {
                return Some(format!(
                    "this token may not write observations of region {region:?}"
                ));
            }
        }
        None
    }

    /// Why operator writes (incidents, maintenance, overrides) to `service` are out of
    /// scope, if they are.
    pub fn refuse_operator(&self, service: &str) -> Option<String> {
        if self.evaluate_only {
            return Some(EVALUATE_ONLY.into());
        }
        if !self.operator {
            return Some(
                "this token may not write incidents, maintenance or overrides (operator = false)"
                    .into(),
            );
        }
        if let Some(services) = &self.services {
            if !services.iter().any(|s| s == service) {
                return Some(format!("this token may not write service {service:?}"));
            }
        }
        None
    }
}

/// Why an evaluation token may not write.
const EVALUATE_ONLY: &str = "this token may only evaluate flags (evaluate_only = true)";

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches logs.
        f.debug_struct("Token").field("name", &self.name).finish()
    }
}

/// The write tokens of a node.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

impl Tokens {
    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The names of the tokens that may write operator records.
    pub fn operators(&self) -> String {
        let names: Vec<&str> = self
            .tokens
            .iter()
            .filter(|t| t.scope.operator && !t.scope.evaluate_only)
            .map(|t| t.name.as_str())
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// One token given on the command line (`--token`), named `cli`.
    pub fn single(secret: &str) -> Self {
        Self {
            tokens: vec![Token {
                name: "cli".to_owned(),
                secret_sha256: secret_sha256(secret),
                scope: Scope::all(),
            }],
        }
    }

    /// Reads a tokens file:
    ///
    /// ```toml
    /// [[token]]
    /// name = "ci"
    /// secret = "at least sixteen bytes"
    ///
    /// [[token]]
    /// name = "probe"
    /// # `statusmesh token hash` prints it; a copy of this file grants no writes.
    /// secret_sha256 = "<64 hex digits>"
    /// ```
    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        use std::io::Read;
        let file = path.display().to_string();
        let read_error = |e: std::io::Error| SettingsError::Read {
            file: file.clone(),
            reason: e.to_string(),
        };
        let handle = std::fs::File::open(path).map_err(read_error)?;
        let mut text = String::new();
        handle
            .take(TOKENS_FILE_BYTES_MAX + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > TOKENS_FILE_BYTES_MAX {
            return Err(SettingsError::Read {
                file,
                reason: format!("larger than the limit of {TOKENS_FILE_BYTES_MAX} bytes"),
            });
        }
        Self::parse(&file, &text)
    }

    /// Parses the text of a tokens file; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, SettingsError> {
        let raw: RawTokensFile = toml::from_str(text).map_err(|e| SettingsError::Syntax {
            file: file.to_owned(),
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            reason: e.message().to_owned(),
        })?;
        let invalid = |index: usize, key: &str, value: &str, rule: String| {
            let line = find_line(text, index, key);
            SettingsError::Invalid {
                file: file.to_owned(),
                line,
                key: format!("token[{index}].{key}"),
                value: if key == "secret" || key == "secret_sha256" {
                    "<hidden>".to_owned()
                } else {
                    value.to_owned()
                },
                rule,
            }
        };
        if raw.token.is_empty() {
            return Err(SettingsError::Syntax {
                file: file.to_owned(),
                line: 1,
                reason: "no [[token]] entries; a tokens file needs at least one".to_owned(),
            });
        }
        if raw.token.len() > TOKENS_MAX {
            return Err(invalid(
                TOKENS_MAX,
                "name",
                "",
                format!("at most {TOKENS_MAX} tokens per file"),
            ));
        }
        let mut tokens: Vec<Token> = Vec::with_capacity(raw.token.len());
        for (index, entry) in raw.token.into_iter().enumerate() {
            let name_ok = !entry.name.is_empty()
                && entry.name.len() <= FIELD_LEN_MAX
                && entry
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !name_ok {
                return Err(invalid(
                    index,
                    "name",
                    &entry.name,
                    format!("1 to {FIELD_LEN_MAX} characters of a-z, A-Z, 0-9, '-', '_', '.'"),
                ));
            }
            if tokens.iter().any(|t| t.name == entry.name) {
                return Err(invalid(
                    index,
                    "name",
                    &entry.name,
                    "token names must be unique".to_owned(),
                ));
            }
            let digest = match (&entry.secret, &entry.secret_sha256) {
                (Some(secret), None) => {
                    let secret_ok = (SECRET_LEN_MIN..=FIELD_LEN_MAX).contains(&secret.len())
                        && secret.chars().all(|c| c.is_ascii_graphic());
                    if !secret_ok {
                        return Err(invalid(
                            index,
                            "secret",
                            secret,
                            format!(
                                "{SECRET_LEN_MIN} to {FIELD_LEN_MAX} printable ASCII characters, no spaces"
                            ),
                        ));
                    }
                    secret_sha256(secret)
                }
                (None, Some(hex)) => parse_sha256_hex(hex).ok_or_else(|| {
                    invalid(
                        index,
                        "secret_sha256",
                        hex,
                        "64 hex digits, as `statusmesh token hash` prints them".to_owned(),
                    )
                })?,
                _ => {
                    return Err(invalid(
                        index,
                        "secret",
                        "",
                        "give exactly one of secret and secret_sha256".to_owned(),
                    ))
                }
            };
            if tokens.iter().any(|t| t.secret_sha256 == digest) {
                return Err(invalid(
                    index,
                    "secret",
                    "",
                    "two tokens share a secret".to_owned(),
                ));
            }
            for (key, list) in [("services", &entry.services), ("regions", &entry.regions)] {
                for value in list.iter().flatten() {
                    if statusmesh_crdt::Name::parse("name", value).is_err() {
                        return Err(invalid(
                            index,
                            key,
                            value,
                            "names are 1-64 characters of a-z, 0-9, '-', '_', '.'".to_owned(),
                        ));
                    }
                }
            }
            tokens.push(Token {
                name: entry.name,
                secret_sha256: digest,
                scope: Scope {
                    services: entry.services,
                    regions: entry.regions,
                    operator: entry.operator.unwrap_or(true),
                    evaluate_only: entry.evaluate_only.unwrap_or(false),
                },
            });
        }
        Ok(Self { tokens })
    }

    /// The name of the token whose secret is `presented`, compared in constant time per token.
    pub fn authorize(&self, presented: &str) -> Option<&str> {
        self.token(presented).map(|t| t.name.as_str())
    }

    /// The token whose secret is `presented`: the SHA-256 of `presented` is compared with
    /// every token's in constant time (`subtle`), and every token is compared, so the time
    /// taken says nothing about which token, or how much of one, matched.
    pub fn token(&self, presented: &str) -> Option<&Token> {
        use subtle::ConstantTimeEq as _;
        let digest = secret_sha256(presented);
        let mut found = None;
        for token in &self.tokens {
            if bool::from(digest.ct_eq(&token.secret_sha256)) {
                found = Some(token);
            }
        }
        found
    }

    /// True when no token is configured (every write is refused).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokensFile {
    #[serde(default)]
    token: Vec<RawToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    /// The secret itself; or, instead, its SHA-256 in hex.
    secret: Option<String>,
    secret_sha256: Option<String>,
    /// Services it may write (default: all).
    services: Option<Vec<String>>,
    /// Regions whose observations it may write (default: all).
    regions: Option<Vec<String>>,
    /// May it write incidents, maintenance and overrides (default: true).
    operator: Option<bool>,
    /// A read-only flag evaluation token (default: false).
    evaluate_only: Option<bool>,
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

/// The line of `key` in the `index`-th `[[token]]` table (best effort; 0 when not found).
fn find_line(text: &str, index: usize, key: &str) -> usize {
    let mut tables = 0usize;
    let mut in_table = false;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with("[[token]]") {
            in_table = tables == index;
            tables += 1;
            continue;
        }
        if in_table
            && trimmed
                .split('=')
                .next()
                .is_some_and(|k| k.trim().trim_matches('"') == key)
        {
            return number + 1;
        }
    }
    0
}

/// Everything a node needs beyond its topology entry and certificate.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Where snapshots and change logs live.
    pub data_dir: PathBuf,
    /// Who may write.
    pub tokens: Tokens,
    /// When logs are folded into snapshots.
    pub snapshot: crate::storage::SnapshotPolicy,
    /// Most write commands the driver applies per loop iteration, all acknowledged after one
    /// fsync. Default 512.
    pub writes_per_commit_max: usize,
    /// Most SSE subscribers and waiting long-polls served at once; beyond it a client gets
    /// 503 `too_many_subscribers`. Default [`SUBSCRIBERS_MAX`].
    pub subscribers_max: usize,
    /// Events buffered for SSE subscribers (`--sse-ring-events`). Default
    /// [`PUBLISH_BUFFER`](crate::driver::PUBLISH_BUFFER).
    pub sse_ring_events: usize,
    /// Sustained writes per second per token (a burst of two seconds' worth above it); beyond
    /// it a write gets 429 `rate_limited` with `Retry-After`. Default
    /// [`WRITES_PER_SECOND_PER_TOKEN`](crate::http::limits::WRITES_PER_SECOND_PER_TOKEN).
    pub writes_per_second_per_token: u32,
    /// How long an HTTP client may take to send a request's headers (its connection is then
    /// closed), and again its body (408). Default
    /// [`REQUEST_READ_TIMEOUT_DEFAULT`] (30 s).
    pub request_read_timeout: std::time::Duration,
    /// Who may frame the status page (CSP `frame-ancestors`). Default `'none'`.
    pub frame_ancestors: crate::http::frame_ancestors::FrameAncestors,
    /// How `POST /v1/integrations/alertmanager` turns alerts into observations.
    pub alertmanager: AlertmanagerSettings,
    /// Who may read and write from other origins (`--cors-origins`, `--cors-write-origins`).
    pub cors: crate::http::cors::CorsSettings,
    /// The Statuspage API's `page.url` (`--page-url`); `None`: from the request's `Host`.
    pub page_url: Option<String>,
    /// Outgoing webhooks: the retry schedule and the SSRF exception.
    pub webhooks: crate::notify::NotifySettings,
    /// HTTPS for the client API (`--http-tls-cert`, `--http-tls-key`); `None`: plain HTTP.
    /// Shared with the reloader, which swaps the certificate in place.
    pub http_tls: Option<std::sync::Arc<crate::http::tls::HttpTls>>,
}

impl NodeSettings {
    /// Defaults for everything but the data directory and tokens.
    pub fn new(data_dir: PathBuf, tokens: Tokens) -> Self {
        Self {
            data_dir,
            tokens,
            snapshot: crate::storage::SnapshotPolicy::default(),
            writes_per_commit_max: 512,
            subscribers_max: SUBSCRIBERS_MAX,
            sse_ring_events: crate::driver::PUBLISH_BUFFER,
            writes_per_second_per_token: crate::http::limits::WRITES_PER_SECOND_PER_TOKEN,
            request_read_timeout: REQUEST_READ_TIMEOUT_DEFAULT,
            frame_ancestors: crate::http::frame_ancestors::FrameAncestors::none(),
            alertmanager: AlertmanagerSettings::default(),
            cors: crate::http::cors::CorsSettings::default(),
            page_url: None,
            webhooks: crate::notify::NotifySettings::default(),
            http_tls: None,
        }
    }
}

/// The Alertmanager receiver's settings (`statusmesh run --alertmanager-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertmanagerSettings {
    /// The state of a firing alert without a `statusmesh_state` label, by its `severity`
    /// label. Default [`SEVERITY_MAP_DEFAULT`].
    pub severity: SeverityMap,
    /// Open an incident for a component when its first alert fires, and resolve it when the
    /// last one resolves (an alert's `statusmesh_incident` label says so for it alone).
    /// Default off.
    pub incidents: bool,
    /// The TTL of an observation made of firing alerts, and how long a firing alert that
    /// Alertmanager stops repeating is kept. Default [`ALERTMANAGER_FIRING_TTL_DEFAULT`]:
    /// three of Alertmanager's default `repeat_interval` (4 h).
    pub firing_ttl: std::time::Duration,
}

/// The default severity map: Prometheus' customary `severity` label values.
pub const SEVERITY_MAP_DEFAULT: &str =
    "critical=major_outage,error=partial_outage,warning=degraded_performance";

/// The default [`AlertmanagerSettings::firing_ttl`]: 12 hours.
pub const ALERTMANAGER_FIRING_TTL_DEFAULT: std::time::Duration =
    std::time::Duration::from_secs(12 * 3600);

impl Default for AlertmanagerSettings {
    fn default() -> Self {
        Self {
            severity: SEVERITY_MAP_DEFAULT.parse().unwrap_or_default(),
            incidents: false,
            firing_ttl: ALERTMANAGER_FIRING_TTL_DEFAULT,
        }
    }
}

/// `severity` label value → state, as `critical=major_outage,warning=degraded_performance`;
/// the key `*` gives the state of any other severity, and of an alert without one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeverityMap {
    entries: Vec<(String, statusmesh_crdt::State)>,
    fallback: Option<statusmesh_crdt::State>,
}

/// Most entries of a severity map.
const SEVERITY_MAP_ENTRIES_MAX: usize = 64;

impl SeverityMap {
    /// The state of an alert whose `severity` label is `severity`; `None` when the map has
    /// no entry for it and no `*`.
    pub fn state(&self, severity: Option<&str>) -> Option<statusmesh_crdt::State> {
        severity
            .and_then(|s| self.entries.iter().find(|(k, _)| k == s))
            .map(|(_, state)| *state)
            .or(self.fallback)
    }
}

impl std::str::FromStr for SeverityMap {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut map = SeverityMap::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((severity, state)) = pair.split_once('=') else {
                return Err(format!("{pair:?} is not SEVERITY=STATE"));
            };
            let (severity, state) = (severity.trim(), state.trim());
            let state: statusmesh_crdt::State = state.parse().map_err(|e| format!("{e}"))?;
            if severity.is_empty() || severity.len() > FIELD_LEN_MAX {
                return Err(format!(
                    "{pair:?}: the severity is 1 to {FIELD_LEN_MAX} bytes"
                ));
            }
            let taken = map.entries.iter().any(|(k, _)| k == severity)
                || (severity == "*" && map.fallback.is_some());
            if taken {
                return Err(format!("severity {severity:?} is given twice"));
            }
            if severity == "*" {
                map.fallback = Some(state);
            } else if map.entries.len() >= SEVERITY_MAP_ENTRIES_MAX {
                return Err(format!("at most {SEVERITY_MAP_ENTRIES_MAX} severities"));
            } else {
                map.entries.push((severity.to_owned(), state));
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_severity_map_maps_its_keys_and_the_star_maps_the_rest() {
        use statusmesh_crdt::State;
        let default = AlertmanagerSettings::default().severity;
        assert_eq!(default.state(Some("critical")), Some(State::MajorOutage));
        assert_eq!(default.state(Some("info")), None);
        assert_eq!(default.state(None), None);
        let map: SeverityMap = "page=major_outage, *=partial_outage"
            .parse()
            .expect("valid");
        assert_eq!(map.state(Some("page")), Some(State::MajorOutage));
        assert_eq!(map.state(Some("ticket")), Some(State::PartialOutage));
        assert_eq!(map.state(None), Some(State::PartialOutage));
        let bad = "critical=down"
            .parse::<SeverityMap>()
            .expect_err("bad state");
        assert!(bad.contains("state"), "{bad}");
        assert!("critical".parse::<SeverityMap>().is_err());
        assert!("a=operational,a=major_outage"
            .parse::<SeverityMap>()
            .is_err());
    }

    #[test]
    fn a_tokens_file_with_names_authorizes_each_secret() {
        let text = "[[token]]\nname = \"ci\"\nsecret = \"0123456789abcdef\"\n\n[[token]]\nname = \"ops\"\nsecret = \"fedcba9876543210\"\n";
        let tokens = Tokens::parse("tokens.toml", text).expect("valid");
        assert_eq!(tokens.authorize("fedcba9876543210"), Some("ops"));
        assert_eq!(tokens.authorize("0123456789abcdef"), Some("ci"));
        assert_eq!(tokens.authorize("nope"), None);
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_file_and_line() {
        let text = "[[token]]\nname = \"ci\"\nsecret = \"0123456789abcdef\"\nscope = \"all\"\n";
        let err = Tokens::parse("tokens.toml", text).expect_err("unknown key");
        let message = err.to_string();
        assert!(message.starts_with("tokens.toml:4:"), "{message}");
        assert!(message.contains("scope"), "{message}");
    }

    #[test]
    fn a_short_secret_is_an_error_naming_key_and_rule_but_not_the_secret() {
        let text = "[[token]]\nname = \"ci\"\nsecret = \"short\"\n";
        let err = Tokens::parse("tokens.toml", text).expect_err("short secret");
        let message = err.to_string();
        assert!(
            message.starts_with("tokens.toml:3: token[0].secret"),
            "{message}"
        );
        assert!(message.contains("16 to 256"), "{message}");
        assert!(!message.contains("short\""), "{message}");
    }

    #[test]
    fn duplicate_names_are_an_error() {
        let text = "[[token]]\nname = \"ci\"\nsecret = \"0123456789abcdef\"\n[[token]]\nname = \"ci\"\nsecret = \"fedcba9876543210\"\n";
        let err = Tokens::parse("t.toml", text).expect_err("duplicate");
        assert!(err.to_string().contains("unique"), "{err}");
        assert!(err.to_string().starts_with("t.toml:5:"), "{err}");
    }

    #[test]
    fn a_secret_sha256_authorizes_the_secret_but_not_the_hash_itself() {
        let hex = sha256_hex(&secret_sha256("0123456789abcdef"));
        let text = format!("[[token]]\nname = \"ci\"\nsecret_sha256 = \"{hex}\"\n");
        let tokens = Tokens::parse("tokens.toml", &text).expect("parses");
        assert_eq!(tokens.authorize("0123456789abcdef"), Some("ci"));
        assert_eq!(tokens.authorize(&hex), None);
        assert_eq!(tokens.authorize("0123456789abcdeF"), None);
    }

    #[test]
    fn a_token_with_both_or_neither_secret_is_an_error_that_hides_the_values() {
        let hex = sha256_hex(&secret_sha256("0123456789abcdef"));
        let both = format!(
            "[[token]]\nname = \"ci\"\nsecret = \"0123456789abcdef\"\nsecret_sha256 = \"{hex}\"\n"
        );
        let message = Tokens::parse("t.toml", &both)
            .expect_err("both")
            .to_string();
        assert!(message.contains("exactly one"), "{message}");
        assert!(!message.contains("0123456789abcdef"), "{message}");
        let bad = "[[token]]\nname = \"ci\"\nsecret_sha256 = \"abc\"\n";
        let message = Tokens::parse("t.toml", bad)
            .expect_err("bad hex")
            .to_string();
        assert!(message.contains("secret_sha256"), "{message}");
        assert!(Tokens::parse("t.toml", "[[token]]\nname = \"ci\"\n").is_err());
    }
}
