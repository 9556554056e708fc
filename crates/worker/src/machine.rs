//! What this machine has, for placement: its GPUs (through `nvidia-smi`), cores and memory,
//! found at start-up or told with `--gpus`, `--gpu-kind`, `--cpus`, `--memory` and `--label`
//! (which is also how a test gives a machine GPUs it does not have).

use std::collections::BTreeMap;
use std::time::Duration;

use hopper_core::resources::{check_label, is_kind, parse_bytes, Gpu, Machine, MAX_CPUS};

/// Longest `nvidia-smi` may take to answer; a driver that hangs must not stop a worker starting.
const NVIDIA_SMI_WAIT: Duration = Duration::from_secs(10);

/// What the user said of the machine; each `None` is found instead.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `0,1,2`, each optionally with its kind (`0=A100,1=L4`); `none` for no GPU.
    pub gpus: Option<String>,
    /// The kind of every GPU that `gpus` gives no kind of (or of every GPU found).
    pub gpu_kind: Option<String>,
    /// Cores (`8`, `3.5`).
    pub cpus: Option<String>,
    /// Memory (`64GiB`).
    pub memory: Option<String>,
    /// `key=value` each.
    pub labels: Vec<String>,
}

/// The machine as found and overridden. Errors name the flag and what is wrong with it, one
/// per line.
pub fn resolve(overrides: &Overrides) -> Result<Machine, String> {
    let mut faults = Vec::new();
    // nvidia-smi is asked only for what the flags leave open: GPUs not listed, or the kind
    // and memory of listed ones without a kind (a local worker, told its GPUs with their kinds,
    // starts without asking).
    let needs_detection = match &overrides.gpus {
        None => true,
        Some(list) if matches!(list.trim(), "" | "none") => false,
        Some(list) => overrides.gpu_kind.is_none() && list.split(',').any(|i| !i.contains('=')),
    };
    let found = if needs_detection {
        detect_gpus()
    } else {
        Vec::new()
    };
    let mut gpus = match &overrides.gpus {
        None => found.clone(),
        Some(list) if matches!(list.trim(), "" | "none") => Vec::new(),
        Some(list) => {
            let mut gpus: Vec<Gpu> = Vec::new();
            for item in list.split(',').map(str::trim) {
                let (index, kind) = match item.split_once('=') {
                    Some((i, k)) => (i.trim(), Some(k.trim())),
                    None => (item, None),
                };
                let Ok(index) = index.parse::<u32>() else {
                    faults.push(format!("--gpus (HOPPER_GPUS) {list}: {item:?} is not a GPU index (expected e.g. 0,1 or 0=A100,1=L4, or none)"));
                    continue;
                };
                if gpus.iter().any(|g| g.index == index) {
                    faults.push(format!(
                        "--gpus (HOPPER_GPUS) {list}: GPU {index} is named twice"
                    ));
                    continue;
                }
                if let Some(kind) = kind.filter(|k| !is_kind(k)) {
                    faults.push(format!("--gpus (HOPPER_GPUS) {list}: {kind:?} is not a GPU kind: letters, digits and `-` (A100, L4)"));
                    continue;
                }
                let known = found.iter().find(|g| g.index == index);
                gpus.push(Gpu {
                    index,
                    kind: kind
                        .map(str::to_string)
                        .or_else(|| known.map(|g| g.kind.clone()))
                        .unwrap_or_default(),
                    memory_mib: known.and_then(|g| g.memory_mib),
                });
            }
            gpus
        }
    };
    if let Some(kind) = &overrides.gpu_kind {
        if !is_kind(kind.trim()) {
            faults.push(format!(
                "--gpu-kind (HOPPER_GPU_KIND) {kind:?}: a kind is letters, digits and `-` (A100, H100, L4)"
            ));
        }
        for g in &mut gpus {
            let own_kind = overrides.gpus.as_deref().is_some_and(|list| {
                list.split(',').any(|i| {
                    i.trim()
                        .split_once('=')
                        .is_some_and(|(n, _)| n.trim().parse() == Ok(g.index))
                })
            });
            if !own_kind {
                g.kind = kind.trim().to_string();
            }
        }
    }
    let cpus = match &overrides.cpus {
        None => std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as f64),
        Some(text) => match text.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 && n <= MAX_CPUS => Some(n),
            _ => {
                faults.push(format!(
                    "--cpus (HOPPER_CPUS) {text}: a number of cores more than 0 and at most {MAX_CPUS} (e.g. 8 or 3.5)"
                ));
                None
            }
        },
    };
    let memory_bytes = match &overrides.memory {
        None => total_memory(),
        Some(text) => match parse_bytes(text) {
            Some(n) if n >= 1 << 20 => Some(n),
            _ => {
                faults.push(format!(
                    "--memory (HOPPER_MEMORY) {text}: not a size of at least 1MiB (expected e.g. 64GiB)"
                ));
                None
            }
        },
    };
    let mut labels = BTreeMap::new();
    // An empty item (HOPPER_LABELS="", or "a=1,,b=2") is no label.
    for item in overrides.labels.iter().filter(|i| !i.trim().is_empty()) {
        match item.split_once('=') {
            Some((k, v)) => match check_label(k.trim(), v.trim()) {
                Ok(()) if labels.contains_key(k.trim()) => faults.push(format!(
                    "--label (HOPPER_LABELS) {item}: label {} is given twice",
                    k.trim()
                )),
                Ok(()) => {
                    labels.insert(k.trim().to_string(), v.trim().to_string());
                }
                Err(e) => faults.push(format!("--label (HOPPER_LABELS) {item}: {e}")),
            },
            None => faults.push(format!(
                "--label (HOPPER_LABELS) {item:?}: expected key=value (e.g. zone=eu)"
            )),
        }
    }
    if !faults.is_empty() {
        return Err(faults.join("\n"));
    }
    Ok(Machine {
        gpus,
        cpus,
        memory_bytes,
        labels,
    })
}

