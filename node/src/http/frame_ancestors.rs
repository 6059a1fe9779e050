//! Who may embed the page in a frame: the `frame-ancestors` directive of the documents'
//! `Content-Security-Policy` (`statusmesh run --frame-ancestors`, default `'none'`), and the
//! `X-Frame-Options` that agrees with it.
//!
//! The value is checked against CSP Level 3's grammar for this directive
//! (`ancestor-source-list`: `'none'` alone, or `'self'`, schemes such as `https:`, and hosts
//! such as `https://status.example.com`, `*.example.com:443`), so a typo fails the start
//! instead of reaching browsers, which ignore what they cannot parse and so would silently
//! allow or forbid embedding. Nothing else can enter the header: no `;` (another directive),
//! no `,` (another policy), no control characters.
//!
//! A browser's CSP engine (e.g. Servo's `content-security-policy` crate) parses leniently,
//! dropping bad tokens as the specification says a browser must; a start flag must refuse
//! them, hence the few lines of grammar here.

use std::fmt;
use std::str::FromStr;

use axum::http::HeaderValue;

/// The policy of every HTML and SVG response before its `frame-ancestors`: nothing but this
/// origin's own script, style and connections; no inline script, no plugins, no forms
/// elsewhere.
pub const DOCUMENT_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'";

/// The longest `--frame-ancestors` value, in bytes (a header line stays small).
pub const FRAME_ANCESTORS_BYTES_MAX: usize = 2048;

/// A valid `frame-ancestors` source list, and the document headers it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameAncestors {
    /// The sources, single-space separated, keywords in lower case.
    sources: String,
    /// [`DOCUMENT_POLICY`] with this `frame-ancestors` directive.
    content_security_policy: HeaderValue,
}

impl FrameAncestors {
    /// `'none'`: no page may frame this one (the default).
    pub fn none() -> Self {
        Self::parse("'none'").expect("'none' is a valid source list")
    }

    /// Parses a source list (sources separated by spaces); the error says which source breaks
    /// which rule.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > FRAME_ANCESTORS_BYTES_MAX {
            return Err(format!(
                "at most {FRAME_ANCESTORS_BYTES_MAX} bytes, got {}",
                text.len()
            ));
        }
        if let Some(c) = text.chars().find(|c| matches!(c, ';' | ',')) {
            return Err(format!(
                "{c:?} cannot appear: the value is the sources of frame-ancestors only"
            ));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii() || c.is_ascii_control()) {
            return Err(format!(
                "{c:?} cannot appear: sources are visible ASCII separated by spaces"
            ));
        }
        let sources: Vec<String> = text
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(source)
            .collect::<Result<_, _>>()?;
        match sources.as_slice() {
            [] => return Err(
                "give 'none', or one or more sources such as 'self' or https://status.example.com"
                    .to_owned(),
            ),
            [only] if only == "'none'" => {}
            more if more.iter().any(|s| s == "'none'") => {
                return Err(
                    "'none' stands alone: it cannot be combined with other sources".to_owned(),
                )
            }
            _ => {}
        }
        let sources = sources.join(" ");
        let policy = format!("{DOCUMENT_POLICY}; frame-ancestors {sources}");
        let content_security_policy =
            HeaderValue::from_str(&policy).map_err(|e| format!("not a valid header value: {e}"))?;
        Ok(Self {
            sources,
            content_security_policy,
        })
    }

    /// The same policy with the mesh's other nodes (their HTTP addresses) allowed in
    /// `connect-src`, so that the page can follow another node when its own is gone. An
    /// unspecified address (`0.0.0.0`) allows any host on its port, since the page reaches
    /// it by the host name it was served from.
    pub fn with_mesh_connect(
        mut self,
        addrs: impl IntoIterator<Item = std::net::SocketAddr>,
    ) -> Self {
        let mut connect = vec!["'self'".to_owned()];
        for addr in addrs {
            let source = if addr.ip().is_unspecified() {
                format!("http://*:{}", addr.port())
            } else {
                format!("http://{addr}")
            };
            if !connect.contains(&source) {
                connect.push(source);
            }
        }
        let document = DOCUMENT_POLICY.replace(
            "connect-src 'self'",
            &format!("connect-src {}", connect.join(" ")),
        );
        let policy = format!("{document}; frame-ancestors {}", self.sources);
        // Socket addresses are visible ASCII without `;` or `,`: the value is always valid.
        if let Ok(value) = HeaderValue::from_str(&policy) {
            self.content_security_policy = value;
        }
        self
    }

    /// The whole `Content-Security-Policy` of a document.
    pub fn content_security_policy(&self) -> &HeaderValue {
        &self.content_security_policy
    }

    /// `DENY` when no page may frame this one; otherwise none (the CSP directive governs,
    /// and `X-Frame-Options` cannot name several origins).
    pub fn x_frame_options(&self) -> Option<HeaderValue> {
        (self.sources == "'none'").then(|| HeaderValue::from_static("DENY"))
    }
}

impl Default for FrameAncestors {
    fn default() -> Self {
        Self::none()
    }
}

impl FromStr for FrameAncestors {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for FrameAncestors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sources)
    }
}

