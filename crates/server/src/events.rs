//! In-process wake-ups. They make waiting cheap (a lease long-poll or a `get ?wait=` sleeps
//! until something happens); correctness never depends on them, since every waiter re-reads the
//! store and also wakes on a timer.

use hopper_core::CallId;
use tokio::sync::{broadcast, watch};

#[derive(Clone)]
pub struct Events {
    inputs: watch::Sender<u64>,
    calls: broadcast::Sender<CallId>,
    cancels: broadcast::Sender<CallId>,
    deploys: watch::Sender<u64>,
    results: watch::Sender<u64>,
    missed: broadcast::Sender<(String, usize)>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            inputs: watch::channel(0).0,
            calls: broadcast::channel(1024).0,
            cancels: broadcast::channel(1024).0,
            deploys: watch::channel(0).0,
            results: watch::channel(0).0,
            missed: broadcast::channel(256).0,
        }
    }
}

impl Events {
    /// New inputs may be available to lease.
    pub fn inputs_available(&self) {
        self.inputs.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn watch_inputs(&self) -> watch::Receiver<u64> {
        self.inputs.subscribe()
    }

    /// A call reached a terminal state.
    pub fn call_finished(&self, id: CallId) {
        let _ = self.calls.send(id);
    }

    pub fn watch_calls(&self) -> broadcast::Receiver<CallId> {
        self.calls.subscribe()
    }

    /// A call was cancelled: workers running its inputs should hear of it now.
    pub fn call_cancelled(&self, id: CallId) {
        let _ = self.cancels.send(id);
    }

    pub fn watch_cancels(&self) -> broadcast::Receiver<CallId> {
        self.cancels.subscribe()
    }

    /// Some inputs ended (result streams may have more to read).
    pub fn results_recorded(&self) {
        self.results.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn watch_results(&self) -> watch::Receiver<u64> {
        self.results.subscribe()
    }

    /// A schedule (`app.name`) missed due times while the server was down.
    pub fn schedule_missed(&self, schedule: String, count: usize) {
        let _ = self.missed.send((schedule, count));
    }

    pub fn watch_missed(&self) -> broadcast::Receiver<(String, usize)> {
        self.missed.subscribe()
    }

    /// An app was deployed.
    pub fn deployed(&self) {
        self.deploys.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn watch_deploys(&self) -> watch::Receiver<u64> {
        self.deploys.subscribe()
    }
}
