//! `hive serve`'s HTTP interface (axum): the kernel's health report and the state directory's
//! runs as JSON. The same data as `hive health --json`, `hive runs --json`, `hive show RUN
//! --json` and `hive events RUN`, built by the same functions.
//!
//! `GET /health` (200 when the status is `ok`, else 503, the report either way), `GET /livez`
//! (200 while the process serves), `GET /runs?state=S&last=N`, `GET /runs/ID`,
//! `GET /runs/ID/events?after=SEQ`. Errors are JSON too: `{"error": "..."}` with 400 (a bad
//! query), 404 (no such run or path) or 500 (the state directory failed).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hive_kernel::{Kernel, StateError, StateStore};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};

/// What the handlers share: the serving kernel, the state directory, and its store once the
/// directory has a database (opened by the first request that finds one, then kept).
#[derive(Clone)]
struct App {
    kernel: Kernel,
    state_dir: PathBuf,
    store: Arc<Mutex<Option<Arc<StateStore>>>>,
}

impl App {
    /// The state store; `None` while the directory has no database yet.
    fn store(&self) -> Result<Option<Arc<StateStore>>, StateError> {
        let mut cached = self.store.lock();
        if cached.is_none() {
            *cached = StateStore::open_existing(&self.state_dir)?.map(Arc::new);
        }
        Ok(cached.clone())
    }
}

/// The routes, over `kernel` and the runs of `state_dir`.
pub(crate) fn router(kernel: Kernel, state_dir: PathBuf) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/runs", get(runs))
        .route("/runs/{id}", get(run))
        .route("/runs/{id}/events", get(events))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such path (see GET /health, /runs, /runs/ID, /runs/ID/events)",
            )
        })
        .with_state(App {
            kernel,
            state_dir,
            store: Arc::default(),
        })
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

/// A state directory's answer: 404 for an unknown run, 500 for a failing directory.
fn state_error(e: StateError) -> Response {
    let code = match e {
        StateError::NoSuchRun(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(code, e.to_string())
}

/// Runs `f` on the blocking pool (SQLite), with the state store if there is one yet.
async fn with_store(
    app: App,
    f: impl FnOnce(Option<Arc<StateStore>>) -> Result<Value, StateError> + Send + 'static,
) -> Response {
    let r = tokio::task::spawn_blocking(move || f(app.store()?)).await;
    match r {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => state_error(e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn health(State(app): State<App>) -> Response {
    let report = app.kernel.health();
    let code = if report.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(report)).into_response()
}

#[derive(Deserialize)]
struct RunsQuery {
    state: Option<String>,
    last: Option<usize>,
}

async fn runs(State(app): State<App>, q: Result<Query<RunsQuery>, QueryRejection>) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let states = crate::plan_cmd::RUN_STATES;
    if let Some(s) = q.state.as_deref().filter(|s| !states.contains(s)) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("state `{s}`: expected one of {}", states.join(", ")),
        );
    }
    with_store(app, move |store| {
        let Some(store) = store else {
            return Ok(json!([]));
        };
        let runs = crate::plan_cmd::select_runs(store.runs()?, q.state.as_deref(), q.last);
        Ok(crate::plan_cmd::runs_json(&runs))
    })
    .await
}

async fn run(State(app): State<App>, Path(id): Path<String>) -> Response {
    with_store(app, move |store| {
        let store = store.ok_or_else(|| StateError::NoSuchRun(id.clone()))?;
        crate::plan_cmd::show_json(&store, &id)
    })
    .await
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<u64>,
}

async fn events(
    State(app): State<App>,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let after = match q {
        Ok(Query(q)) => q.after.unwrap_or(0),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    with_store(app, move |store| {
        let store = store.ok_or_else(|| StateError::NoSuchRun(id.clone()))?;
        crate::plan_cmd::up_to_date(&store, &id)?;
        let events: Vec<Value> = store
            .events_after(&id, after)?
            .into_iter()
            .map(|(_, line)| serde_json::from_str(&line).unwrap_or(Value::String(line)))
            .collect();
        Ok(Value::Array(events))
    })
    .await
}
