//! The notifier tells people when something fails: it follows ended calls (a durable cursor,
//! so a restart neither skips nor repeats them) and missed schedule firings, matches them to
//! each app's `[[notify]]` rules, and delivers to webhooks (JSON that Slack's incoming
//! webhooks accept) and e-mail.
//!
//! Storms are bounded: per function and channel, a burst is gathered for a moment into one
//! message, and after a message the channel is quiet for the rule's quiet period; the next
//! message counts everything that happened meanwhile. Delivery is retried with backoff in its
//! own task, so a failing channel never slows the queue; its state is in `GET
//! /v1/notifications` and the log. Webhook URLs and SMTP passwords are never shown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hopper_core::api::{ChannelView, InputError};
use hopper_core::notify::{redact_url, NotifyOn, NotifyRule};
use hopper_core::{plural, CallId, InputState};
use hopper_store::{CallRow, CallsFinished, LogList, StoreError};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api::views::time;
use crate::state::AppState;

const CURSOR_KEY: &str = "notifier.cursor";
/// Delivery attempts per message before the channel is reported failing.
const DELIVERY_ATTEMPTS: u32 = 6;
/// Log lines quoted in a message.
const LOG_TAIL: usize = 10;

/// Something worth telling.
#[derive(Debug, Clone)]
struct Event {
    kind: NotifyOn,
    app: String,
    /// Function name within the app, or the schedule's name for a missed firing.
    subject: String,
    call_id: Option<CallId>,
    error: Option<InputError>,
    attempts: u32,
    /// The failed input: a one-input call's (0), or a map's first failed one.
    index: Option<i64>,
    /// Inputs in the call (a map's failure names its input).
    inputs: i64,
    /// Missed due times, for `schedule_missed`.
    missed: usize,
}

/// One channel of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Target {
    Webhook(hopper_core::secret::Redacted<String>),
    Email(Vec<String>),
}

/// Messages for one function on one channel.
struct Window {
    last_sent: Option<i64>,
    pending: Vec<Event>,
    flush_at: Option<i64>,
}

pub struct Notifier {
    state: AppState,
    http: reqwest::Client,
    smtp: Option<Arc<AsyncSmtpTransport<Tokio1Executor>>>,
    from: Option<Mailbox>,
    windows: HashMap<(String, String), Window>,
    failing: HashMap<String, bool>,
    /// The first pass stores its starting cursor even when nothing ended.
    cursor_unsaved: bool,
    missed: tokio::sync::broadcast::Receiver<(String, usize)>,
}

/// Builds an SMTP transport from `smtp://[user:pass@]host[:port]`, `smtps://…` or
/// `smtp+starttls://…`. Errors never include the password.
pub fn smtp_transport(url: &str) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("--smtp {}: {e}", redact_url(url)))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("--smtp {}: no host", redact_url(url)))?;
    let mut builder = match parsed.scheme() {
        "smtp" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(parsed.port().unwrap_or(25)),
        "smtps" => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
            .map_err(|e| format!("--smtp {}: {e}", redact_url(url)))?
            .port(parsed.port().unwrap_or(465)),
        "smtp+starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
            .map_err(|e| format!("--smtp {}: {e}", redact_url(url)))?
            .port(parsed.port().unwrap_or(587)),
        other => {
            return Err(format!(
                "--smtp: unknown scheme {other:?} (expected smtp, smtps or smtp+starttls)"
            ))
        }
    };
    if !parsed.username().is_empty() {
        let password = parsed.password().unwrap_or("");
        let user = percent_decode(parsed.username());
        builder = builder.credentials(Credentials::new(user, percent_decode(password)));
    }
    Ok(builder.timeout(Some(Duration::from_secs(20))).build())
}

