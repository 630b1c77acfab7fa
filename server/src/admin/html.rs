//! Server-rendered HTML of the dashboard: escaping, the page frame and the
//! headers every page is sent with. No script runs in these pages.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// `text` escaped for HTML text and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes as a short human figure (binary units, as egress is priced per TiB).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

const STYLE: &str = "body{font:15px system-ui,sans-serif;margin:0;color:#1d2330}\
header{background:#1d2330;color:#fff;padding:.6em 1.2em;display:flex;gap:1.5em;align-items:center}\
header a{color:#cfe0ff;text-decoration:none}header form{margin-left:auto}\
main{padding:1.2em;max-width:70em}table{border-collapse:collapse;margin:.5em 0 1.5em}\
td,th{border-bottom:1px solid #dde;padding:.3em .8em;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
.error{color:#a00;font-weight:600}label{display:block;margin:.5em 0}";

/// A whole page: `title`, the navigation when logged in (with the logout
/// form carrying `csrf`), and `body` (already escaped HTML).
pub fn page(title: &str, logged_in: Option<&str>, body: &str) -> String {
    let nav = match logged_in {
        None => String::new(),
        Some(csrf) => format!(
            "<a href=\"/admin\">Overview</a><a href=\"/admin/nodes\" id=\"nav-nodes\">Nodes</a>\
             <a href=\"/admin/usage\" id=\"nav-spaces\">Spaces</a>\
             <a href=\"/admin/statements/{month}\" id=\"nav-statements\">Statements</a>\
             <form method=\"post\" action=\"/admin/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button id=\"logout\">Log out</button>\
             <button id=\"logout-everywhere\" name=\"everywhere\" value=\"1\">Log out everywhere</button></form>",
            escape(csrf),
            month = this_month(),
        ),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{title} · etracker</title><style>{STYLE}</style></head>\
         <body><header><strong>etracker</strong>{nav}</header>\
         <main><h1>{title}</h1>{body}</main></body></html>",
        title = escape(title),
    )
}

/// The UTC month of now, `YYYY-MM`.
pub fn this_month() -> String {
    let today = (ucanto::ucan::now() / 86_400) as i64;
    etracker_capabilities::account_egress_get::format_date(today)[..7].to_string()
}

/// An HTML response with the dashboard's headers: nothing cached, no
/// framing, no script, forms only to this origin, no referrer.
pub fn respond(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// `text` percent-encoded for a query value.
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cannot_become_markup() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        let html = page("<b>", Some("\"><img>"), "");
        assert!(
            !html.contains("<b>") && !html.contains("\"><img>"),
            "{html}"
        );
    }

    #[test]
    fn byte_figures() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(1 << 40), "1.00 TiB");
    }
}
