//! The HTTP endpoint: `GET /status` (what this node sees, JSON), `GET /metrics`
//! (Prometheus text, this node's and libp2p's) and `GET /` (the live view: a page that
//! polls `/status` of this daemon and of every member, drawing hosts, VMs, loads,
//! partitions and the Vivaldi map). Status is asked of the runtime through a bounded
//! channel, so the HTTP side never touches protocol state. `/status` may be read from
//! other origins (the live view served by one daemon reads its peers'): it is read-only.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
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
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(view))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(api)
}

async fn status(State(api): State<Api>) -> Response {
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

async fn metrics(State(api): State<Api>) -> Response {
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
