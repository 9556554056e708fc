//! `GET /v1/events`: a server-sent event stream that says "something changed", so the
//! dashboard re-reads the page it shows instead of polling or reloading.
//!
//! Events carry no data of their own: the page's reads are the truth, and a client that missed
//! an event loses nothing. They come at most every [`MIN_GAP`], when inputs were added or
//! ended, a call ended or an app was deployed, and at least every [`TICK`], which also covers
//! changes made through another server over the same database.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::{broadcast, watch};

use crate::state::AppState;

/// Shortest time between two events: a busy queue changes constantly, and a page re-read per
/// completion would cost more than it shows.
const MIN_GAP: Duration = Duration::from_millis(500);
/// Longest time between two events.
const TICK: Duration = Duration::from_secs(3);

struct Watch {
    state: AppState,
    inputs: watch::Receiver<u64>,
    results: watch::Receiver<u64>,
    deploys: watch::Receiver<u64>,
    calls: broadcast::Receiver<hopper_core::CallId>,
    first: bool,
}

pub async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let start = Watch {
        inputs: state.events.watch_inputs(),
        results: state.events.watch_results(),
        deploys: state.events.watch_deploys(),
        calls: state.events.watch_calls(),
        state,
        first: true,
    };
    let stream = futures_util::stream::unfold(start, |mut w| async move {
        if w.first {
            w.first = false;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(MIN_GAP) => {}
                _ = w.state.shutdown.cancelled() => return None,
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK - MIN_GAP) => {}
                _ = w.inputs.changed() => {}
                _ = w.results.changed() => {}
                _ = w.deploys.changed() => {}
                _ = w.calls.recv() => {}
                _ = w.state.shutdown.cancelled() => return None,
            }
            // What changed meanwhile is covered by this one event.
            w.inputs.mark_unchanged();
            w.results.mark_unchanged();
            w.deploys.mark_unchanged();
            w.calls = w.calls.resubscribe();
        }
        let event = Event::default()
            .event("change")
            .data(w.state.now().to_string());
        Some((Ok(event), w))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
