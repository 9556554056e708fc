//! `hopper.toml`: an app and its functions.
//!
//! Parsing is two passes: TOML into raw, position-carrying structs, then validation into
//! [`FunctionSpec`]s. Every fault is collected and reported together, each naming the file,
//! line, column and key, so one deploy attempt shows everything to fix.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::cron::{self, Cron};
use crate::duration;
use crate::function::{
    validate_function_name, validate_name, BatchPolicy, FunctionSpec, PythonEnv, ScalingPolicy,
    SecretRef, DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_MS, MAX_TIMEOUT,
};
use crate::limits::{self, Limits, Rate};
use crate::notify::{NotifyOn, NotifyRule, DEFAULT_QUIET_MS};
use crate::resources::Resources;
use crate::retry::RetryPolicy;
use crate::schedule::{Overlap, ScheduleSpec, When};

/// Largest per-worker concurrency a manifest may ask for.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// Largest batch a manifest may ask for.
pub const MAX_BATCH: u32 = 10_000;
/// Most local workers per function.
pub const MAX_WORKERS: u32 = 1_000;
/// Largest number of retries a manifest may ask for.
pub const MAX_RETRIES: u32 = 1_000;

/// A manifest, resolved: the app's name and its functions, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct AppManifest {
    pub app: String,
    pub functions: Vec<FunctionSpec>,
    pub schedules: Vec<ScheduleSpec>,
    pub notify: Vec<NotifyRule>,
}

/// One fault in a manifest, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFault {
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `functions.greet.timeout`, when the fault belongs to a key.
    pub key: Option<String>,
    pub message: String,
}

/// Why a manifest was refused: every fault found, each with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: String,
    pub faults: Vec<ManifestFault>,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, fault) in self.faults.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.file, fault.line, fault.column)?;
            if let Some(key) = &fault.key {
                write!(f, "{key}: ")?;
            }
            write!(f, "{}", fault.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestError {}

#[derive(Deserialize)]
struct RawManifest {
    app: Spanned<String>,
    /// The folder a deploy ships as the code snapshot (read by [`code_root`]).
    #[serde(default)]
    #[allow(dead_code)]
    root: Option<Spanned<String>>,
    #[serde(default)]
    functions: BTreeMap<String, Spanned<RawFunction>>,
    #[serde(default)]
    schedules: BTreeMap<String, Spanned<RawSchedule>>,
    #[serde(default)]
    notify: Vec<Spanned<RawNotify>>,
}

#[derive(Deserialize)]
struct RawNotify {
    on: Spanned<Vec<String>>,
    functions: Option<Spanned<Vec<String>>>,
    webhook: Option<Spanned<String>>,
    email: Option<Spanned<Vec<String>>>,
    quiet: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawSchedule {
    function: Spanned<String>,
    cron: Option<Spanned<String>>,
    every: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    input: Option<toml::Value>,
    overlap: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawFunction {
    command: Option<Spanned<Vec<String>>>,
    serve: Option<Spanned<Vec<String>>>,
    /// Served by a worker you run yourself (the Rust SDK, or any language through the API).
    external: Option<Spanned<bool>>,
    batch: Option<Spanned<RawBatch>>,
    min_workers: Option<Spanned<i64>>,
    max_workers: Option<Spanned<i64>>,
    buffer_workers: Option<Spanned<i64>>,
    scaledown_window: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<RawRetries>>,
    concurrency: Option<Spanned<i64>>,
    /// A plain value, or `{ secret = "NAME", key = "KEY" }`.
    #[serde(default)]
    env: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    secrets: Vec<Spanned<String>>,
    workdir: Option<Spanned<String>>,
    /// `python = { requirements = "requirements.txt" }` or `{ requirements = ["six"] }`.
    python: Option<Spanned<toml::Value>>,
    limits: Option<Spanned<RawLimits>>,
    priority: Option<Spanned<i64>>,
    /// `1`, `"any"`, `"A100"`, `"H100:2"` or `["H100", "A100"]`.
    gpu: Option<Spanned<toml::Value>>,
    /// Cores, fractional allowed.
    cpu: Option<Spanned<toml::Value>>,
    /// MiB as a number, or a size (`"4GiB"`).
    memory: Option<Spanned<toml::Value>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Deserialize)]
struct RawLimits {
    key: Option<Spanned<String>>,
    max_running: Option<Spanned<i64>>,
    max_running_per_key: Option<Spanned<i64>>,
    rate: Option<Spanned<String>>,
    rate_per_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawBatch {
    max_size: i64,
    wait: String,
}

/// `retries = 3` or `retries = { max_retries = 3, … }`.
enum RawRetries {
    Count(i64),
    Policy(RawRetryPolicy),
}

impl<'de> Deserialize<'de> for RawRetries {
    /// Either form, or an error that says both (serde's untagged enums say only that no
    /// variant matched).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(deserializer)? {
            toml::Value::Integer(n) => Ok(RawRetries::Count(n)),
            toml::Value::Table(table) => RawRetryPolicy::deserialize(toml::Value::Table(table))
                .map(RawRetries::Policy)
                .map_err(|e| D::Error::custom(e.message())),
            other => {
                let shown = match &other {
                    toml::Value::String(text) => format!(" {text:?}"),
                    toml::Value::Float(x) => format!(" {x}"),
                    toml::Value::Boolean(b) => format!(" {b}"),
                    _ => String::new(),
                };
                Err(D::Error::custom(format!(
                    "expected a number of retries (retries = 3) or a policy (retries = {{ max_retries = 3, initial_delay = \"1s\" }}), not the {}{shown}",
                    other.type_str()
                )))
            }
        }
    }
}

#[derive(Deserialize)]
struct RawRetryPolicy {
    max_retries: Option<i64>,
    backoff_coefficient: Option<f64>,
    initial_delay: Option<String>,
    max_delay: Option<String>,
}

/// The default `max_workers`: the cores of the machine that parses the manifest (the server's,
/// where local workers run), at least 1 and at most 16.
pub fn default_max_workers() -> u32 {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() as u32)
        .clamp(1, 16)
}

/// The keys each table of a manifest may have, and the tables below them.
struct Keys {
    known: &'static [&'static str],
    /// `(key, keys of its value)`: a table, or each table of an array or of a map of names.
    nested: &'static [(&'static str, Nested)],
}

