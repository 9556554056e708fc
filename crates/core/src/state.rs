//! The input state machine, and the call state derived from its inputs.
//!
//! ```text
//! pending ──lease──▶ running ──result──▶ succeeded
//!    ▲                  │ └───failure, no retries left──▶ failed
//!    └──failure with retries left (not before backoff)──┘
//!       or lease lost (worker gone)
//! pending | running ──cancel──▶ cancelled
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where one input is in its life. The same names are used in the store, the API, the CLI and
/// the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl InputState {
    pub const ALL: [InputState; 5] = [
        InputState::Pending,
        InputState::Running,
        InputState::Succeeded,
        InputState::Failed,
        InputState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InputState::Pending => "pending",
            InputState::Running => "running",
            InputState::Succeeded => "succeeded",
            InputState::Failed => "failed",
            InputState::Cancelled => "cancelled",
        }
    }

    /// A terminal state is final: nothing moves an input out of it.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            InputState::Succeeded | InputState::Failed | InputState::Cancelled
        )
    }

    /// Whether the state machine allows `self → next`.
    pub fn can_become(self, next: InputState) -> bool {
        use InputState::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending, Cancelled)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Pending)
                | (Running, Cancelled)
        )
    }
}

impl fmt::Display for InputState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of the five.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown state {0:?} (expected pending, running, succeeded, failed or cancelled)")]
pub struct UnknownState(pub String);

impl FromStr for InputState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, UnknownState> {
        InputState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// A call's state uses the input vocabulary; it is derived from the call's input counts.
pub type CallState = InputState;

/// How many of a call's inputs are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallCounts {
    pub total: i64,
    pub pending: i64,
    pub running: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

impl CallCounts {
    /// The call's state: still `pending` until an input starts, `running` while any input is
    /// not terminal, then `succeeded` if all succeeded, `failed` if any failed, else `cancelled`.
    pub fn state(&self) -> CallState {
        let open = self.pending + self.running;
        let done = self.succeeded + self.failed + self.cancelled;
        if open > 0 {
            if self.running > 0 || done > 0 {
                InputState::Running
            } else {
                InputState::Pending
            }
        } else if self.failed > 0 {
            InputState::Failed
        } else if self.cancelled > 0 {
            InputState::Cancelled
        } else {
            InputState::Succeeded
        }
    }

    /// The state of a call that may still be taking inputs: while it is, it has not ended.
    pub fn state_while(&self, accepting_inputs: bool) -> CallState {
        match self.state() {
            s if s.is_terminal() && accepting_inputs => {
                if self.total == 0 {
                    InputState::Pending
                } else {
                    InputState::Running
                }
            }
            s => s,
        }
    }

    /// Inputs that have ended, whichever way: the length of the call's completion order.
    pub fn ended(&self) -> i64 {
        self.succeeded + self.failed + self.cancelled
    }

    /// Moves one input from `from` to `to`.
    pub fn shift(&mut self, from: InputState, to: InputState) {
        self.shift_by(from, to, 1);
    }

    /// Moves `n` inputs from `from` to `to`.
    pub fn shift_by(&mut self, from: InputState, to: InputState, n: i64) {
        *self.slot(from) -= n;
        *self.slot(to) += n;
    }

    pub fn get(&self, state: InputState) -> i64 {
        match state {
            InputState::Pending => self.pending,
            InputState::Running => self.running,
            InputState::Succeeded => self.succeeded,
            InputState::Failed => self.failed,
            InputState::Cancelled => self.cancelled,
        }
    }

    fn slot(&mut self, state: InputState) -> &mut i64 {
        match state {
            InputState::Pending => &mut self.pending,
            InputState::Running => &mut self.running,
            InputState::Succeeded => &mut self.succeeded,
            InputState::Failed => &mut self.failed,
            InputState::Cancelled => &mut self.cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InputState::*;

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in InputState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in InputState::ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn retries_and_lost_leases_go_back_to_pending() {
        assert!(Running.can_become(Pending));
        assert!(
            !Pending.can_become(Succeeded),
            "a result needs a lease first"
        );
        assert!(Pending.can_become(Cancelled));
    }

    #[test]
    fn names_round_trip() {
        for state in InputState::ALL {
            assert_eq!(state.as_str().parse::<InputState>().unwrap(), state);
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
        assert!("done".parse::<InputState>().is_err());
    }

    #[test]
    fn call_state_follows_its_inputs() {
        let mut counts = CallCounts {
            total: 3,
            pending: 3,
            ..Default::default()
        };
        assert_eq!(counts.state(), Pending);
        counts.shift(Pending, Running);
        assert_eq!(counts.state(), Running);
        counts.shift(Running, Succeeded);
        counts.shift(Pending, Running);
        counts.shift(Running, Succeeded);
        assert_eq!(counts.state(), Running, "one input is still pending");
        counts.shift(Pending, Cancelled);
        assert_eq!(counts.state(), Cancelled);
        counts.shift(Cancelled, Failed);
        assert_eq!(counts.state(), Failed);
        let all_good = CallCounts {
            total: 2,
            succeeded: 2,
            ..Default::default()
        };
        assert_eq!(all_good.state(), Succeeded);
    }
}
