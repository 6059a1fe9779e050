//! A flat two-part badge as SVG (the look of shields.io's `flat` style), hand-written: a
//! grey label, a coloured message, both as text. The message says the state in words, so
//! the badge reads the same without colour; `<title>` and `aria-label` carry it for screen
//! readers. Every text is XML-escaped.

/// Approximate advance of one character of 11 px Verdana, in tenths of a pixel; the text is
/// also given `textLength`, so it fits its box exactly whatever font the viewer has.
const CHAR_WIDTH_TENTHS: usize = 62;
/// Horizontal padding on each side of a text, in pixels.
const PADDING_PX: usize = 6;
/// The label's background.
const LABEL_COLOUR: &str = "#555";

/// The SVG of a badge reading `label` and `message` on `colour` (a `#rrggbb` value).
pub fn render(label: &str, message: &str, colour: &str) -> String {
    let label_text = text_width(label);
    let message_text = text_width(message);
    let label_width = label_text + 2 * PADDING_PX;
    let message_width = message_text + 2 * PADDING_PX;
    let width = label_width + message_width;
    let (label_x, message_x) = (label_width * 5, label_width * 10 + message_width * 5);
    let (label, message) = (escape(label), escape(message));
    let colour = escape(colour);
    format!(
        concat!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" aria-label="{label}: {message}">"##,
            r##"<title>{label}: {message}</title>"##,
            r##"<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient>"##,
            r##"<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>"##,
            r##"<g clip-path="url(#r)"><rect width="{label_width}" height="20" fill="{label_colour}"/>"##,
            r##"<rect x="{label_width}" width="{message_width}" height="20" fill="{colour}"/>"##,
            r##"<rect width="{width}" height="20" fill="url(#s)"/></g>"##,
            r##"<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" text-rendering="geometricPrecision" font-size="110">"##,
            r##"<text aria-hidden="true" x="{label_x}" y="150" fill="#010101" fill-opacity=".3" transform="scale(.1)" textLength="{label_length}">{label}</text>"##,
            r##"<text x="{label_x}" y="140" transform="scale(.1)" fill="#fff" textLength="{label_length}">{label}</text>"##,
            r##"<text aria-hidden="true" x="{message_x}" y="150" fill="#010101" fill-opacity=".3" transform="scale(.1)" textLength="{message_length}">{message}</text>"##,
            r##"<text x="{message_x}" y="140" transform="scale(.1)" fill="#fff" textLength="{message_length}">{message}</text>"##,
            r##"</g></svg>"##
        ),
        width = width,
        label = label,
        message = message,
        label_width = label_width,
        message_width = message_width,
        label_colour = LABEL_COLOUR,
        colour = colour,
        label_x = label_x,
        message_x = message_x,
        label_length = label_text * 10,
        message_length = message_text * 10,
    )
}

/// The width of `text` in pixels (at least one character's).
fn text_width(text: &str) -> usize {
    (text.chars().count().max(1) * CHAR_WIDTH_TENTHS).div_ceil(10)
}

/// Badges escape as the feeds do: one XML escape for the node.
pub use crate::http::feeds::xml::escape;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials_are_escaped_in_text_and_attributes() {
        let svg = render("a<b>&\"c'", "ok", "#4c1");
        assert!(svg.contains("a&lt;b&gt;&amp;&quot;c&apos;"));
        assert!(!svg.contains("a<b>"));
        assert_eq!(escape("x\u{1}y"), "x\u{fffd}y");
    }

    #[test]
    fn the_badge_states_its_message_as_text_and_grows_with_it() {
        let short = render("api", "ok", "#4c1");
        let long = render("api", "major outage", "#e05d44");
        assert!(long.contains(">major outage</text>"));
        assert!(long.contains("aria-label=\"api: major outage\""));
        assert!(long.contains("<title>api: major outage</title>"));
        let width = |svg: &str| -> usize {
            let start = svg.find("width=\"").expect("width") + 7;
            svg[start..]
                .split('"')
                .next()
                .and_then(|w| w.parse().ok())
                .expect("a number")
        };
        assert!(width(&long) > width(&short));
    }
}