enum Nested {
    /// `key = { … }` or `[key]`.
    Table(&'static Keys),
    /// `[key.NAME]` tables, one per name.
    Named(&'static Keys),
    /// `[[key]]` tables.
    Array(&'static Keys),
}

const ROOT_KEYS: Keys = Keys {
    known: &["app", "root", "functions", "schedules", "notify"],
    nested: &[
        ("functions", Nested::Named(&FUNCTION_KEYS)),
        ("schedules", Nested::Named(&SCHEDULE_KEYS)),
        ("notify", Nested::Array(&NOTIFY_KEYS)),
    ],
};
const FUNCTION_KEYS: Keys = Keys {
    known: &[
        "command",
        "serve",
        "external",
        "batch",
        "min_workers",
        "max_workers",
        "buffer_workers",
        "scaledown_window",
        "timeout",
        "retries",
        "concurrency",
        "env",
        "secrets",
        "workdir",
        "python",
        "limits",
        "priority",
        "gpu",
        "cpu",
        "memory",
        "labels",
    ],
    nested: &[
        ("batch", Nested::Table(&BATCH_KEYS)),
        ("retries", Nested::Table(&RETRY_KEYS)),
        ("limits", Nested::Table(&LIMIT_KEYS)),
    ],
};
const LIMIT_KEYS: Keys = Keys {
    known: &[
        "key",
        "max_running",
        "max_running_per_key",
        "rate",
        "rate_per_key",
    ],
    nested: &[],
};
const BATCH_KEYS: Keys = Keys {
    known: &["max_size", "wait"],
    nested: &[],
};
const RETRY_KEYS: Keys = Keys {
    known: &[
        "max_retries",
        "backoff_coefficient",
        "initial_delay",
        "max_delay",
    ],
    nested: &[],
};
const SCHEDULE_KEYS: Keys = Keys {
    known: &["function", "cron", "every", "timezone", "input", "overlap"],
    nested: &[],
};
const NOTIFY_KEYS: Keys = Keys {
    known: &["on", "functions", "webhook", "email", "quiet"],
    nested: &[],
};

/// Adds a fault for every key of `table` (and of the tables below it) that `keys` does not
/// know; `path` is the table's dotted key.
fn unknown_keys(faults: &mut Faults<'_>, table: &toml::de::DeTable<'_>, keys: &Keys, path: &str) {
    let dotted = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        if !keys.known.contains(&name) {
            let known: Vec<String> = keys.known.iter().map(|k| k.to_string()).collect();
            let hint = match crate::suggest::closest(name, &known) {
                Some(close) => format!(" (did you mean `{close}`?)"),
                None => format!(" (expected one of {})", keys.known.join(", ")),
            };
            faults.push(
                key.span(),
                Some(dotted(name)),
                format!("unknown key `{name}`{hint}"),
            );
            continue;
        }
        let Some((_, nested)) = keys.nested.iter().find(|(k, _)| *k == name) else {
            continue;
        };
        match (nested, value.get_ref()) {
            (Nested::Table(inner), toml::de::DeValue::Table(t)) => {
                unknown_keys(faults, t, inner, &dotted(name))
            }
            (Nested::Named(inner), toml::de::DeValue::Table(t)) => {
                for (item, v) in t.iter() {
                    if let toml::de::DeValue::Table(t) = v.get_ref() {
                        let item_path = format!("{}.{}", dotted(name), item.get_ref());
                        unknown_keys(faults, t, inner, &item_path);
                    }
                }
            }
            (Nested::Array(inner), toml::de::DeValue::Array(items)) => {
                for (i, v) in items.iter().enumerate() {
                    if let toml::de::DeValue::Table(t) = v.get_ref() {
                        unknown_keys(faults, t, inner, &format!("{}[{i}]", dotted(name)));
                    }
                }
            }
            _ => {}
        }
    }
}

/// The manifest's `root`: the folder, relative to the manifest's own, that a deploy ships as
/// the version's code (default the manifest's folder). `None` if the manifest does not say (or
/// is not TOML: [`parse`] reports that).
pub fn code_root(text: &str) -> Option<String> {
    let value: toml::Value = toml::from_str(text).ok()?;
    value.get("root")?.as_str().map(str::to_string)
}

/// Parses and validates a manifest.
///
/// `file` is how the manifest is named in errors; `base_dir` is the absolute directory that
/// relative `workdir`s are resolved against (the manifest's own directory).
pub fn parse(file: &str, text: &str, base_dir: &Path) -> Result<AppManifest, ManifestError> {
    let mut faults = Faults {
        text,
        list: Vec::new(),
    };
    // Keys first, all of them: every unknown key is a fault of its own (with the key meant,
    // when one is close), and the rest of the manifest is still checked.
    match toml::de::DeTable::parse(text) {
        Ok(root) => unknown_keys(&mut faults, root.get_ref(), &ROOT_KEYS, ""),
        Err(err) => {
            let span = err.span().unwrap_or(0..0);
            faults.push(span, None, err.message().to_string());
            return Err(faults.into_error(file));
        }
    }
    let Some(raw) = deserialize(&mut faults, text) else {
        return Err(faults.into_error(file));
    };
    if !base_dir.is_absolute() {
        faults.push(
            0..0,
            None,
            format!("base directory {} is not absolute", base_dir.display()),
        );
    }
    let app = raw.app.get_ref().clone();
    if let Err(e) = validate_name(&app, "app") {
        faults.push(raw.app.span(), Some("app".into()), e.to_string());
    }
    if raw.functions.is_empty() {
        faults.push(
            0..0,
            Some("functions".into()),
            "the app declares no functions: add a [functions.NAME] table".into(),
        );
    }
    let mut functions = Vec::new();
    for (name, raw_fn) in &raw.functions {
        let key = format!("functions.{name}");
        if let Err(e) = validate_function_name(name) {
            faults.push(raw_fn.span(), Some(key.clone()), e.to_string());
        }
        if let Some(spec) = function(&mut faults, &key, &app, name, raw_fn, base_dir) {
            functions.push(spec);
        }
    }
    let mut schedules = Vec::new();
    for (name, raw_schedule) in &raw.schedules {
        let key = format!("schedules.{name}");
        if let Err(e) = validate_name(name, "schedule") {
            faults.push(raw_schedule.span(), Some(key.clone()), e.to_string());
        }
        if let Some(s) = schedule(&mut faults, &key, &app, name, raw_schedule, &raw.functions) {
            schedules.push(s);
        }
    }
    let mut notify = Vec::new();
    for (i, raw_rule) in raw.notify.iter().enumerate() {
        if let Some(rule) = notify_rule(
            &mut faults,
            &format!("notify[{i}]"),
            raw_rule,
            &raw.functions,
        ) {
            notify.push(rule);
        }
    }
    if faults.list.is_empty() {
        Ok(AppManifest {
            app,
            functions,
            schedules,
            notify,
        })
    } else {
        Err(faults.into_error(file))
    }
}

fn function(
    faults: &mut Faults<'_>,
    key: &str,
    app: &str,
    name: &str,
    raw: &Spanned<RawFunction>,
    base_dir: &Path,
) -> Option<FunctionSpec> {
    let before = faults.list.len();
    let f = raw.get_ref();
    let argv =
        |field: &str, value: &Option<Spanned<Vec<String>>>, faults: &mut Faults<'_>| match value {
            None => Vec::new(),
            Some(c) if c.get_ref().is_empty() || c.get_ref()[0].trim().is_empty() => {
                faults.push(
                    c.span(),
                    Some(format!("{key}.{field}")),
                    format!("the {field} is empty: give at least the program"),
                );
                Vec::new()
            }
            Some(c) => c.get_ref().clone(),
        };
    let command = argv("command", &f.command, faults);
    let serve = argv("serve", &f.serve, faults);
    let external = f.external.as_ref().is_some_and(|e| *e.get_ref());
    if external && (f.command.is_some() || f.serve.is_some()) {
        if let Some(e) = &f.external {
            faults.push(
                e.span(),
                Some(format!("{key}.external")),
                "an external function has no `command` or `serve`: its workers run it".into(),
            );
        }
    }
    if !external && f.command.is_none() && f.serve.is_none() {
        faults.push(raw.span(), Some(key.to_string()), "`command` is missing: give the program and its arguments, e.g. command = [\"python3\", \"job.py\"] (or serve = [...] for a long-lived process)".into());
    }
    if let (Some(_), Some(s)) = (&f.command, &f.serve) {
        faults.push(s.span(), Some(format!("{key}.serve")), "give either `command` (a process per input) or `serve` (a long-lived process), not both".into());
    }
    let batch = match &f.batch {
        None => None,
        Some(b) => {
            let raw_batch = b.get_ref();
            let bkey = format!("{key}.batch");
            if f.serve.is_none() && !external {
                faults.push(
                    b.span(),
                    Some(bkey.clone()),
                    "batching needs a long-lived process: set `serve` instead of `command`".into(),
                );
            }
            if !(1..=MAX_BATCH as i64).contains(&raw_batch.max_size) {
                faults.push(
                    b.span(),
                    Some(format!("{bkey}.max_size")),
                    format!(
                        "must be between 1 and {MAX_BATCH}, not {}",
                        raw_batch.max_size
                    ),
                );
            }
            let wait_ms = match duration::parse(&raw_batch.wait) {
                Ok(d) => d.as_millis() as u64,
                Err(e) => {
                    faults.push(b.span(), Some(format!("{bkey}.wait")), e.to_string());
                    0
                }
            };
            Some(BatchPolicy {
                max_size: raw_batch.max_size.clamp(1, MAX_BATCH as i64) as u32,
                wait_ms,
            })
        }
    };
    let scaling = scaling(faults, key, f);
    let timeout_ms = match &f.timeout {
        None => DEFAULT_TIMEOUT_MS,
        Some(t) => match duration::parse(t.get_ref()) {
            Ok(d) if d.as_millis() == 0 => {
                faults.push(
                    t.span(),
                    Some(format!("{key}.timeout")),
                    "the timeout must be more than zero".into(),
                );
                0
            }
            Ok(d) if d > MAX_TIMEOUT => {
                faults.push(
                    t.span(),
                    Some(format!("{key}.timeout")),
                    format!(
                        "the timeout must be at most {}",
                        duration::format(MAX_TIMEOUT)
                    ),
                );
                0
            }
            Ok(d) => d.as_millis() as u64,
            Err(e) => {
                faults.push(t.span(), Some(format!("{key}.timeout")), e.to_string());
                0
            }
        },
    };
    let concurrency = match &f.concurrency {
        None => DEFAULT_CONCURRENCY,
        Some(c) if (1..=MAX_CONCURRENCY as i64).contains(c.get_ref()) => *c.get_ref() as u32,
        Some(c) => {
            faults.push(
                c.span(),
                Some(format!("{key}.concurrency")),
                format!(
                    "must be between 1 and {MAX_CONCURRENCY}, not {}",
                    c.get_ref()
                ),
            );
            1
        }
    };
    let retries = match &f.retries {
        None => RetryPolicy::default(),
        Some(r) => retry_policy(faults, &format!("{key}.retries"), r),
    };
    let (env, secret_env) = environment(faults, key, f);
    let mut secrets = Vec::new();
    for name in &f.secrets {
        match validate_name(name.get_ref(), "secret") {
            Ok(()) if secrets.contains(name.get_ref()) => faults.push(
                name.span(),
                Some(format!("{key}.secrets")),
                format!("secret {:?} is named twice", name.get_ref()),
            ),
            Ok(()) => secrets.push(name.get_ref().clone()),
            Err(e) => faults.push(name.span(), Some(format!("{key}.secrets")), e.to_string()),
        }
    }
    let python = python_env(faults, key, f, base_dir);
    let limits = f
        .limits
        .as_ref()
        .map(|l| limits(faults, key, l.get_ref()))
        .unwrap_or_default();
    let priority = match &f.priority {
        None => 0,
        Some(p) => limits::validate_priority(*p.get_ref()).unwrap_or_else(|e| {
            faults.push(p.span(), Some(format!("{key}.priority")), e);
            0
        }),
    };
    let resources = resources(faults, key, f);
    let workdir = match &f.workdir {
        None => normalize(base_dir),
        Some(w) => normalize(&base_dir.join(w.get_ref())),
    };
    if faults.list.len() > before {
        return None;
    }
    Some(FunctionSpec {
        app: app.to_string(),
        name: name.to_string(),
        command,
        serve,
        batch,
        scaling,
        workdir: workdir.to_string_lossy().into_owned(),
        snapshot: None,
        python,
        env,
        secrets,
        secret_env,
        timeout_ms,
        retries,
        concurrency,
        limits,
        priority,
        resources,
    })
}

/// A function's `gpu`, `cpu`, `memory` and `labels`; `key` is the function's dotted key.
fn resources(faults: &mut Faults<'_>, key: &str, f: &RawFunction) -> Resources {
    use crate::resources::{GpuValue, MemoryValue};
    let mut out = Resources::default();
    if let Some(g) = &f.gpu {
        let value = match g.get_ref() {
            toml::Value::Integer(n) => Ok(GpuValue::Count(*n)),
            toml::Value::String(text) => Ok(GpuValue::Text(text)),
            toml::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().ok_or("a list of GPU kinds holds strings (gpu = [\"H100\", \"A100\"])".to_string()))
                .collect::<Result<Vec<_>, _>>()
                .map(GpuValue::List),
            other => Err(format!("expected a count (gpu = 1), a kind (gpu = \"A100\", \"H100:2\") or a list of kinds, not the {}", other.type_str())),
        };
        match value.and_then(|v| crate::resources::parse_gpu(&v)) {
            Ok(gpu) => out.gpu = Some(gpu),
            Err(e) => faults.push(g.span(), Some(format!("{key}.gpu")), e),
        }
    }
    if let Some(c) = &f.cpu {
        let value = match c.get_ref() {
            toml::Value::Integer(n) => Ok(*n as f64),
            toml::Value::Float(x) => Ok(*x),
            other => Err(format!(
                "expected a number of cores (cpu = 2 or 0.5), not the {}",
                other.type_str()
            )),
        };
        match value.and_then(crate::resources::check_cpu) {
            Ok(cpu) => out.cpu = Some(cpu),
            Err(e) => faults.push(c.span(), Some(format!("{key}.cpu")), e),
        }
    }
    if let Some(m) = &f.memory {
        let value = match m.get_ref() {
            toml::Value::Integer(n) => Ok(MemoryValue::Mib(*n)),
            toml::Value::String(text) => Ok(MemoryValue::Text(text)),
            other => Err(format!(
                "expected a size (memory = \"4GiB\") or a number of MiB, not the {}",
                other.type_str()
            )),
        };
        match value.and_then(crate::resources::parse_memory) {
            Ok(bytes) => out.memory_bytes = Some(bytes),
            Err(e) => faults.push(m.span(), Some(format!("{key}.memory")), e),
        }
    }
    if let Some(labels) = &f.labels {
        for (name, value) in labels.get_ref() {
            match crate::resources::check_label(name, value) {
                Ok(()) => {
                    out.labels.insert(name.clone(), value.clone());
                }
                Err(e) => faults.push(labels.span(), Some(format!("{key}.labels")), e),
            }
        }
    }
    out
}