/// Whether `text` is an e-mail sender lettre accepts (`ops@example.com` or `Ops <ops@…>`).
pub fn valid_sender(text: &str) -> bool {
    text.parse::<Mailbox>().is_ok()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Notifier {
    pub fn new(state: AppState) -> Result<Self, String> {
        let missed = state.events.watch_missed();
        let smtp = state
            .config
            .smtp
            .as_ref()
            .map(|url| smtp_transport(url.expose()))
            .transpose()?
            .map(Arc::new);
        let from = state
            .config
            .smtp_from
            .parse::<Mailbox>()
            .map_err(|e| format!("--smtp-from {:?}: {e}", state.config.smtp_from))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            state,
            http,
            smtp,
            from: Some(from),
            windows: HashMap::new(),
            failing: HashMap::new(),
            cursor_unsaved: true,
            missed,
        })
    }

    /// Runs a pass every half second until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        // Through an outage of the database a pass fails every half second: the first
        // failure is logged, then one a minute, and the recovery.
        let mut failing_since: Option<(std::time::Instant, std::time::Instant)> = None;
        loop {
            if self.state.schema_ahead().is_some() {
                // The schema moved past this server: an upgraded one does this now.
            } else {
                match (self.run_once().await, failing_since) {
                    (Ok(()), None) => {}
                    (Ok(()), Some((since, _))) => {
                        failing_since = None;
                        tracing::info!(
                            failed_for_seconds = since.elapsed().as_secs(),
                            "notifier passes succeed again"
                        );
                    }
                    (Err(e), None) => {
                        let now = std::time::Instant::now();
                        failing_since = Some((now, now));
                        tracing::warn!(error = %e, "notifier pass failed; retrying every 0.5 s");
                    }
                    (Err(e), Some((since, logged))) => {
                        if logged.elapsed() >= Duration::from_secs(60) {
                            failing_since = Some((since, std::time::Instant::now()));
                            tracing::warn!(
                                error = %e,
                                failing_for_seconds = since.elapsed().as_secs(),
                                "notifier passes still fail; retrying every 0.5 s"
                            );
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One pass: reads calls that ended since the cursor, queues their events, and sends the
    /// messages that are due.
    pub async fn run_once(&mut self) -> Result<(), StoreError> {
        let mut events = Vec::new();
        while let Ok((schedule, count)) = self.missed.try_recv() {
            let (app, name) = schedule.split_once('.').unwrap_or(("", schedule.as_str()));
            events.push(Event {
                kind: NotifyOn::ScheduleMissed,
                app: app.to_string(),
                subject: name.to_string(),
                call_id: None,
                error: None,
                attempts: 0,
                index: None,
                inputs: 0,
                missed: count,
            });
        }
        // With several servers over one database, one of them notifies.
        if !self.state.lead("notifier").await? {
            return Ok(());
        }
        let now = self.state.now();
        let (after_at, after_id) = match self.state.store.setting_get(CURSOR_KEY).await? {
            Some(cursor) => {
                let (at, id) = cursor.split_once(':').unwrap_or((cursor.as_str(), ""));
                (at.parse().unwrap_or(now), id.parse().ok())
            }
            // First start: history is not news.
            None => (now, None),
        };
        let calls = self
            .state
            .store
            .call_list_finished(CallsFinished {
                after_at,
                after_id: after_id.clone(),
                limit: 1_000,
            })
            .await?;
        for call in &calls {
            if let Some(event) = self.classify(call).await? {
                events.push(event);
            }
        }
        let cursor = match calls.last() {
            Some(c) => format!("{}:{}", c.finished_at.unwrap_or(after_at), c.id),
            None => format!(
                "{after_at}:{}",
                after_id.map(|i: CallId| i.to_string()).unwrap_or_default()
            ),
        };
        if !calls.is_empty() || self.cursor_unsaved {
            self.state.store.setting_put(CURSOR_KEY, &cursor).await?;
            self.cursor_unsaved = false;
        }
        if !events.is_empty() {
            let rules: HashMap<String, Vec<NotifyRule>> = self
                .state
                .store
                .app_list()
                .await?
                .into_iter()
                .map(|a| (a.name, a.notify))
                .collect();
            for event in events {
                self.queue(event, &rules, now);
            }
        }
        self.flush(now).await;
        Ok(())
    }

    async fn classify(&mut self, call: &CallRow) -> Result<Option<Event>, StoreError> {
        let key = format!("{}.{}", call.app, call.function);
        // Only a failure's message needs the input's error and attempts: a one-input call's,
        // or a map's first failed input.
        let first = match call.state {
            InputState::Failed if call.counts.total == 1 => {
                self.state.store.input_get(&call.id, 0).await?
            }
            InputState::Failed => self.state.store.input_first_failed(&call.id).await?,
            _ => None,
        };
        let event = |kind| Event {
            kind,
            app: call.app.clone(),
            subject: call.function.clone(),
            call_id: Some(call.id.clone()),
            error: first.as_ref().and_then(|i| i.error.clone()),
            attempts: first.as_ref().map_or(0, |i| i.attempts),
            index: first.as_ref().map(|i| i.index),
            inputs: call.counts.total,
            missed: 0,
        };
        Ok(match call.state {
            InputState::Failed => {
                self.failing.insert(key, true);
                let timed_out = first
                    .as_ref()
                    .and_then(|i| i.error.as_ref())
                    .is_some_and(|e| e.code == "timeout");
                Some(event(if timed_out {
                    NotifyOn::TimedOut
                } else {
                    NotifyOn::Failed
                }))
            }
            InputState::Succeeded if self.failing.remove(&key).unwrap_or(false) => {
                Some(event(NotifyOn::Recovered))
            }
            _ => None,
        })
    }

    fn queue(&mut self, event: Event, rules: &HashMap<String, Vec<NotifyRule>>, now: i64) {
        let Some(app_rules) = rules.get(&event.app) else {
            return;
        };
        for (i, rule) in app_rules.iter().enumerate() {
            // A timeout is a failure too: a rule on `failed` hears of it.
            let covered = rule.covers(&event.subject, event.kind)
                || (event.kind == NotifyOn::TimedOut
                    && rule.covers(&event.subject, NotifyOn::Failed))
                || (event.kind == NotifyOn::ScheduleMissed
                    && rule.on.contains(&NotifyOn::ScheduleMissed));
            if !covered {
                continue;
            }
            let mut targets = Vec::new();
            if let Some(url) = &rule.webhook {
                targets.push(Target::Webhook(url.clone()));
            }
            if !rule.email.is_empty() {
                targets.push(Target::Email(rule.email.clone()));
            }
            for target in targets {
                let channel = channel_id(&event.app, i, &target);
                self.register_channel(&channel, &event.app, &target);
                let gather = self.state.config.notify_gather.as_millis() as i64;
                let window = self
                    .windows
                    .entry((
                        format!("{}.{}", event.app, event.subject),
                        format!("{channel}|{}", target_key(&target)),
                    ))
                    .or_insert(Window {
                        last_sent: None,
                        pending: Vec::new(),
                        flush_at: None,
                    });
                window.pending.push(event.clone());
                if window.flush_at.is_none() {
                    window.flush_at = Some(match window.last_sent {
                        Some(sent) if now - sent < rule.quiet_ms as i64 => {
                            (sent + rule.quiet_ms as i64).max(now + gather)
                        }
                        _ => now + gather,
                    });
                }
            }
        }
    }

    fn register_channel(&self, channel: &str, app: &str, target: &Target) {
        if let Ok(mut channels) = self.state.channels.lock() {
            channels
                .entry(channel.to_string())
                .or_insert_with(|| ChannelView {
                    app: app.to_string(),
                    kind: match target {
                        Target::Webhook(_) => "webhook".into(),
                        Target::Email(_) => "email".into(),
                    },
                    target: match target {
                        Target::Webhook(url) => redact_url(url.expose()),
                        Target::Email(to) => to.join(", "),
                    },
                    state: "ok".into(),
                    ..ChannelView::default()
                });
        }
    }

    async fn flush(&mut self, now: i64) {
        let due: Vec<(String, String)> = self
            .windows
            .iter()
            .filter(|(_, w)| w.flush_at.is_some_and(|t| t <= now) && !w.pending.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(window) = self.windows.get_mut(&key) else {
                continue;
            };
            let events = std::mem::take(&mut window.pending);
            window.last_sent = Some(now);
            window.flush_at = None;
            let (channel, target) = key.1.split_once('|').unwrap_or((key.1.as_str(), ""));
            let Some(target) = parse_target(target) else {
                continue;
            };
            let message = self.compose(&events).await;
            let delivery = Delivery {
                state: self.state.clone(),
                http: self.http.clone(),
                smtp: self.smtp.clone(),
                from: self.from.clone(),
                channel: channel.to_string(),
            };
            tokio::spawn(delivery.send(target, message));
        }
    }

    async fn compose(&self, events: &[Event]) -> Composed {
        let Some(last) = events.last() else {
            return Composed::default();
        };
        let count = events.len();
        let name = format!("{}.{}", last.app, last.subject);
        let base = self.state.config.public_url.clone().unwrap_or_default();
        let url = last
            .call_id
            .as_ref()
            .map(|id| format!("{}/calls/{id}", base.trim_end_matches('/')));
        let mut log_tail = Vec::new();
        if let Some(id) = &last.call_id {
            if let Ok(lines) = self
                .state
                .store
                .log_list(LogList {
                    call_id: id.clone(),
                    index: None,
                    after_seq: 0,
                    limit: 10_000,
                    max_bytes: None,
                })
                .await
            {
                let skip = lines.len().saturating_sub(LOG_TAIL);
                log_tail = lines
                    .into_iter()
                    .skip(skip)
                    .map(|l| format!("[{}] {}", l.stream.as_str(), l.line))
                    .collect();
            }
        }
        let what = match last.kind {
            NotifyOn::Failed => "failed".to_string(),
            NotifyOn::TimedOut => "timed out".to_string(),
            NotifyOn::Recovered => "recovered".to_string(),
            NotifyOn::ScheduleMissed => {
                format!("missed {} due times while the server was down", last.missed)
            }
        };
        let mut text = format!("[hopper] {name} {what}");
        if let Some(id) = &last.call_id {
            text.push_str(&format!(" (call {id}"));
            if let Some(index) = last.index.filter(|_| last.inputs > 1) {
                text.push_str(&format!(", input {index} of {}", last.inputs));
            }
            if last.attempts > 0 {
                text.push_str(&format!(", {}", plural(last.attempts as u64, "attempt")));
            }
            text.push(')');
        }
        if let Some(e) = &last.error {
            text.push_str(&format!(": {}: {}", e.code, e.message));
        }
        if count > 1 {
            let failures = events
                .iter()
                .filter(|e| matches!(e.kind, NotifyOn::Failed | NotifyOn::TimedOut))
                .count();
            // The first message of a storm has no "last message" to count from.
            text.push_str(&format!(
                "\n{} together ({}); the last is above.",
                plural(count as u64, "event"),
                plural(failures as u64, "failure")
            ));
        }
        if !log_tail.is_empty() {
            // A code block in Slack and Markdown: log lines keep their spacing.
            text.push_str("\nLast log lines:\n```\n");
            text.push_str(&log_tail.join("\n").replace("```", "`\u{200b}``"));
            text.push_str("\n```");
        }
        if let Some(u) = &url {
            text.push_str(&format!("\n{u}"));
        }
        let subject = format!("[hopper] {name} {what}");
        let payload = json!({
            "text": text,
            "hopper": {
                "event": last.kind.as_str(),
                "app": last.app,
                "function": name,
                "call_id": last.call_id,
                "attempts": last.attempts,
                "error": last.error,
                "index": last.index,
                "count": count,
                "log_tail": log_tail,
                "url": url,
                "at": time(self.state.now()),
            }
        });
        Composed {
            subject,
            text,
            payload,
        }
    }
}

#[derive(Default, Clone)]
struct Composed {
    subject: String,
    text: String,
    payload: serde_json::Value,
}

fn channel_id(app: &str, rule: usize, target: &Target) -> String {
    match target {
        Target::Webhook(_) => format!("{app}#{rule}:webhook"),
        Target::Email(_) => format!("{app}#{rule}:email"),
    }
}

fn target_key(target: &Target) -> String {
    match target {
        Target::Webhook(url) => format!("w {}", url.expose()),
        Target::Email(to) => format!("e {}", to.join(",")),
    }
}

fn parse_target(key: &str) -> Option<Target> {
    match key.split_once(' ')? {
        ("w", url) => Some(Target::Webhook(url.to_string().into())),
        ("e", to) => Some(Target::Email(to.split(',').map(String::from).collect())),
        _ => None,
    }
}

struct Delivery {
    state: AppState,
    http: reqwest::Client,
    smtp: Option<Arc<AsyncSmtpTransport<Tokio1Executor>>>,
    from: Option<Mailbox>,
    channel: String,
}

impl Delivery {
    async fn send(self, target: Target, message: Composed) {
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=DELIVERY_ATTEMPTS {
            let result = match &target {
                Target::Webhook(url) => self.webhook(url.expose(), &message).await,
                Target::Email(to) => self.email(to, &message).await,
            };
            match result {
                Ok(()) => {
                    crate::metrics::notification(self.kind(&target), "delivered");
                    self.update(|c| {
                        c.delivered += 1;
                        c.state = "ok".into();
                        c.last_delivered_at = Some(time(self.state.now()));
                    });
                    return;
                }
                Err(e) => {
                    crate::metrics::notification(self.kind(&target), "failed");
                    tracing::warn!(channel = %self.channel, attempt, error = %e, "notification delivery failed");
                    let last = attempt == DELIVERY_ATTEMPTS;
                    self.update(|c| {
                        c.failed_attempts += 1;
                        c.last_error = Some(e.clone());
                        c.state = if last {
                            "failing".into()
                        } else {
                            "retrying".into()
                        };
                    });
                    if last {
                        tracing::error!(channel = %self.channel, "notification channel is failing; the message was dropped");
                        return;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn kind(&self, target: &Target) -> String {
        match target {
            Target::Webhook(_) => "webhook".into(),
            Target::Email(_) => "email".into(),
        }
    }

    fn update(&self, f: impl FnOnce(&mut ChannelView)) {
        if let Ok(mut channels) = self.state.channels.lock() {
            if let Some(c) = channels.get_mut(&self.channel) {
                f(c);
            }
        }
    }

    async fn webhook(&self, url: &str, message: &Composed) -> Result<(), String> {
        let response = self
            .http
            .post(url)
            .json(&message.payload)
            .send()
            .await
            // The URL is a secret: report the cause without it.
            .map_err(|e| format!("cannot reach {}: {}", redact_url(url), e.without_url()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "{} answered HTTP {}",
                redact_url(url),
                response.status()
            ))
        }
    }

    async fn email(&self, to: &[String], message: &Composed) -> Result<(), String> {
        let smtp = self
            .smtp
            .as_ref()
            .ok_or("no SMTP server: start the server with --smtp URL")?;
        let from = self.from.clone().ok_or("no sender address")?;
        let mut builder = Message::builder()
            .from(from)
            .subject(message.subject.clone());
        for address in to {
            let mailbox: Mailbox = address.parse().map_err(|e| format!("{address:?}: {e}"))?;
            builder = builder.to(mailbox);
        }
        let email = builder
            .body(message.text.clone())
            .map_err(|e| e.to_string())?;
        smtp.send(email)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}
