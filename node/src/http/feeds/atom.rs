//! Writes a [`Feed`] as Atom 1.0 (RFC 4287): the feed's `id`, `title`, `updated`, `author`
//! and links (the page as `alternate`, the feed itself as `self`), then each entry's `id`,
//! `title`, `updated`, `published`, `author`, `link`, `category` (its service) and
//! `content type="text"`. Every value is escaped by [`xml::escape`].

use std::fmt::Write as _;

use super::{xml, Feed};

/// The Atom document of `feed`.
pub fn render(feed: &Feed) -> String {
    let e = xml::escape;
    let mut out = String::with_capacity(1024 + feed.entries.len() * 512);
    out.push_str("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n");
    out.push_str("<feed xmlns=\"http://www.w3.org/2005/Atom\">\n");
    // `write!` to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "  <id>{}</id>", e(&feed.id));
    let _ = writeln!(out, "  <title type=\"text\">{}</title>", e(&feed.title));
    let _ = writeln!(
        out,
        "  <subtitle type=\"text\">{}</subtitle>",
        e(&feed.description)
    );
    let _ = writeln!(
        out,
        "  <updated>{}</updated>",
        xml::rfc3339(feed.updated_ms)
    );
    let _ = writeln!(out, "  <author><name>{}</name></author>", e(&feed.author));
    let _ = writeln!(
        out,
        "  <link rel=\"alternate\" type=\"text/html\" href=\"{}/\"/>",
        e(&feed.page_url)
    );
    let _ = writeln!(
        out,
        "  <link rel=\"self\" type=\"application/atom+xml\" href=\"{}\"/>",
        e(&feed.self_url)
    );
    out.push_str("  <generator>statusmesh</generator>\n");
    for entry in &feed.entries {
        let updated = xml::rfc3339(entry.updated_ms);
        out.push_str("  <entry>\n");
        let _ = writeln!(out, "    <id>{}</id>", e(&entry.id));
        let _ = writeln!(out, "    <title type=\"text\">{}</title>", e(&entry.title));
        let _ = writeln!(out, "    <updated>{updated}</updated>");
        let _ = writeln!(out, "    <published>{updated}</published>");
        let _ = writeln!(
            out,
            "    <author><name>{}</name></author>",
            e(&entry.author)
        );
        let _ = writeln!(
            out,
            "    <link rel=\"alternate\" type=\"text/html\" href=\"{}\"/>",
            e(&entry.link)
        );
        let _ = writeln!(out, "    <category term=\"{}\"/>", e(&entry.service));
        let _ = writeln!(
            out,
            "    <content type=\"text\">{}</content>",
            e(&entry.content)
        );
        out.push_str("  </entry>\n");
    }
    out.push_str("</feed>\n");
    out
}