/// A function's `limits` table; `key` is the function's dotted key.
fn limits(faults: &mut Faults<'_>, key: &str, raw: &RawLimits) -> Limits {
    let mut count = |field: &str, value: &Option<Spanned<i64>>| {
        let v = value.as_ref()?;
        if (1..=i64::from(limits::MAX_RUNNING)).contains(v.get_ref()) {
            Some(*v.get_ref() as u32)
        } else {
            faults.push(
                v.span(),
                Some(format!("{key}.limits.{field}")),
                format!(
                    "must be between 1 and {}, not {}",
                    limits::MAX_RUNNING,
                    v.get_ref()
                ),
            );
            None
        }
    };
    let max_running = count("max_running", &raw.max_running);
    let max_running_per_key = count("max_running_per_key", &raw.max_running_per_key);
    let mut rate = |field: &str, value: &Option<Spanned<String>>| {
        let v = value.as_ref()?;
        Rate::parse(v.get_ref())
            .map_err(|e| faults.push(v.span(), Some(format!("{key}.limits.{field}")), e))
            .ok()
    };
    let rate_all = rate("rate", &raw.rate);
    let rate_per_key = rate("rate_per_key", &raw.rate_per_key);
    let pointer = raw.key.as_ref().and_then(|k| {
        limits::validate_pointer(k.get_ref())
            .map_err(|e| faults.push(k.span(), Some(format!("{key}.limits.key")), e))
            .ok()
            .map(|()| k.get_ref().clone())
    });
    Limits {
        key: pointer,
        max_running,
        max_running_per_key,
        rate: rate_all,
        rate_per_key,
    }
}

