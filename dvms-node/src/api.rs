//! The HTTP endpoint: `GET /status` (what this node sees, JSON), `GET /metrics`
//! (Prometheus text, this node's and libp2p's) and `GET /` (the live view: a page that
//! polls `/status` of this daemon and of every member, drawing hosts, VMs, loads,
//! partitions and the Vivaldi map). Status is asked of the runtime through a bounded
//! channel, so the HTTP side never touches protocol state. `/status` may be read from
//! other origins (the live view served by one daemon reads its peers'): it is read-only.
//! With a token configured, `/status` and `/metrics` answer only requests carrying
//! `Authorization: Bearer <token>` (the page itself holds no data and stays open; it
//! sends the token from its URL's `#token=`). [`fetch`] is the client `dvms-node status`
//! and the launcher use.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

use crate::status::Status;

#[derive(Clone)]
pub struct Api {
    pub status: mpsc::Sender<oneshot::Sender<Status>>,
    pub registry: Arc<Registry>,
    /// The bearer token `/status` and `/metrics` require, if any.
    pub token: Option<Arc<str>>,
}

/// Whether `headers` carry the token (compared in constant time), or none is required.
fn authorized(api: &Api, headers: &HeaderMap) -> bool {
    let Some(want) = &api.token else { return true };
    let Some(got) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (want.as_bytes(), got.trim().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The answer to a request without the right token (readable cross-origin, so that the
/// live view can say why a peer did not answer).
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, "Bearer realm=\"dvms\""),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        "a bearer token is required (Authorization: Bearer <token>)",
    )
        .into_response()
}

/// CORS preflight of a cross-origin `GET /status` carrying `Authorization`.
async fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "authorization"),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(view))
        .route("/status", get(status).options(preflight))
        .route("/metrics", get(metrics))
        .with_state(api)
}

async fn status(State(api): State<Api>, headers: HeaderMap) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    let (tx, rx) = oneshot::channel();
    if api.status.send(tx).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "daemon is shutting down").into_response();
    }
    match rx.await {
        Ok(s) => ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], Json(s)).into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "daemon is shutting down").into_response(),
    }
}

/// The live view (one static page; its script does the rest).
async fn view() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("view.html"),
    )
        .into_response()
}

async fn metrics(State(api): State<Api>, headers: HeaderMap) -> Response {
    if !authorized(&api, &headers) {
        return unauthorized();
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &api.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Most bytes read of an answer.
const MAX_ANSWER: u64 = 64 << 20;

/// `GET path` from a daemon's HTTP endpoint at `addr` (an unspecified address means this
/// host's loopback), with the bearer token if given; the body of a 200 answer.
pub fn fetch(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("cannot connect to {addr} (is the daemon running?)"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let Some((head, body)) = raw.split_once("\r\n\r\n") else {
        anyhow::bail!("{addr}{path}: no HTTP answer");
    };
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status.starts_with("HTTP/1.1 200"),
        "{addr}{path}: {status}: {}",
        body.trim()
    );
    Ok(body.to_owned())
}
