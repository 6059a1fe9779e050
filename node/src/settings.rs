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

/// A write token: a name for logs, a secret clients present as `Bearer <secret>`, and what
/// it may write.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub secret: String,
    pub scope: Scope,
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
}

impl Scope {
    /// Everything: the scope of a `--token` given on the command line.
    pub fn all() -> Self {
        Self {
            services: None,
            regions: None,
            operator: true,
        }
    }

    /// Why an observation of `service` in `region` is out of scope, if it is.
    pub fn refuse_status(&self, service: &str, region: &str) -> Option<String> {
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
    /// One token given on the command line (`--token`), named `cli`.
    pub fn single(secret: &str) -> Self {
        Self {
            tokens: vec![Token {
                name: "cli".to_owned(),
                secret: secret.to_owned(),
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
                value: if key == "secret" {
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
            let secret_ok = (SECRET_LEN_MIN..=FIELD_LEN_MAX).contains(&entry.secret.len())
                && entry.secret.chars().all(|c| c.is_ascii_graphic());
            if !secret_ok {
                return Err(invalid(
                    index,
                    "secret",
                    &entry.secret,
                    format!(
                        "{SECRET_LEN_MIN} to {FIELD_LEN_MAX} printable ASCII characters, no spaces"
                    ),
                ));
            }
            if tokens.iter().any(|t| t.secret == entry.secret) {
                return Err(invalid(
                    index,
                    "secret",
                    &entry.secret,
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
                secret: entry.secret,
                scope: Scope {
                    services: entry.services,
                    regions: entry.regions,
                    operator: entry.operator.unwrap_or(true),
                },
            });
        }
        Ok(Self { tokens })
    }

    /// The name of the token whose secret is `presented`, compared in constant time per token.
    pub fn authorize(&self, presented: &str) -> Option<&str> {
        self.token(presented).map(|t| t.name.as_str())
    }

    /// The token whose secret is `presented`, compared in constant time per token.
    pub fn token(&self, presented: &str) -> Option<&Token> {
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(presented.as_bytes(), token.secret.as_bytes()) {
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    secret: String,
    /// Services it may write (default: all).
    services: Option<Vec<String>>,
    /// Regions whose observations it may write (default: all).
    regions: Option<Vec<String>>,
    /// May it write incidents, maintenance and overrides (default: true).
    operator: Option<bool>,
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
    /// How long an HTTP client may take to send a request's headers (its connection is then
    /// closed), and again its body (408). Default
    /// [`REQUEST_READ_TIMEOUT_DEFAULT`] (30 s).
    pub request_read_timeout: std::time::Duration,
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
            request_read_timeout: REQUEST_READ_TIMEOUT_DEFAULT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
