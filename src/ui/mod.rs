//! The operator page at `/mesgate/ui`: serves its HTML, JavaScript and CSS (embedded in
//! the binary, no build step) and its settings (`config.json`, from `[ui]`).
//!
//! It owns those four answers and their headers, nothing else: the page reads and writes
//! through the gateway's own routes (`/api/orders…`, `/mesgate/events`,
//! `/mesgate/operations/…`), so it shows what any client gets, `X-Cache` included.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{Either, Full};

use crate::config::UiConfig;
use crate::pass::Body;

/// Where the page is served.
pub const PATH: &str = "/mesgate/ui";

const HTML: &str = include_str!("index.html");
const JS: &str = include_str!("app.js");
const CSS: &str = include_str!("app.css");

/// Nothing but this origin: the page loads no code, style or data from anywhere else,
/// and nothing inline (so an order's text shown on it can never run as script).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The answer for `path` when it is one of the page's files and the page is enabled;
/// `None` otherwise (the request then takes its usual way: a route, or the MES).
pub fn answer(path: &str, config: &UiConfig) -> Option<Response<Body>> {
    if !config.enabled {
        return None;
    }
    let (body, content_type) = match path.strip_prefix(PATH)? {
        "" | "/" => (
            Bytes::from_static(HTML.as_bytes()),
            "text/html; charset=utf-8",
        ),
        "/app.js" => (
            Bytes::from_static(JS.as_bytes()),
            "text/javascript; charset=utf-8",
        ),
        "/app.css" => (
            Bytes::from_static(CSS.as_bytes()),
            "text/css; charset=utf-8",
        ),
        "/config.json" => (settings(config), "application/json"),
        _ => return None,
    };
    Some(respond(body, content_type))
}

/// What the page needs to know from the config: which lists to show.
fn settings(config: &UiConfig) -> Bytes {
    Bytes::from(serde_json::json!({ "statuses": config.statuses }).to_string())
}

fn respond(body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Either::Left(Full::new(body)));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A new binary may bring a new page: never a stale copy of it.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> UiConfig {
        UiConfig {
            enabled: true,
            statuses: vec!["MANUFACTURING_APPROVED".into(), "SUBMITTED".into()],
        }
    }

    #[test]
    fn serves_its_four_files_with_their_types_and_security_headers() {
        for (path, ty) in [
            ("/mesgate/ui", "text/html; charset=utf-8"),
            ("/mesgate/ui/", "text/html; charset=utf-8"),
            ("/mesgate/ui/app.js", "text/javascript; charset=utf-8"),
            ("/mesgate/ui/app.css", "text/css; charset=utf-8"),
            ("/mesgate/ui/config.json", "application/json"),
        ] {
            let r = answer(path, &on()).expect(path);
            assert_eq!(r.status(), 200);
            let h = r.headers();
            assert_eq!(h[header::CONTENT_TYPE], ty, "{path}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::CACHE_CONTROL], "no-store");
            assert!(
                h[header::CONTENT_SECURITY_POLICY]
                    .to_str()
                    .unwrap()
                    .contains("'self'")
            );
        }
    }

    #[test]
    fn settings_name_the_statuses_in_order() {
        let v: serde_json::Value = serde_json::from_slice(&settings(&on())).unwrap();
        assert_eq!(v["statuses"][0], "MANUFACTURING_APPROVED");
        assert_eq!(v["statuses"][1], "SUBMITTED");
    }

    #[test]
    fn other_paths_and_a_disabled_page_are_not_answered() {
        assert!(answer("/mesgate/ui/other.js", &on()).is_none());
        assert!(answer("/mesgate/uix", &on()).is_none());
        assert!(answer("/api/orders", &on()).is_none());
        let off = UiConfig {
            enabled: false,
            ..on()
        };
        assert!(answer("/mesgate/ui", &off).is_none());
    }

    #[test]
    fn the_page_loads_nothing_inline_or_from_elsewhere() {
        // The CSP forbids inline script and style: the page must not need them.
        assert!(!HTML.contains("<script>") && !HTML.contains("style="));
        for text in [HTML, JS, CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
