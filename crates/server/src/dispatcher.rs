//! The dispatcher hands inputs to workers: never more than the free slots a worker asks for,
//! and when nothing is due it holds the request open (long-poll) until an input arrives, one
//! falls due, or the wait runs out.

use std::collections::BTreeMap;
use std::time::Duration;

use hopper_core::api::{LeaseRequest, LeaseResponse, LeasedInput};
use hopper_core::WorkerId;
use hopper_store::{FunctionKey, InputLease, LeaseBatch, LeasedRow};

use crate::api::error::ApiError;
use crate::state::AppState;

/// Longest a lease request is held open; the worker simply asks again.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// How often a lease request whose inputs wait on `max_running` looks again, for ends of
/// inputs on other servers.
const LIMITED_POLL_MS: i64 = 1_000;

pub async fn lease(
    state: &AppState,
    worker: &WorkerId,
    functions: &[FunctionKey],
    req: LeaseRequest,
) -> Result<LeaseResponse, ApiError> {
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(req.wait_ms)
            .min(MAX_WAIT)
            .min(state.config.max_wait);
    let mut wake = state.events.watch_inputs();
    let waiter = state.events.waiter(functions);
    // Until something says inputs are there (a wake-up, or the time one falls due), the
    // cheap read of when the next input is due comes first: a request that finds the queue
    // empty costs that one read, not a lease transaction that changes nothing and the read.
    let mut told = false;
    loop {
        wake.borrow_and_update();
        waiter.queue();
        let due = if told {
            None
        } else {
            Some(state.store.input_next_due(functions).await?)
        };
        let batch = match due {
            Some(None) => LeaseBatch::default(),
            Some(Some(at)) if at > state.now() => LeaseBatch::default(),
            _ => {
                state
                    .store
                    .input_lease_available(InputLease {
                        worker_id: worker.clone(),
                        functions: functions.to_vec(),
                        max: req.max,
                        now: state.now(),
                        lease_ms: state.config.lease_ms(),
                        deadline_slack_ms: state.config.deadline_slack_ms(),
                    })
                    .await?
            }
        };
        for (function, kinds) in &batch.held {
            crate::metrics::held(function, kinds);
        }
        let rows = batch.rows;
        let leased: Vec<FunctionKey> = rows
            .iter()
            .map(|r| FunctionKey {
                app: r.spec.app.clone(),
                function: r.spec.name.clone(),
            })
            .collect();
        waiter.looked(&leased);
        let now = tokio::time::Instant::now();
        if !rows.is_empty() || now >= deadline {
            return response(state, rows).await;
        }
        // Sleep until the next retry falls due, new inputs arrive, or the wait ends; inputs
        // waiting on a limit, until the rate allows a start or an input ends (this server
        // wakes its waiters when one of a limited function does; another server's, seen
        // within a second).
        let due = match (batch.limited, due) {
            // The functions a limit did not hold back may have inputs falling due sooner.
            (Some(until), _) => {
                let limited = until.unwrap_or(state.now() + LIMITED_POLL_MS);
                let others: Vec<FunctionKey> = functions
                    .iter()
                    .filter(|f| !batch.held.iter().any(|(h, _)| h == *f))
                    .cloned()
                    .collect();
                let sooner = if others.is_empty() {
                    None
                } else {
                    state.store.input_next_due(&others).await?
                };
                Some(sooner.map_or(limited, |at| at.min(limited)))
            }
            // Read just before a lease that found nothing: the lease may have changed it.
            (None, Some(Some(at))) if at > state.now() => Some(at),
            (None, Some(None)) => None,
            (None, _) => state.store.input_next_due(functions).await?,
        };
        let until = match due {
            Some(due) => {
                let in_ms = (due - state.now()).max(1) as u64;
                deadline.min(now + Duration::from_millis(in_ms))
            }
            None => deadline,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = wake.changed() => {}
            _ = waiter.woken() => {}
            _ = state.shutdown.cancelled() => return response(state, Vec::new()).await,
        }
        told = true;
    }
}

async fn response(state: &AppState, rows: Vec<LeasedRow>) -> Result<LeaseResponse, ApiError> {
    let mut functions = BTreeMap::new();
    let mut inputs = Vec::with_capacity(rows.len());
    for row in rows {
        let key = format!("{}@{}", row.spec.qualified_name(), row.version);
        let input = serde_json::from_str(&row.input).map_err(|e| {
            tracing::error!(error = %e, call = %row.call_id, "stored input is not JSON");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server's log",
            )
        })?;
        inputs.push(LeasedInput {
            lease: row.lease,
            call_id: row.call_id,
            index: row.index,
            function: key.clone(),
            input,
        });
        functions.entry(key).or_insert(row.spec);
    }
    // The secrets these functions read travel only here, inside the leases they are for.
    let secrets =
        crate::secrets::for_functions(state.store.as_ref(), &state.keyring, &functions).await?;
    Ok(LeaseResponse {
        inputs,
        functions,
        secret_env: secrets.env,
        secret_errors: secrets.errors,
    })
}