/// A function's `python` table: its requirements, as a file (relative to the manifest's
/// folder) or inline.
fn python_env(
    faults: &mut Faults<'_>,
    key: &str,
    f: &RawFunction,
    base_dir: &Path,
) -> Option<PythonEnv> {
    let raw = f.python.as_ref()?;
    let at = Some(format!("{key}.python"));
    let expected = "expected python = { requirements = \"requirements.txt\" } or { requirements = [\"package==1.0\", …] }";
    let Some(table) = raw.get_ref().as_table() else {
        faults.push(raw.span(), at, expected.into());
        return None;
    };
    if let Some(unknown) = table.keys().find(|k| *k != "requirements") {
        faults.push(
            raw.span(),
            at,
            format!("unknown key `{unknown}` (expected requirements)"),
        );
        return None;
    }
    match table.get("requirements") {
        Some(toml::Value::String(file)) if !file.trim().is_empty() => Some(PythonEnv {
            requirements_file: Some(
                normalize(&base_dir.join(file))
                    .to_string_lossy()
                    .into_owned(),
            ),
            requirements: Vec::new(),
        }),
        Some(toml::Value::Array(items)) => {
            let list: Option<Vec<String>> = items
                .iter()
                .map(|i| {
                    i.as_str()
                        .filter(|s| !s.trim().is_empty() && !s.contains('\n'))
                        .map(str::to_string)
                })
                .collect();
            match list {
                Some(list) if !list.is_empty() => Some(PythonEnv {
                    requirements_file: None,
                    requirements: list,
                }),
                _ => {
                    faults.push(
                        raw.span(),
                        at,
                        "requirements must be a non-empty list of one-line strings in pip's format"
                            .into(),
                    );
                    None
                }
            }
        }
        _ => {
            faults.push(raw.span(), at, expected.into());
            None
        }
    }
}

/// A function's `env`: plain values, and variables read from one key of a named secret.
fn environment(
    faults: &mut Faults<'_>,
    key: &str,
    f: &RawFunction,
) -> (BTreeMap<String, String>, BTreeMap<String, SecretRef>) {
    let mut env = BTreeMap::new();
    let mut secret_env = BTreeMap::new();
    for (var, value) in &f.env {
        let at = Some(format!("{key}.env.{var}"));
        if let Err(e) = validate_env_name(var) {
            faults.push(value.span(), at.clone(), e);
        }
        match value.get_ref() {
            toml::Value::String(text) if text.contains('\0') => faults.push(
                value.span(),
                at,
                "an environment variable's value cannot contain NUL".into(),
            ),
            toml::Value::String(text) => {
                env.insert(var.clone(), text.clone());
            }
            toml::Value::Table(t) => {
                let field = |name: &str| t.get(name).and_then(toml::Value::as_str);
                let unknown: Vec<&str> = t
                    .keys()
                    .map(String::as_str)
                    .filter(|k| *k != "secret" && *k != "key")
                    .collect();
                match (field("secret"), field("key")) {
                    (Some(secret), Some(secret_key)) if unknown.is_empty() => {
                        if let Err(e) = validate_name(secret, "secret") {
                            faults.push(value.span(), at.clone(), e.to_string());
                        }
                        if let Err(e) = validate_env_name(secret_key) {
                            faults.push(value.span(), at, format!("key: {e}"));
                        }
                        secret_env.insert(
                            var.clone(),
                            SecretRef {
                                secret: secret.to_string(),
                                key: secret_key.to_string(),
                            },
                        );
                    }
                    _ => faults.push(
                        value.span(),
                        at,
                        "expected a string, or { secret = \"NAME\", key = \"KEY\" } to read one key of a named secret".into(),
                    ),
                }
            }
            _ => faults.push(
                value.span(),
                at,
                "expected a string, or { secret = \"NAME\", key = \"KEY\" } to read one key of a named secret".into(),
            ),
        }
    }
    (env, secret_env)
}

/// An environment variable's name as a secret's key or an `env` entry: one a shell can
/// export, `[A-Za-z_][A-Za-z0-9_]*` (at most 255 characters).
pub fn validate_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && name.len() <= 255 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not an environment variable name a shell can export: letters, digits and _, not starting with a digit (e.g. API_KEY)"
        ))
    }
}

