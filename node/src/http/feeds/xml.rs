//! The few pieces of XML the feeds need, written by hand: escaping of text and attribute
//! values, and the two date formats (RFC 3339 for Atom, RFC 822 for RSS).
//!
//! Every string that reaches a feed from a user (titles, update texts, authors, names) goes
//! through [`escape`]; nothing is ever wrapped in CDATA, so `]]>` in a message is just text.

use super::super::statuspage::ids::{civil_from_days, iso8601};

/// `text` made safe as XML 1.0 character data or a double- or single-quoted attribute value
/// (the feeds' and the SVG badges'): the five markup characters become entities, and control
/// characters other than tab, line feed and carriage return, U+FFFE and U+FFFF, which XML
/// cannot carry or should not, become U+FFFD so the document stays well-formed.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// `text` as HTML that shows it literally, line breaks kept: RSS readers render an item's
/// `description` as HTML, so user text is HTML-escaped before it is XML-escaped.
pub fn html_of_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}

/// `at_ms` as RFC 3339 in UTC with milliseconds (Atom's date construct).
pub fn rfc3339(at_ms: u64) -> String {
    iso8601(at_ms)
}

/// `at_ms` as an RFC 822 date with a four-digit year, in GMT (RSS 2.0's `pubDate`), e.g.
/// `Wed, 02 Dec 2026 14:10:07 GMT`.
pub fn rfc822(at_ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAY_MS: u64 = 24 * 3600 * 1000;
    let days = at_ms / DAY_MS;
    let in_day_s = at_ms % DAY_MS / 1000;
    let (year, month, day) = civil_from_days(days as i64);
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[(days % 7) as usize];
    let month = MONTHS[(month as usize).saturating_sub(1).min(11)];
    format!(
        "{weekday}, {day:02} {month} {year:04} {:02}:{:02}:{:02} GMT",
        in_day_s / 3600,
        in_day_s / 60 % 60,
        in_day_s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_characters_become_entities_and_cdata_ends_are_plain_text() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &apos;y&apos;"
        );
        assert_eq!(escape("a ]]> b"), "a ]]&gt; b");
        assert_eq!(
            escape("&amp;"),
            "&amp;amp;",
            "entities in user text are text"
        );
        assert_eq!(escape("é 日本 🚀"), "é 日本 🚀");
    }

    #[test]
    fn characters_xml_cannot_carry_are_replaced_and_whitespace_is_kept() {
        assert_eq!(escape("a\u{0}b\u{1b}c"), "a\u{FFFD}b\u{FFFD}c");
        assert_eq!(escape("\u{FFFE}\u{FFFF}"), "\u{FFFD}\u{FFFD}");
        assert_eq!(escape("a\tb\nc\rd"), "a\tb\nc\rd");
    }

    #[test]
    fn text_for_an_html_description_shows_literally() {
        assert_eq!(html_of_text("<b>&\"\nnext"), "&lt;b&gt;&amp;&quot;<br>next");
        // Then escaped again for the XML around it.
        assert_eq!(escape(&html_of_text("<b>")), "&amp;lt;b&amp;gt;");
    }

    #[test]
    fn dates_are_rfc3339_for_atom_and_rfc822_for_rss() {
        assert_eq!(rfc3339(1_796_220_607_123), "2026-12-02T14:10:07.123Z");
        assert_eq!(rfc822(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(rfc822(1_796_220_607_123), "Wed, 02 Dec 2026 14:10:07 GMT");
        assert_eq!(rfc822(951_782_400_000), "Tue, 29 Feb 2000 00:00:00 GMT");
    }
}
