//! The web console (docs/web-console.md): pages, styles and scripts, with xterm.js and noVNC from
//! npm, embedded in the binary at build time and served under `/console/` in front of the node's
//! API router ([`mount`]).
//!
//! The pages are a small single-page application that speaks to the node's own REST API from the
//! browser, with the user's bearer token in the `Authorization` header: whatever the API answers
//! (objects, `Status` errors, authorisation) is what the console shows, so it stays right as the
//! API grows. A browser cannot put a header on a websocket, so the serial console and VNC go
//! through `/console/ws/<API path>`: the token comes from a same-site cookie, the origin must be
//! the page's own, and the request is handed in-process to the API router (its authorisation and
//! audit included) with the token as `Authorization`.

#![warn(missing_docs)]
// Library code returns errors; tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
mod assets;
mod ws;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

pub use ws::TOKEN_COOKIE;

/// The prefix the console is served under.
pub const PREFIX: &str = "/console";

/// Puts the console in front of `api` (the node's router as one listener serves it, with its
/// authorisation and audit layers): `/` redirects to `/console/`, `/console/...` serves the pages
/// and forwards console websockets to `api`; every other request goes to `api` unchanged.
pub fn mount(api: Router) -> Router {
    // The rest of `/console/` is matched by hand in the fallback: a route with a path parameter
    // would leave its parameters in the request, and the API's own `Path` extractors would then
    // see them too when a websocket is forwarded.
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route(PREFIX, get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(|| async { serve("index.html", &Method::GET) }))
        .fallback(move |req: Request| ws::or_asset(api.clone(), req))
}

/// The embedded file at `path` (below `/console/`); page routes (no extension) get the
/// application's `index.html`, so a reloaded or shared URL opens the same page.
fn serve(path: &str, method: &Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "the console's files are read-only").into_response();
    }
    let file = assets::find(path).or_else(|| {
        let last = path.rsplit('/').next().unwrap_or(path);
        (!last.contains('.')).then(|| assets::find("index.html")).flatten()
    });
    let Some((name, bytes)) = file else {
        return (StatusCode::NOT_FOUND, format!("no such console file: {path}")).into_response();
    };
    let mut resp = Response::new(if method == Method::HEAD { Body::empty() } else { Body::from(bytes) });
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(assets::content_type(name)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    resp
}

#[cfg(test)]
mod tests;