fn schedule(
    faults: &mut Faults<'_>,
    key: &str,
    app: &str,
    name: &str,
    raw: &Spanned<RawSchedule>,
    functions: &BTreeMap<String, Spanned<RawFunction>>,
) -> Option<ScheduleSpec> {
    let before = faults.list.len();
    let s = raw.get_ref();
    let function = s.function.get_ref().clone();
    if !functions.contains_key(&function) {
        let known: Vec<&str> = functions.keys().map(String::as_str).collect();
        faults.push(
            s.function.span(),
            Some(format!("{key}.function")),
            format!(
                "the app has no function {function:?} (it has: {})",
                known.join(", ")
            ),
        );
    }
    let timezone = s
        .timezone
        .as_ref()
        .map_or_else(|| "UTC".to_string(), |t| t.get_ref().clone());
    if let Some(t) = &s.timezone {
        if let Err(e) = cron::zone(t.get_ref()) {
            faults.push(t.span(), Some(format!("{key}.timezone")), e);
        }
    }
    let when = match (&s.cron, &s.every) {
        (Some(c), None) => match Cron::parse(c.get_ref()) {
            Ok(_) => Some(When::Cron(c.get_ref().clone())),
            Err(e) => {
                // Point at the faulty field inside the string (after the opening quote).
                let mut span = c.span();
                if let Some(n) = e.field {
                    let expr = c.get_ref();
                    let fields: Vec<usize> = expr
                        .char_indices()
                        .filter(|(i, ch)| {
                            !ch.is_whitespace()
                                && (*i == 0 || expr[..*i].ends_with(char::is_whitespace))
                        })
                        .map(|(i, _)| i)
                        .collect();
                    let with_seconds = fields.len() == 6;
                    let index = if with_seconds {
                        n - 1
                    } else {
                        n.saturating_sub(1)
                    };
                    if let Some(offset) = fields.get(index) {
                        span.start += 1 + offset;
                    }
                }
                faults.push(
                    span,
                    Some(format!("{key}.cron")),
                    format!("invalid cron expression: {e}"),
                );
                None
            }
        },
        (None, Some(every)) => match duration::parse(every.get_ref()) {
            Ok(d) if d.as_millis() >= 1_000 => Some(When::EveryMs(d.as_millis() as u64)),
            Ok(_) => {
                faults.push(
                    every.span(),
                    Some(format!("{key}.every")),
                    "the period must be at least 1s".into(),
                );
                None
            }
            Err(e) => {
                faults.push(every.span(), Some(format!("{key}.every")), e.to_string());
                None
            }
        },
        (Some(_), Some(every)) => {
            faults.push(
                every.span(),
                Some(key.to_string()),
                "give either `cron` or `every`, not both".into(),
            );
            None
        }
        (None, None) => {
            faults.push(
                raw.span(),
                Some(key.to_string()),
                "a schedule needs `cron = \"…\"` or `every = \"15m\"`".into(),
            );
            None
        }
    };
    let overlap = match s.overlap.as_ref().map(|o| o.get_ref().as_str()) {
        None | Some("allow") => Overlap::Allow,
        Some("skip") => Overlap::Skip,
        Some(other) => {
            if let Some(o) = &s.overlap {
                faults.push(
                    o.span(),
                    Some(format!("{key}.overlap")),
                    format!("{other:?} is not \"skip\" or \"allow\""),
                );
            }
            Overlap::Allow
        }
    };
    let input = match &s.input {
        None => serde_json::Value::Null,
        Some(v) => serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
    };
    if faults.list.len() > before {
        return None;
    }
    Some(ScheduleSpec {
        app: app.to_string(),
        name: name.to_string(),
        function,
        when: when?,
        timezone,
        input,
        overlap,
    })
}

fn notify_rule(
    faults: &mut Faults<'_>,
    key: &str,
    raw: &Spanned<RawNotify>,
    functions: &BTreeMap<String, Spanned<RawFunction>>,
) -> Option<NotifyRule> {
    let before = faults.list.len();
    let r = raw.get_ref();
    let mut on = Vec::new();
    for event in r.on.get_ref() {
        match NotifyOn::parse(event) {
            Some(e) => on.push(e),
            None => faults.push(
                r.on.span(),
                Some(format!("{key}.on")),
                format!("unknown event {event:?} (expected failed, timed_out, schedule_missed or recovered)"),
            ),
        }
    }
    if r.on.get_ref().is_empty() {
        faults.push(
            r.on.span(),
            Some(format!("{key}.on")),
            "list at least one event".into(),
        );
    }
    let named: Vec<String> = r
        .functions
        .as_ref()
        .map(|f| f.get_ref().clone())
        .unwrap_or_default();
    for f in &named {
        if !functions.contains_key(f) {
            if let Some(span) = r.functions.as_ref().map(|f| f.span()) {
                faults.push(
                    span,
                    Some(format!("{key}.functions")),
                    format!("the app has no function {f:?}"),
                );
            }
        }
    }
    if let Some(w) = &r.webhook {
        let url = w.get_ref();
        let host = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("");
        if host.is_empty() {
            faults.push(
                w.span(),
                Some(format!("{key}.webhook")),
                "the webhook must be an http:// or https:// URL".into(),
            );
        }
    }
    let email: Vec<String> = r
        .email
        .as_ref()
        .map(|e| e.get_ref().clone())
        .unwrap_or_default();
    for address in &email {
        let valid = address
            .split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
        if !valid {
            if let Some(span) = r.email.as_ref().map(|e| e.span()) {
                faults.push(
                    span,
                    Some(format!("{key}.email")),
                    format!("{address:?} is not an e-mail address"),
                );
            }
        }
    }
    if r.webhook.is_none() && email.is_empty() {
        faults.push(
            raw.span(),
            Some(key.to_string()),
            "give a channel: `webhook = \"https://…\"` or `email = [\"ops@example.com\"]`".into(),
        );
    }
    let quiet_ms = match &r.quiet {
        None => DEFAULT_QUIET_MS,
        Some(q) => match duration::parse(q.get_ref()) {
            Ok(d) => d.as_millis() as u64,
            Err(e) => {
                faults.push(q.span(), Some(format!("{key}.quiet")), e.to_string());
                0
            }
        },
    };
    if faults.list.len() > before {
        return None;
    }
    Some(NotifyRule {
        on,
        functions: named,
        webhook: r.webhook.as_ref().map(|w| w.get_ref().clone().into()),
        email,
        quiet_ms,
    })
}

fn scaling(faults: &mut Faults<'_>, key: &str, f: &RawFunction) -> ScalingPolicy {
    let mut count = |field: &str, value: &Option<Spanned<i64>>| -> Option<u32> {
        let v = value.as_ref()?;
        if (0..=MAX_WORKERS as i64).contains(v.get_ref()) {
            Some(*v.get_ref() as u32)
        } else {
            faults.push(
                v.span(),
                Some(format!("{key}.{field}")),
                format!("must be between 0 and {MAX_WORKERS}, not {}", v.get_ref()),
            );
            None
        }
    };
    let min = count("min_workers", &f.min_workers);
    let max = count("max_workers", &f.max_workers);
    let buffer = count("buffer_workers", &f.buffer_workers);
    let defaults = ScalingPolicy::default();
    let min_workers = min.unwrap_or(defaults.min_workers);
    // By default a function fans out: as many local workers as its backlog needs, up to the
    // machine's cores (a map is for parallel work).
    let max_workers = max.unwrap_or(min_workers.max(default_max_workers()));
    if max == Some(0) {
        if let Some(v) = &f.max_workers {
            faults.push(
                v.span(),
                Some(format!("{key}.max_workers")),
                "must be at least 1".into(),
            );
        }
    }
    if min_workers > max_workers {
        if let Some(v) = f.min_workers.as_ref().or(f.max_workers.as_ref()) {
            faults.push(
                v.span(),
                Some(format!("{key}.min_workers")),
                format!("min_workers ({min_workers}) is more than max_workers ({max_workers})"),
            );
        }
    }
    let scaledown_window_ms = match &f.scaledown_window {
        None => defaults.scaledown_window_ms,
        Some(w) => match duration::parse(w.get_ref()) {
            Ok(d) => d.as_millis() as u64,
            Err(e) => {
                faults.push(
                    w.span(),
                    Some(format!("{key}.scaledown_window")),
                    e.to_string(),
                );
                0
            }
        },
    };
    ScalingPolicy {
        min_workers,
        max_workers,
        buffer_workers: buffer.unwrap_or(0),
        scaledown_window_ms,
    }
}