/// One `ancestor-source`, normalised (keywords and schemes lower-case), or why it is not one.
fn source(token: &str) -> Result<String, String> {
    let refuse = |rule: &str| Err(format!("{token:?} is not a frame-ancestors source: {rule}"));
    if token.starts_with('\'') {
        let keyword = token.to_ascii_lowercase();
        return match keyword.as_str() {
            "'none'" | "'self'" => Ok(keyword),
            _ => refuse("the only keywords here are 'self' and 'none'"),
        };
    }
    // Valid host names, but surely the keywords without their quotes.
    if token.eq_ignore_ascii_case("self") || token.eq_ignore_ascii_case("none") {
        return refuse("keywords keep their single quotes ('self', 'none')");
    }
    // scheme-source: `https:`.
    if let Some(scheme) = token.strip_suffix(':') {
        if is_scheme(scheme) {
            return Ok(token.to_ascii_lowercase());
        }
        return refuse("a scheme is a letter, then letters, digits, '+', '-' or '.'");
    }
    // host-source: [scheme "://"] host [":" port] [path].
    let rest = match token.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => rest,
        Some(_) => return refuse("a scheme is a letter, then letters, digits, '+', '-' or '.'"),
        None => token,
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if !is_host(host) {
        return refuse(
            "a host is '*', or DNS labels (a-z, 0-9, '-') with an optional leading '*.'",
        );
    }
    if let Some(port) = port {
        if !(port == "*" || (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))) {
            return refuse("a port is digits or '*'");
        }
    }
    if !path.is_empty() && !is_path(path) {
        return refuse("a path holds letters, digits and -._~!$&'()*+=:@/%");
    }
    Ok(token.to_owned())
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(text: &str) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `host-part = "*" / [ "*." ] 1*host-char *( "." 1*host-char ) [ "." ]`.
fn is_host(text: &str) -> bool {
    if text == "*" {
        return true;
    }
    let text = text.strip_prefix("*.").unwrap_or(text);
    let text = text.strip_suffix('.').unwrap_or(text);
    !text.is_empty()
        && text.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `path-part`: an absolute path of URL path characters (`;` and `,` were refused already).
fn is_path(text: &str) -> bool {
    text.starts_with('/')
        && !text.starts_with("//")
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+=:@/%".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_nodes_are_allowed_to_connect_and_frame_ancestors_stays_last() {
        let policy = FrameAncestors::none().with_mesh_connect([
            "127.0.0.1:8101".parse().expect("addr"),
            "0.0.0.0:8201".parse().expect("addr"),
        ]);
        let text = policy
            .content_security_policy()
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(
            text.contains("connect-src 'self' http://127.0.0.1:8101 http://*:8201;"),
            "{text}"
        );
        assert!(text.ends_with("; frame-ancestors 'none'"), "{text}");
    }

    #[test]
    fn the_default_forbids_framing_with_both_headers() {
        let none = FrameAncestors::default();
        let policy = none.content_security_policy().to_str().expect("ascii");
        assert!(policy.starts_with(DOCUMENT_POLICY), "{policy}");
        assert!(policy.ends_with("; frame-ancestors 'none'"), "{policy}");
        assert_eq!(
            none.x_frame_options(),
            Some(HeaderValue::from_static("DENY"))
        );
        assert_eq!(FrameAncestors::parse("  'NONE' ").expect("valid"), none);
    }

    #[test]
    fn sources_are_normalised_and_only_the_csp_governs_them() {
        // An IPv6 literal is not in the grammar.
        assert!(FrameAncestors::parse("'self' http://[::1]").is_err());
        let embed = FrameAncestors::parse(
            "'Self'  https://status.example.com HTTPS: *.example.org:443/embed/ *",
        )
        .expect("valid");
        assert_eq!(
            embed.to_string(),
            "'self' https://status.example.com https: *.example.org:443/embed/ *"
        );
        let policy = embed.content_security_policy().to_str().expect("ascii");
        assert!(
            policy.ends_with("; frame-ancestors 'self' https://status.example.com https: *.example.org:443/embed/ *"),
            "{policy}"
        );
        assert_eq!(embed.x_frame_options(), None);
        for valid in [
            "localhost:8080",
            "https://*.example.com:*",
            "chrome-extension:",
            "example.com.",
        ] {
            assert!(FrameAncestors::parse(valid).is_ok(), "{valid}");
        }
    }

    #[test]
    fn what_could_change_the_policy_or_break_the_header_is_refused_with_the_rule() {
        let error = |text: &str| FrameAncestors::parse(text).expect_err(text);
        assert!(error("'self'; script-src *").contains("';'"));
        assert!(error("'self', https://a.example").contains("','"));
        assert!(error("'self'\r\nx-injected: 1").contains("cannot appear"));
        assert!(error("'self'\thttps://a.example").contains("cannot appear"));
        assert!(error("").contains("give 'none'"));
        assert!(error("'none' 'self'").contains("stands alone"));
        assert!(error("'unsafe-inline'").contains("'self' and 'none'"));
        assert!(error("self").contains("single quotes"));
        assert!(error("https://exa_mple.com").contains("a host is"));
        assert!(error("https://example.com:80a").contains("a port is"));
        assert!(error("1http://example.com").contains("a scheme is"));
        assert!(error("https://example.com/a\"b").contains("a path holds"));
        assert!(error("ex\u{e9}mple.com").contains("cannot appear"));
        assert!(error(&"a".repeat(FRAME_ANCESTORS_BYTES_MAX + 1)).contains("at most"));
    }
}
