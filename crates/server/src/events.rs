//! In-process wake-ups. They make waiting cheap (a lease long-poll or a `get ?wait=` sleeps
//! until something happens); correctness never depends on them, since every waiter re-reads the
//! store and also wakes on a timer.
//!
//! New inputs of a known function wake as many of that function's waiting lease requests as
//! there are inputs, oldest first ([`Events::inputs_for`]), not every waiter: with thousands of
//! workers waiting, waking all of them for each spawn would run thousands of lease queries for
//! one input. Wake-ups that do not know the function (inputs handed back, another server's
//! commits) still wake every waiter ([`Events::inputs_available`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use hopper_core::CallId;
use hopper_store::FunctionKey;
use tokio::sync::{broadcast, watch, Notify};

/// A lease request waiting for inputs of its worker's functions.
pub struct Waiter {
    functions: Vec<FunctionKey>,
    notify: Notify,
    /// Inputs it was woken for, by function, not yet looked for: what it did not lease is
    /// passed on to the next waiter when it stops waiting.
    woken_for: Mutex<HashMap<FunctionKey, usize>>,
    /// The functions whose queue it is in.
    queued_in: Mutex<Vec<FunctionKey>>,
    waiting: Arc<Waiting>,
}

impl Waiter {
    /// Resolves when inputs of one of its functions arrive (at once if they arrived since it
    /// last looked).
    pub async fn woken(&self) {
        self.notify.notified().await
    }

    /// Joins the queue of each of its functions it is not in (a wake-up took it out of it),
    /// at the back. Called before each look at the store, so no input arriving meanwhile is
    /// missed.
    pub fn queue(self: &Arc<Self>) {
        let mut queued = lock(&self.queued_in);
        let mut queues = lock(&self.waiting.queues);
        for f in &self.functions {
            if !queued.contains(f) {
                let queue = queues.entry(f.clone()).or_default();
                queue.push_back(Arc::downgrade(self));
                // Requests that ended leave dead entries; sweep them as the queue doubles.
                if queue.len() >= 64 && queue.len().is_power_of_two() {
                    queue.retain(|w| w.strong_count() > 0);
                }
                queued.push(f.clone());
            }
        }
    }

    /// Records what a look at the store leased: the wake-ups it answers are used up, and the
    /// rest passed on when this waiter stops waiting (or forgotten, if it found nothing: the
    /// inputs were taken by another).
    pub fn looked(&self, leased: &[FunctionKey]) {
        let mut woken = lock(&self.woken_for);
        if leased.is_empty() {
            woken.clear();
            return;
        }
        for f in leased {
            if let Some(n) = woken.get_mut(f) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let unused: Vec<(FunctionKey, usize)> = lock(&self.woken_for).drain().collect();
        for (f, n) in unused {
            if n > 0 {
                self.waiting.wake(&f, n);
            }
        }
    }
}

/// The waiting lease requests of each function, oldest first.
#[derive(Default)]
struct Waiting {
    queues: Mutex<HashMap<FunctionKey, VecDeque<Weak<Waiter>>>>,
}

impl Waiting {
    /// Wakes up to `n` waiters of `function`, oldest first, taking them out of its queue.
    fn wake(&self, function: &FunctionKey, n: usize) {
        let mut woken = Vec::new();
        {
            let mut queues = lock(&self.queues);
            let Some(queue) = queues.get_mut(function) else {
                return;
            };
            while woken.len() < n {
                let Some(next) = queue.pop_front() else {
                    break;
                };
                if let Some(waiter) = next.upgrade() {
                    woken.push(waiter);
                }
            }
        }
        for waiter in woken {
            lock(&waiter.queued_in).retain(|f| f != function);
            *lock(&waiter.woken_for).entry(function.clone()).or_default() += 1;
            waiter.notify.notify_one();
        }
    }
}

/// A mutex's data, also after a panic elsewhere (the data stays consistent: every holder
/// only pushes, pops or counts).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
pub struct Events {
    waiting: Arc<Waiting>,
    inputs: watch::Sender<u64>,
    /// Bumped whenever inputs arrive, for the provisioner: a function with no worker needs
    /// one started (its waiters are woken by [`Events::inputs_for`] alone).
    work: watch::Sender<u64>,
    /// The functions (`app.function`) inputs arrived for since the provisioner last looked.
    fresh: Arc<Mutex<std::collections::HashSet<String>>>,
    calls: broadcast::Sender<CallId>,
    cancels: broadcast::Sender<CallId>,
    deploys: watch::Sender<u64>,
    results: watch::Sender<u64>,
    missed: broadcast::Sender<(String, usize)>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            waiting: Arc::default(),
            inputs: watch::channel(0).0,
            work: watch::channel(0).0,
            fresh: Arc::default(),
            calls: broadcast::channel(1024).0,
            cancels: broadcast::channel(1024).0,
            deploys: watch::channel(0).0,
            results: watch::channel(0).0,
            missed: broadcast::channel(256).0,
        }
    }
}

impl Events {
    /// A lease request of a worker serving `functions` that waits for inputs.
    pub fn waiter(&self, functions: &[FunctionKey]) -> Arc<Waiter> {
        Arc::new(Waiter {
            functions: functions.to_vec(),
            notify: Notify::new(),
            woken_for: Mutex::default(),
            queued_in: Mutex::default(),
            waiting: self.waiting.clone(),
        })
    }

    /// `n` new inputs of `function` are available to lease: wakes that many of its waiters.
    pub fn inputs_for(&self, app: &str, function: &str, n: usize) {
        let key = FunctionKey {
            app: app.to_string(),
            function: function.to_string(),
        };
        self.waiting.wake(&key, n);
        let name = format!("{app}.{function}");
        let first = self.fresh.lock().is_ok_and(|mut fresh| fresh.insert(name));
        if first {
            self.work.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The functions inputs arrived for since the last call, emptied.
    pub fn take_fresh(&self) -> Vec<String> {
        self.fresh
            .lock()
            .map(|mut f| f.drain().collect())
            .unwrap_or_default()
    }

    /// Changes whenever inputs arrive (of any function).
    pub fn watch_work(&self) -> watch::Receiver<u64> {
        self.work.subscribe()
    }

    /// New inputs may be available to lease, of functions not known here: wakes every waiter.
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

    /// How many deploys this server has seen.
    pub fn deploys(&self) -> u64 {
        *self.deploys.borrow()
    }

    pub fn watch_deploys(&self) -> watch::Receiver<u64> {
        self.deploys.subscribe()
    }
}