fn retry_policy(faults: &mut Faults<'_>, key: &str, raw: &Spanned<RawRetries>) -> RetryPolicy {
    let span = raw.span();
    let mut policy = RetryPolicy::default();
    let mut set_retries = |faults: &mut Faults<'_>, n: i64| {
        if (0..=MAX_RETRIES as i64).contains(&n) {
            policy.max_retries = n as u32;
        } else {
            faults.push(
                span.clone(),
                Some(format!("{key}.max_retries")),
                format!("must be between 0 and {MAX_RETRIES}, not {n}"),
            );
        }
    };
    match raw.get_ref() {
        RawRetries::Count(n) => set_retries(faults, *n),
        RawRetries::Policy(p) => {
            if let Some(n) = p.max_retries {
                set_retries(faults, n);
            }
            if let Some(c) = p.backoff_coefficient {
                if c.is_finite() && (1.0..=100.0).contains(&c) {
                    policy.backoff_coefficient = c;
                } else {
                    faults.push(
                        span.clone(),
                        Some(format!("{key}.backoff_coefficient")),
                        format!("must be between 1.0 and 100.0, not {c}"),
                    );
                }
            }
            for (field, value, slot) in [
                (
                    "initial_delay",
                    &p.initial_delay,
                    &mut policy.initial_delay_ms,
                ),
                ("max_delay", &p.max_delay, &mut policy.max_delay_ms),
            ] {
                if let Some(text) = value {
                    match duration::parse(text) {
                        Ok(d) => *slot = d.as_millis() as u64,
                        Err(e) => {
                            faults.push(span.clone(), Some(format!("{key}.{field}")), e.to_string())
                        }
                    }
                }
            }
            if policy.max_delay_ms < policy.initial_delay_ms {
                faults.push(
                    span,
                    Some(format!("{key}.max_delay")),
                    "max_delay is shorter than initial_delay".into(),
                );
            }
        }
    }
    policy
}

/// Removes `.` and resolves `..` lexically, so stored paths are tidy without touching the disk.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

struct Faults<'a> {
    text: &'a str,
    list: Vec<ManifestFault>,
}

impl Faults<'_> {
    fn push(&mut self, span: Range<usize>, key: Option<String>, message: String) {
        let (line, column) = line_column(self.text, span.start);
        self.list.push(ManifestFault {
            line,
            column,
            key,
            message,
        });
    }

    /// Every fault, in the order of the text.
    fn into_error(mut self, file: &str) -> ManifestError {
        self.list.sort_by_key(|f| (f.line, f.column));
        ManifestError {
            file: file.to_string(),
            faults: self.list,
        }
    }
}

/// serde's names of Rust types in an error, said plainly: `expected i64` → `expected an
/// integer`.
fn plain_types(message: &str) -> String {
    [
        ("expected i64", "expected an integer"),
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a boolean", "expected true or false"),
        (
            "expected struct RawLimits",
            "expected a table of limits, such as limits = { max_running = 10 }",
        ),
        (
            "expected struct RawBatch",
            "expected a table, such as batch = { max_size = 64, wait = \"50ms\" }",
        ),
    ]
    .iter()
    .fold(message.to_string(), |text, (from, to)| {
        text.replace(from, to)
    })
}

/// The key whose value starts at `offset`, under the table it is in (`functions.f.retries`
/// for `retries = "many"` below `[functions.f]`), for an error serde reports without it.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset.min(text.len()))?;
    // The line of the key: this one, or for a value over several lines (an array) the last
    // line before it with a `=`, unless a table header comes first.
    let mut end = before.len();
    let start = loop {
        let start = before[..end].rfind('\n').map_or(0, |i| i + 1);
        let line = before[start..end].trim();
        if line.contains('=') {
            break start;
        }
        if start == 0 || (line.starts_with('[') && line.ends_with(']')) {
            return None;
        }
        end = start - 1;
    };
    let (key, _) = before.get(start..)?.split_once('=')?;
    let key = key.trim().trim_matches('"');
    if key.is_empty() {
        return None;
    }
    let table = before[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    Some(match table {
        Some(table) if !table.is_empty() => format!("{table}.{key}"),
        _ => key.to_string(),
    })
}

/// Type faults read in one manifest at most (a file of nothing but faults stops there).
const MAX_TYPE_FAULTS: usize = 100;

/// The manifest's tables, or `None` with every value of the wrong type in `faults`: serde
/// stops at the first, so after each the lines of the value at fault are made comments and the
/// rest is read again. A comment of the same length keeps every later span pointing into
/// `text`. Values checked after the types (ranges, crons, names) are checked once the types
/// are right: a value left out here would only make faults of its own.
fn deserialize(faults: &mut Faults<'_>, text: &str) -> Option<RawManifest> {
    let mut read = text.as_bytes().to_vec();
    let before = faults.list.len();
    for _ in 0..MAX_TYPE_FAULTS {
        let current = std::str::from_utf8(&read).ok()?;
        let err = match toml::from_str::<RawManifest>(current) {
            Ok(raw) => return (faults.list.len() == before).then_some(raw),
            Err(err) => err,
        };
        let message = plain_types(err.message());
        // A field made a comment is missing now: it was said already.
        let missing_again = message.starts_with("missing field") && faults.list.len() > before;
        if missing_again {
            return None;
        }
        let span = err.span().unwrap_or(0..0);
        faults.push(span.clone(), key_at(text, span.start), message);
        if span.is_empty() || !comment_out(&mut read, span) {
            return None;
        }
        // What is left must still be TOML (a value cut out of a multi-line array may not be).
        let left = std::str::from_utf8(&read).ok()?;
        toml::de::DeTable::parse(left).ok()?;
    }
    None
}