/// The GPUs `nvidia-smi` lists; none where it is absent, fails or hangs.
pub fn detect_gpus() -> Vec<Gpu> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=index,name,memory.total",
                "--format=csv,noheader,nounits",
            ])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output();
        let _ = tx.send(out);
    });
    match rx.recv_timeout(NVIDIA_SMI_WAIT) {
        Ok(Ok(out)) if out.status.success() => {
            parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout))
        }
        Ok(Ok(out)) => {
            tracing::warn!(status = %out.status, "nvidia-smi failed: this machine's GPUs are not used (name them with --gpus)");
            Vec::new()
        }
        // No nvidia-smi: no NVIDIA GPU.
        Ok(Err(_)) => Vec::new(),
        Err(_) => {
            tracing::warn!("nvidia-smi did not answer in {NVIDIA_SMI_WAIT:?}: this machine's GPUs are not used (name them with --gpus)");
            Vec::new()
        }
    }
}

/// `0, NVIDIA A100-SXM4-80GB, 81920` lines.
fn parse_nvidia_smi(text: &str) -> Vec<Gpu> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split(',').map(str::trim);
            let index = parts.next()?.parse().ok()?;
            let kind = parts.next()?.to_string();
            let memory_mib = parts.next().and_then(|m| m.parse().ok());
            Some(Gpu {
                index,
                kind,
                memory_mib,
            })
        })
        .collect()
}

/// The memory this process may use: the cgroup's limit where one is set, else the machine's.
fn total_memory() -> Option<u64> {
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
    });
    match (limit, total) {
        (Some(limit), Some(total)) => Some(limit.min(total)),
        (limit, total) => total.or(limit),
    }
}

/// This machine's host name, as workers register it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `CUDA_VISIBLE_DEVICES` for processes that may use `gpus`: their indexes, comma-separated.
pub fn visible_devices(gpus: &[Gpu]) -> String {
    gpus.iter()
        .map(|g| g.index.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_become_gpus() {
        let gpus = parse_nvidia_smi("0, NVIDIA A100-SXM4-80GB, 81920\n1, NVIDIA L4, 23034\n");
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].kind, "NVIDIA L4");
        assert_eq!(gpus[0].memory_mib, Some(81_920));
    }

    #[test]
    fn overrides_name_gpus_and_their_kinds_and_bad_ones_name_the_flag() {
        let m = resolve(&Overrides {
            gpus: Some("0=A100,1=A100,4=L4".into()),
            gpu_kind: Some("T4".into()),
            cpus: Some("3.5".into()),
            memory: Some("8GiB".into()),
            labels: vec!["zone=eu".into()],
        })
        .unwrap();
        assert_eq!(
            m.gpus.iter().map(|g| g.kind.as_str()).collect::<Vec<_>>(),
            ["A100", "A100", "L4"]
        );
        assert_eq!(m.cpus, Some(3.5));
        assert_eq!(m.memory_bytes, Some(8 << 30));
        let m = resolve(&Overrides {
            gpus: Some("0,1".into()),
            gpu_kind: Some("H100".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(visible_devices(&m.gpus), "0,1");
        assert!(m.gpus.iter().all(|g| g.kind == "H100"));
        let err = resolve(&Overrides {
            gpus: Some("0,x,0".into()),
            cpus: Some("-1".into()),
            memory: Some("lots".into()),
            labels: vec!["zone".into()],
            ..Default::default()
        })
        .unwrap_err();
        for flag in [
            "\"x\" is not a GPU index",
            "GPU 0 is named twice",
            "--cpus (HOPPER_CPUS) -1",
            "--memory (HOPPER_MEMORY) lots",
            "--label (HOPPER_LABELS) \"zone\"",
        ] {
            assert!(err.contains(flag), "{flag} in {err}");
        }
        assert!(resolve(&Overrides {
            gpus: Some("none".into()),
            ..Default::default()
        })
        .unwrap()
        .gpus
        .is_empty());
    }
}
