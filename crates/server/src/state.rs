//! The one `Clone` state every handler and component shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hopper_core::clock::Clock;
use hopper_core::WorkerId;
use hopper_store::{FunctionKey, Store};
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::events::Events;

/// What the server remembers of a registered worker.
#[derive(Debug)]
pub struct KnownWorker {
    pub functions: Vec<FunctionKey>,
    /// A hash of the secret it got at registration (none for workers registered without one).
    pub secret_hash: Option<String>,
    /// What its machine has, as it registered it (none: no GPU, no label).
    pub machine: Option<hopper_core::resources::Machine>,
    /// Which of `functions` its machine fits as they are deployed now, and when that was
    /// worked out (see [`crate::api::workers`]).
    pub placed: Mutex<Option<Placed>>,
}

/// The functions a worker's machine fits, as worked out after the `deploys`th deploy this
/// server saw, at `at`.
#[derive(Debug)]
pub struct Placed {
    pub at: std::time::Instant,
    pub deploys: u64,
    pub functions: Vec<FunctionKey>,
}

impl KnownWorker {
    pub fn new(
        functions: Vec<FunctionKey>,
        secret_hash: Option<String>,
        machine: Option<hopper_core::resources::Machine>,
    ) -> Self {
        Self {
            functions,
            secret_hash,
            machine,
            placed: Mutex::new(None),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub events: Events,
    /// The functions each worker registered for, cached; read from the store on a miss, so any
    /// server can answer any worker.
    pub worker_functions: Arc<Mutex<HashMap<WorkerId, Arc<KnownWorker>>>>,
    /// When each worker was last recorded as seen, so a busy worker's leases do not each cost
    /// a write.
    pub worker_touched: Arc<Mutex<HashMap<WorkerId, std::time::Instant>>>,
    /// Delivery status of each notification channel, for the API.
    pub channels: Arc<Mutex<std::collections::BTreeMap<String, hopper_core::api::ChannelView>>>,
    /// Cancelled when the server shuts down: long-polls return at once.
    pub shutdown: CancellationToken,
    /// Seals and opens secrets' values.
    pub keyring: Arc<crate::secrets::Keyring>,
    /// Notices pauses of this server and steps of its clock, and moves leases for them.
    pub timekeeper: Arc<crate::timekeeper::Timekeeper>,
    /// Set when the database's schema moved past this build (another server upgraded it):
    /// what to say; the server then takes no work and reports itself unhealthy.
    pub schema_ahead: Arc<Mutex<Option<String>>>,
    /// Permits for workers' lease long-polls (`max_waiting`).
    pub waiting: Arc<tokio::sync::Semaphore>,
    /// When a worker was last told there were too many waiting (logged once a minute).
    pub waiting_warned: Arc<Mutex<Option<std::time::Instant>>>,
    /// When this server last wrote down that an open map's client is there, by map.
    pub maps_heard: Arc<Mutex<HashMap<hopper_core::CallId, std::time::Instant>>>,
    /// Functions with work that no worker can take, by `app.function`, each with why
    /// (`waiting for a GPU of kind H100: …`), as this server's provisioner last found.
    pub unplaced: Arc<Mutex<std::collections::BTreeMap<String, String>>>,
    /// How each function's worker processes last started, by `app.function`, as workers
    /// reported it to this server.
    pub startups: Arc<Mutex<std::collections::BTreeMap<String, hopper_core::api::StartupView>>>,
}

/// How often a server writes down that an open map's client is there.
pub const HEARD_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl AppState {
    pub fn new(
        config: ServerConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Self {
        let keyring = crate::secrets::Keyring::new(
            config.secret_keys.clone(),
            config.secret_key_file.clone(),
        );
        let config_waiting = config.max_waiting.max(1);
        Self {
            keyring: Arc::new(keyring),
            config: Arc::new(config),
            store,
            clock,
            events: Events::default(),
            worker_functions: Arc::default(),
            worker_touched: Arc::default(),
            channels: Arc::default(),
            shutdown,
            timekeeper: Arc::new(crate::timekeeper::Timekeeper::new(None)),
            schema_ahead: Arc::default(),
            waiting: Arc::new(tokio::sync::Semaphore::new(config_waiting)),
            waiting_warned: Arc::default(),
            maps_heard: Arc::default(),
            unplaced: Arc::default(),
            startups: Arc::default(),
        }
    }

    /// Why this server takes no work, if it takes none: the database's schema is newer.
    pub fn schema_ahead(&self) -> Option<String> {
        self.schema_ahead.lock().ok().and_then(|s| s.clone())
    }

    /// The database's schema is newer than this server's (`e` says how): from now on it takes
    /// no work (`/v1` and `/readyz` answer 503 `schema_too_new`, the engine's loops stop).
    pub fn schema_moved_ahead(&self, e: &hopper_store::StoreError) {
        let mut ahead = self.schema_ahead.lock().unwrap_or_else(|p| p.into_inner());
        if ahead.is_none() {
            tracing::error!(error = %e, "the database's schema moved past this server: it takes no more work; upgrade it");
            *ahead = Some(e.to_string());
        }
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Notes that an open map's client is there (it read the call or its results), so that
    /// the map is not cancelled as abandoned; written at most every [`HEARD_EVERY`] (or a
    /// quarter of `--map-idle-timeout`) per map and server, and never when abandoned maps
    /// are kept (a timeout of 0). A failure to write it is logged and otherwise ignored: the
    /// next read tries.
    pub async fn heard_from_client(&self, call: &hopper_store::CallRow) {
        if !call.accepting_inputs || self.config.map_idle_timeout.is_zero() {
            return;
        }
        let now = std::time::Instant::now();
        {
            let mut heard = self.maps_heard.lock().unwrap_or_else(|e| e.into_inner());
            // Well within the idle timeout, whatever it is set to.
            let every = HEARD_EVERY.min(self.config.map_idle_timeout / 4);
            if heard
                .get(&call.id)
                .is_some_and(|at| now.duration_since(*at) < every)
            {
                return;
            }
            if heard.len() >= 10_000 {
                heard.retain(|_, at| now.duration_since(*at) < every);
            }
            heard.insert(call.id.clone(), now);
        }
        if let Err(e) = self
            .store
            .call_touch(vec![call.id.clone()], self.now())
            .await
        {
            tracing::debug!(error = %e, call = %call.id, "cannot note that the map's client is there");
        }
    }

    /// Takes or keeps the lead of `role` among the servers of one database (see
    /// [`hopper_store::Store::leader_try`]), and shows in `/metrics` whether this server
    /// holds it (`hopper_leader{role}`, 1 or 0).
    pub async fn lead(&self, role: &'static str) -> Result<bool, hopper_store::StoreError> {
        let led = self.store.leader_try(role).await;
        let held = matches!(led, Ok(true));
        metrics::gauge!("hopper_leader", "role" => role).set(if held { 1.0 } else { 0.0 });
        led
    }
}