/// Makes every line that `span` touches a comment of the same length (`#` then spaces).
/// Returns false when there is nothing left to comment out.
fn comment_out(text: &mut [u8], span: Range<usize>) -> bool {
    let end = span.end.min(text.len());
    let start = text[..span.start.min(end)]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let end = text[end..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(text.len(), |i| end + i);
    if text[start..end].first() == Some(&b'#') {
        return false;
    }
    let mut line_start = true;
    for byte in &mut text[start..end] {
        if *byte == b'\n' {
            line_start = true;
            continue;
        }
        *byte = if line_start { b'#' } else { b' ' };
        line_start = false;
    }
    true
}

/// One-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
app = "quickstart"

[functions.greet]
command = ["python3", "greet.py"]
timeout = "60s"
retries = { max_retries = 3, backoff_coefficient = 2.0, initial_delay = "1s", max_delay = "60s" }
concurrency = 4
env = { GREETING = "hello" }
workdir = "scripts/.."

[functions.fail]
command = ["sh", "-c", "exit 1"]
retries = 2
"#;

    fn parse_ok(text: &str) -> AppManifest {
        parse("hopper.toml", text, Path::new("/srv/app")).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse("hopper.toml", text, Path::new("/srv/app"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn limits_and_priority_resolve_and_bad_ones_name_their_key() {
        let app = parse_ok(
            "app = \"a\"\n[functions.f]\ncommand = [\"x\"]\npriority = 5\n\
             [functions.f.limits]\nkey = \"/tenant\"\nmax_running = 10\nmax_running_per_key = 2\n\
             rate = \"3000/m\"\nrate_per_key = \"5/s\"\n",
        );
        let f = &app.functions[0];
        assert_eq!(f.priority, 5);
        assert_eq!(f.limits.key.as_deref(), Some("/tenant"));
        assert_eq!(f.limits.max_running, Some(10));
        assert_eq!(f.limits.max_running_per_key, Some(2));
        assert_eq!(
            f.limits.rate.map(|r| r.to_string()).as_deref(),
            Some("3000/m")
        );
        assert_eq!(f.limits.rate_per_key.map(|r| r.period_ms), Some(1000));
        let err = parse_err(
            "app = \"a\"\n[functions.f]\ncommand = [\"x\"]\npriority = 5000\n\
             limits = { max_running = 0, max_running_per_key = -2, rate = \"5/fortnight\", key = \"tenant\" }\n",
        );
        for expected in [
            "functions.f.priority: a priority is between -1000 and 1000, not 5000",
            "functions.f.limits.max_running: must be between 1 and 1000000, not 0",
            "functions.f.limits.max_running_per_key: must be between 1 and 1000000, not -2",
            "functions.f.limits.rate: rate \"5/fortnight\"",
            "functions.f.limits.key: the key is a JSON pointer",
        ] {
            assert!(err.contains(expected), "{expected} missing from {err}");
        }
        let err = parse_err(
            "app = \"a\"\n[functions.f]\ncommand = [\"x\"]\nlimits = { max_runing = 1 }\n",
        );
        assert!(err.contains("did you mean `max_running`"), "{err}");
    }

    #[test]
    fn a_full_manifest_resolves_every_field() {
        let m = parse_ok(GOOD);
        assert_eq!(m.app, "quickstart");
        let greet = m.functions.iter().find(|f| f.name == "greet").unwrap();
        assert_eq!(greet.command, ["python3", "greet.py"]);
        assert_eq!(greet.timeout_ms, 60_000);
        assert_eq!(greet.retries.max_retries, 3);
        assert_eq!(greet.retries.max_delay_ms, 60_000);
        assert_eq!(greet.concurrency, 4);
        assert_eq!(greet.env["GREETING"], "hello");
        assert_eq!(greet.workdir, "/srv/app");
        let fail = m.functions.iter().find(|f| f.name == "fail").unwrap();
        assert_eq!(fail.retries.max_retries, 2);
        assert_eq!(fail.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(fail.concurrency, 1);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_and_what_is_expected() {
        let text = "app = \"a\"\n[functions.f]\ncommand = [\"true\"]\nretries = \"many\"\n";
        let err = parse_err(text);
        assert!(
            err.starts_with("hopper.toml:4:11: functions.f.retries: expected a number of retries (retries = 3) or a policy")
                && err.contains("not the string \"many\""),
            "{err}"
        );
        let err =
            parse_err(&text.replace("retries = \"many\"", "retries = { max_retries = \"3\" }"));
        assert!(
            err.contains("functions.f.retries: invalid type: string \"3\", expected an integer"),
            "{err}"
        );
        let err = parse_err(&text.replace("retries = \"many\"", "concurrency = \"four\""));
        assert!(
            err.starts_with(
                "hopper.toml:4:15: functions.f.concurrency: invalid type: string \"four\""
            ),
            "{err}"
        );
    }

    #[test]
    fn every_value_of_the_wrong_type_is_reported_at_once_in_line_order() {
        let text = "app = \"a\"\n[functions.f]\ncommand = [\"true\"]\nretries = \"many\"\n\
                    timeout = 60\nconcurrency = \"4\"\n\
                    [functions.g]\ncommand = [\n  \"sh\",\n  7,\n]\nmax_workers = -1.5\n";
        let err = parse_err(text);
        let lines: Vec<&str> = err.lines().collect();
        let at: Vec<&str> = lines.iter().filter_map(|l| l.split(": ").nth(1)).collect();
        assert_eq!(
            at,
            [
                "functions.f.retries",
                "functions.f.timeout",
                "functions.f.concurrency",
                "functions.g.command",
                "functions.g.max_workers"
            ],
            "{err}"
        );
        assert!(lines[0].starts_with("hopper.toml:4:11: "), "{err}");
        assert!(lines[3].starts_with("hopper.toml:10:3: "), "{err}");
        assert!(lines[4].starts_with("hopper.toml:12:15: "), "{err}");
        // A required field of the wrong type is not said to be missing as well.
        let err = parse_err("app = \"a\"\n[functions.f]\ncommand = \"true\"\ntimeout = 5\n");
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(!err.contains("missing"), "{err}");
    }

    #[test]
    fn a_bad_value_names_file_line_and_key() {
        let text = "app = \"a\"\n[functions.f]\ncommand = [\"true\"]\ntimeout = \"60x\"\n";
        let err = parse_err(text);
        assert!(
            err.starts_with("hopper.toml:4:11: functions.f.timeout: invalid duration \"60x\""),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_position() {
        let err = parse_err("app = \"a\"\n[functions.f]\ncommand = [\"true\"]\ntimout = \"1s\"\n");
        assert!(err.starts_with("hopper.toml:4:1:"), "{err}");
        assert!(err.contains("timout"), "{err}");
    }

    #[test]
    fn broken_toml_is_refused_with_its_position() {
        let err = parse_err("app = \"a\"\n[functions.f\n");
        assert!(err.starts_with("hopper.toml:2:"), "{err}");
    }

    #[test]
    fn every_fault_is_reported_together() {
        let err = parse_err("app = \"Bad App\"\n[functions.f]\ncommand = []\nconcurrency = 0\n");
        assert_eq!(err.lines().count(), 3, "{err}");
        assert!(err.contains(":1:7: app: invalid app name"), "{err}");
        assert!(
            err.contains("functions.f.command: the command is empty"),
            "{err}"
        );
        assert!(
            err.contains("functions.f.concurrency: must be between 1 and"),
            "{err}"
        );
    }

    #[test]
    fn ten_mistakes_of_every_kind_are_reported_at_once_in_line_order() {
        let text = r#"app = "Shop"
[functions.resize]
comand = ["python3", "resize.py"]
timout = "60s"
concurency = 4
retries = { max_retries = 3, inital_delay = "1s" }
batch = { max_size = 0, wait = "50ms" }
[functions.embed]
serve = ["python3", "embed.py"]
timeout = "60x"
max_workers = -1
[schedules.nightly]
function = "resize"
cron = "0 3 * 13 *"
timezone = "Mars/Olympus"
[[notify]]
on = ["failed"]
webhok = "https://hooks.example.com/x"
"#;
        let err = parse_err(text);
        let lines: Vec<&str> = err.lines().collect();
        let expected = [
            "hopper.toml:1:7: app: invalid app name",
            "hopper.toml:3:1: functions.resize.comand: unknown key `comand` (did you mean `command`?)",
            "hopper.toml:4:1: functions.resize.timout: unknown key `timout` (did you mean `timeout`?)",
            "hopper.toml:5:1: functions.resize.concurency: unknown key `concurency` (did you mean `concurrency`?)",
            "hopper.toml:6:30: functions.resize.retries.inital_delay: unknown key `inital_delay` (did you mean `initial_delay`?)",
            "hopper.toml:7:",
            "hopper.toml:10:11: functions.embed.timeout: invalid duration \"60x\"",
            "hopper.toml:11:",
            "hopper.toml:14:15: schedules.nightly.cron: invalid cron expression: field 4 (month)",
            "hopper.toml:15:12: schedules.nightly.timezone: unknown time zone",
            "hopper.toml:18:1: notify[0].webhok: unknown key `webhok` (did you mean `webhook`?)",
        ];
        let mut missing = Vec::new();
        for want in expected {
            if !lines.iter().any(|l| l.starts_with(want)) {
                missing.push(want);
            }
        }
        assert!(missing.is_empty(), "missing {missing:#?} in:\n{err}");
        let positions: Vec<(usize, usize)> = lines
            .iter()
            .map(|l| {
                let mut parts = l.split(':').skip(1);
                (
                    parts.next().unwrap().parse().unwrap(),
                    parts.next().unwrap().parse().unwrap(),
                )
            })
            .collect();
        let mut sorted = positions.clone();
        sorted.sort();
        assert_eq!(positions, sorted, "in line order:\n{err}");
    }

    #[test]
    fn a_serve_function_with_batching_and_scaling_resolves() {
        let m = parse_ok(
            "app = \"a\"\n[functions.embed]\nserve = [\"python3\", \"embed_server.py\"]\nconcurrency = 16\nbatch = { max_size = 64, wait = \"50ms\" }\nmin_workers = 0\nmax_workers = 8\nbuffer_workers = 1\nscaledown_window = \"60s\"\n",
        );
        let f = &m.functions[0];
        assert_eq!(f.serve, ["python3", "embed_server.py"]);
        assert!(f.command.is_empty());
        assert_eq!(
            f.batch,
            Some(BatchPolicy {
                max_size: 64,
                wait_ms: 50
            })
        );
        assert_eq!(
            f.scaling,
            ScalingPolicy {
                min_workers: 0,
                max_workers: 8,
                buffer_workers: 1,
                scaledown_window_ms: 60_000
            }
        );
        assert_eq!(f.slots(), 16 * 64);
    }

    #[test]
    fn batching_needs_serve_and_scaling_must_be_consistent() {
        let err = parse_err("app = \"a\"\n[functions.f]\ncommand = [\"x\"]\nbatch = { max_size = 0, wait = \"1s\" }\nmin_workers = 3\nmax_workers = 2\n");
        assert!(
            err.contains("functions.f.batch: batching needs a long-lived process"),
            "{err}"
        );
        assert!(
            err.contains("functions.f.batch.max_size: must be between 1"),
            "{err}"
        );
        assert!(
            err.contains("min_workers (3) is more than max_workers (2)"),
            "{err}"
        );
        let both = parse_err("app = \"a\"\n[functions.f]\ncommand = [\"x\"]\nserve = [\"y\"]\n");
        assert!(both.contains("not both"), "{both}");
    }

    #[test]
    fn schedules_resolve_and_a_bad_cron_names_its_field() {
        let ok = parse_ok(
            "app = \"a\"\n[functions.report]\ncommand = [\"x\"]\n[schedules.nightly]\nfunction = \"report\"\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Berlin\"\ninput = { day = \"yesterday\" }\n[schedules.often]\nfunction = \"report\"\nevery = \"15m\"\noverlap = \"skip\"\n",
        );
        assert_eq!(ok.schedules.len(), 2);
        let nightly = ok.schedules.iter().find(|s| s.name == "nightly").unwrap();
        assert_eq!(nightly.when, When::Cron("0 3 * * *".into()));
        assert_eq!(nightly.input, serde_json::json!({"day": "yesterday"}));
        let often = ok.schedules.iter().find(|s| s.name == "often").unwrap();
        assert_eq!(
            (often.when.clone(), often.overlap),
            (When::EveryMs(900_000), Overlap::Skip)
        );
        let err = parse_err("app = \"a\"\n[functions.f]\ncommand = [\"x\"]\n[schedules.s]\nfunction = \"f\"\ncron = \"0 25 * * *\"\ntimezone = \"Mars/Base\"\n");
        assert!(err.contains("hopper.toml:6:11: schedules.s.cron: invalid cron expression: field 2 (hour) \"25\""), "{err}");
        assert!(
            err.contains("schedules.s.timezone: unknown time zone \"Mars/Base\""),
            "{err}"
        );
        let err = parse_err("app = \"a\"\n[functions.f]\ncommand = [\"x\"]\n[schedules.s]\nfunction = \"g\"\nevery = \"1m\"\n");
        assert!(
            err.contains("schedules.s.function: the app has no function \"g\""),
            "{err}"
        );
    }

    #[test]
    fn notify_rules_resolve_and_bad_ones_are_refused() {
        let ok = parse_ok("app = \"a\"\n[functions.f]\ncommand = [\"x\"]\n[[notify]]\non = [\"failed\", \"recovered\"]\nfunctions = [\"f\"]\nwebhook = \"https://hooks.example.com/T/B\"\nemail = [\"ops@example.com\"]\nquiet = \"1m\"\n");
        assert_eq!(ok.notify.len(), 1);
        assert_eq!(ok.notify[0].on, [NotifyOn::Failed, NotifyOn::Recovered]);
        assert_eq!(ok.notify[0].quiet_ms, 60_000);
        let err = parse_err("app = \"a\"\n[functions.f]\ncommand = [\"x\"]\n[[notify]]\non = [\"exploded\"]\nwebhook = \"ftp://x\"\nemail = [\"nobody\"]\n");
        assert!(
            err.contains("notify[0].on: unknown event \"exploded\""),
            "{err}"
        );
        assert!(
            err.contains("notify[0].webhook: the webhook must be an http"),
            "{err}"
        );
        assert!(
            err.contains("notify[0].email: \"nobody\" is not an e-mail address"),
            "{err}"
        );
    }

    #[test]
    fn missing_command_and_missing_functions_are_refused() {
        assert!(parse_err("app = \"a\"\n[functions.f]\ntimeout = \"1s\"\n")
            .contains("`command` is missing"));
        assert!(parse_err("app = \"a\"\n").contains("declares no functions"));
        assert!(parse_err("[functions.f]\ncommand=[\"x\"]\n").contains("app"));
    }
}
