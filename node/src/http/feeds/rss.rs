//! Writes a [`Feed`] as RSS 2.0: the channel's `title`, `link`, `description`,
//! `lastBuildDate` and an `atom:link rel="self"`, then each item's `title`, `link`,
//! `guid isPermaLink="false"` (the entry's URN), `pubDate` (RFC 822), `dc:creator` (RSS's
//! own `author` must be an e-mail address), `category` (its service) and `description`.
//! Readers render a description as HTML, so the text is HTML-escaped
//! ([`xml::html_of_text`]) and then XML-escaped like every other value.

use std::fmt::Write as _;

use super::{xml, Feed};

/// The RSS document of `feed`.
pub fn render(feed: &Feed) -> String {
    let e = xml::escape;
    let mut out = String::with_capacity(1024 + feed.entries.len() * 512);
    out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    out.push_str(concat!(
        "<rss version=\"2.0\" xmlns:atom=\"http://www.w3.org/2005/Atom\"",
        " xmlns:dc=\"http://purl.org/dc/elements/1.1/\">\n"
    ));
    out.push_str("<channel>\n");
    // `write!` to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "  <title>{}</title>", e(&feed.title));
    let _ = writeln!(out, "  <link>{}/</link>", e(&feed.page_url));
    let _ = writeln!(out, "  <description>{}</description>", e(&feed.description));
    let _ = writeln!(
        out,
        "  <atom:link href=\"{}\" rel=\"self\" type=\"application/rss+xml\"/>",
        e(&feed.self_url)
    );
    let _ = writeln!(
        out,
        "  <lastBuildDate>{}</lastBuildDate>",
        xml::rfc822(feed.updated_ms)
    );
    out.push_str("  <generator>statusmesh</generator>\n");
    for entry in &feed.entries {
        out.push_str("  <item>\n");
        let _ = writeln!(out, "    <title>{}</title>", e(&entry.title));
        let _ = writeln!(out, "    <link>{}</link>", e(&entry.link));
        let _ = writeln!(
            out,
            "    <guid isPermaLink=\"false\">{}</guid>",
            e(&entry.id)
        );
        let _ = writeln!(
            out,
            "    <pubDate>{}</pubDate>",
            xml::rfc822(entry.updated_ms)
        );
        let _ = writeln!(out, "    <dc:creator>{}</dc:creator>", e(&entry.author));
        let _ = writeln!(out, "    <category>{}</category>", e(&entry.service));
        let _ = writeln!(
            out,
            "    <description>{}</description>",
            e(&xml::html_of_text(&entry.content))
        );
        out.push_str("  </item>\n");
    }
    out.push_str("</channel>\n</rss>\n");
    out
}
