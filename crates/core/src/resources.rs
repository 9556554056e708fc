//! Placement: what a function asks of a machine (GPUs, cores, memory, labels), what a machine
//! has, and whether one fits the other.
//!
//! A function's request is part of its [`FunctionSpec`](crate::FunctionSpec): `gpu`, `cpu`,
//! `memory` and `labels` in the manifest and the Python decorators, with Modal's names. A
//! worker registers its [`Machine`]: what `hopper worker` found (or was told with `--gpus`,
//! `--gpu-kind`, `--cpus`, `--memory` and `--label`). The dispatcher leases a function's
//! inputs only to workers whose machine [`fits`](Machine::fits) its request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most GPUs one function may ask for.
pub const MAX_GPUS: u32 = 64;
/// Most cores one function may ask for.
pub const MAX_CPUS: f64 = 1_024.0;

/// GPUs a function's worker needs: `count` of one kind, the first of `kinds` a machine has
/// enough of (empty: any kind).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuRequest {
    pub count: u32,
    /// Acceptable kinds in order of preference, upper case (`A100`, `H100`, `A100-80GB`);
    /// empty means any GPU.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
}

impl GpuRequest {
    /// As a user writes it: `1`, `any:2`, `A100`, `H100:2`, `H100|A100:2`.
    pub fn describe(&self) -> String {
        let kinds = if self.kinds.is_empty() {
            "any".to_string()
        } else {
            self.kinds.join("|")
        };
        if self.count == 1 {
            kinds
        } else {
            format!("{kinds}:{}", self.count)
        }
    }
}

/// What each worker of a function needs of its machine. Default: nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuRequest>,
    /// Cores, fractional allowed (`0.5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Bytes of memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Labels the worker's machine must have, with these values (`zone = "eu"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Resources {
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

/// One GPU of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// Its index as CUDA numbers it (what `CUDA_VISIBLE_DEVICES` names).
    pub index: u32,
    /// Its kind as `nvidia-smi` names it (`NVIDIA A100-SXM4-80GB`) or as `--gpu-kind` gave it.
    pub kind: String,
    /// Its memory in MiB, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
}

/// What a worker's machine has, as the worker registers it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    /// Cores; none when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Bytes of memory; none when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Machine {
    /// Whether a worker on this machine can run a function asking for `want`; if not, what it
    /// lacks (shown as `needs a GPU of kind H100; this machine has 2 × NVIDIA L4`).
    pub fn fits(&self, want: &Resources) -> Result<(), Misfit> {
        let misfit = |needs: String, has: String| Err(Misfit { needs, has });
        for (key, value) in &want.labels {
            match self.labels.get(key) {
                Some(have) if have == value => {}
                Some(have) => {
                    return misfit(format!("label {key}={value}"), format!("{key}={have}"))
                }
                None => return misfit(format!("label {key}={value}"), format!("no {key} label")),
            }
        }
        if let Some(gpu) = &want.gpu {
            if pick_gpus(&self.gpus, gpu).is_none() {
                return misfit(describe_gpu(gpu), self.describe_gpus());
            }
        }
        if let (Some(want), Some(have)) = (want.cpu, self.cpus) {
            if want > have + 1e-9 {
                return misfit(format!("{want} cores"), have.to_string());
            }
        }
        if let (Some(want), Some(have)) = (want.memory_bytes, self.memory_bytes) {
            if want > have {
                return misfit(
                    format!("{} of memory", format_bytes(want)),
                    format_bytes(have),
                );
            }
        }
        Ok(())
    }

    /// `2 × NVIDIA L4, 1 × A100`, or `no GPU`.
    pub fn describe_gpus(&self) -> String {
        if self.gpus.is_empty() {
            return "no GPU".into();
        }
        let mut kinds: Vec<(&str, usize)> = Vec::new();
        for g in &self.gpus {
            match kinds.iter_mut().find(|(k, _)| *k == g.kind) {
                Some((_, n)) => *n += 1,
                None => kinds.push((&g.kind, 1)),
            }
        }
        kinds
            .iter()
            .map(|(k, n)| format!("{n} × {}", if k.is_empty() { "GPU" } else { k }))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What a machine lacks for a function: `needs` (`a GPU of kind H100`, `label zone=eu`,
/// `8 cores`, `4GiB of memory`) and what it `has` of that (`2 × NVIDIA L4`, `no zone label`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misfit {
    pub needs: String,
    pub has: String,
}

impl std::fmt::Display for Misfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "needs {}; this machine has {}", self.needs, self.has)
    }
}

/// `a GPU`, `2 GPUs of kind H100 or A100`.
pub fn describe_gpu(gpu: &GpuRequest) -> String {
    let what = if gpu.count == 1 {
        "a GPU".to_string()
    } else {
        format!("{} GPUs", gpu.count)
    };
    if gpu.kinds.is_empty() {
        what
    } else {
        format!("{what} of kind {}", gpu.kinds.join(" or "))
    }
}

/// The GPUs of `free` a worker asking for `want` gets: `want.count` of the first acceptable
/// kind with that many free, lowest indexes first; none if no kind has enough.
pub fn pick_gpus(free: &[Gpu], want: &GpuRequest) -> Option<Vec<Gpu>> {
    let any = [String::new()];
    let kinds: &[String] = if want.kinds.is_empty() {
        &any
    } else {
        &want.kinds
    };
    for kind in kinds {
        let mut of_kind: Vec<Gpu> = free
            .iter()
            .filter(|g| kind.is_empty() || kind_matches(kind, g))
            .cloned()
            .collect();
        if of_kind.len() >= want.count as usize {
            of_kind.sort_by_key(|g| g.index);
            of_kind.truncate(want.count as usize);
            return Some(of_kind);
        }
    }
    None
}

/// Whether `gpu` is of the kind a function asked for: `A100` matches `NVIDIA A100-SXM4-80GB`
/// and `A100`, not `A10G`; `A100-80GB` also needs 80 GB (by the GPU's memory where known,
/// else by its name).
pub fn kind_matches(kind: &str, gpu: &Gpu) -> bool {
    let name = gpu.kind.to_ascii_uppercase();
    let kind = kind.to_ascii_uppercase();
    let (base, size) = match kind.rsplit_once('-') {
        Some((base, size))
            if size.ends_with("GB") && size[..size.len() - 2].parse::<u64>().is_ok() =>
        {
            (base.to_string(), Some(size.to_string()))
        }
        _ => (kind.clone(), None),
    };
    let named = name
        .split(|c: char| c.is_whitespace())
        .any(|token| token == kind || token == base || token.starts_with(&format!("{base}-")));
    if !named {
        return false;
    }
    match size {
        None => true,
        Some(size) => {
            let gb: u64 = size[..size.len() - 2].parse().unwrap_or(0);
            match gpu.memory_mib {
                // nvidia-smi counts an "80GB" card as 81,920 MiB; a little less is still 80 GB.
                Some(mib) => mib * 10 >= gb * 1_000 * 9,
                None => name.contains(&size),
            }
        }
    }
}

/// Parses a GPU request as the manifest and the SDK give it: a count (`1`), `any`, a kind
/// (`A100`), a kind and a count (`H100:2`, `any:2`), or a list of kinds in order of preference
/// (`["H100", "A100"]`, each with the same count). Errors say what is wrong, for the caller to
/// prefix with the field.
pub fn parse_gpu(value: &GpuValue<'_>) -> Result<GpuRequest, String> {
    match value {
        GpuValue::Count(n) => {
            if (1..=MAX_GPUS as i64).contains(n) {
                Ok(GpuRequest {
                    count: *n as u32,
                    kinds: Vec::new(),
                })
            } else {
                Err(format!("a GPU count is between 1 and {MAX_GPUS}, not {n}"))
            }
        }
        GpuValue::Text(text) => parse_gpu_text(text),
        GpuValue::List(items) => {
            if items.is_empty() {
                return Err(
                    "the list of GPU kinds is empty: give at least one (e.g. [\"H100\", \"A100\"])"
                        .into(),
                );
            }
            let mut out = GpuRequest {
                count: 0,
                kinds: Vec::new(),
            };
            for item in items {
                let one = parse_gpu_text(item)?;
                if one.kinds.is_empty() {
                    return Err(format!("{item:?} in a list of kinds: name a kind (any GPU is `gpu = \"any\"` alone)"));
                }
                if out.count != 0 && out.count != one.count {
                    return Err(format!(
                        "every kind in the list asks for the same number of GPUs ({} and {} here)",
                        out.count, one.count
                    ));
                }
                out.count = one.count;
                for k in one.kinds {
                    if !out.kinds.contains(&k) {
                        out.kinds.push(k);
                    }
                }
            }
            Ok(out)
        }
    }
}

/// A GPU request before it is checked.
pub enum GpuValue<'a> {
    Count(i64),
    Text(&'a str),
    List(Vec<&'a str>),
}

fn parse_gpu_text(text: &str) -> Result<GpuRequest, String> {
    let (kind, count) = match text.trim().rsplit_once(':') {
        Some((kind, count)) => match count.trim().parse::<i64>() {
            Ok(n) if (1..=MAX_GPUS as i64).contains(&n) => (kind.trim(), n as u32),
            _ => {
                return Err(format!(
                    "{text:?}: the count after `:` is a number between 1 and {MAX_GPUS}"
                ))
            }
        },
        None => (text.trim(), 1),
    };
    if kind.is_empty() {
        return Err(format!(
            "{text:?}: give a kind (A100, H100, L4, …) or \"any\""
        ));
    }
    if kind.parse::<i64>().is_ok() {
        return Err(format!(
            "{text:?}: a count alone is a number, not a string (gpu = {kind})"
        ));
    }
    if !is_kind(kind) {
        return Err(format!(
            "{text:?} is not a GPU kind: letters, digits and `-` (A100, H100, A100-80GB, L4)"
        ));
    }
    let kind = kind.to_ascii_uppercase();
    Ok(GpuRequest {
        count,
        kinds: if kind == "ANY" {
            Vec::new()
        } else {
            vec![kind]
        },
    })
}

/// Whether `text` can name a GPU kind: letters, digits, `-` and `_`, at most 32.
pub fn is_kind(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 32
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Most memory a function may ask for: 1 PiB.
pub const MAX_MEMORY: u64 = 1 << 50;

/// Checks a requested number of cores: more than 0, at most [`MAX_CPUS`].
pub fn check_cpu(cpu: f64) -> Result<f64, String> {
    if cpu.is_finite() && cpu > 0.0 && cpu <= MAX_CPUS {
        Ok(cpu)
    } else {
        Err(format!(
            "cores are more than 0 and at most {MAX_CPUS}, not {cpu}"
        ))
    }
}

/// A memory request: a number of MiB (Modal's unit: `memory = 4096`) or a size with its unit
/// (`"4GiB"`, `"512MiB"`, `"2GB"`). At least 1 MiB.
pub fn parse_memory(value: MemoryValue<'_>) -> Result<u64, String> {
    let bytes = match value {
        MemoryValue::Mib(n) if n > 0 => (n as u64).checked_mul(1 << 20),
        MemoryValue::Mib(n) => return Err(format!("memory is at least 1 (MiB), not {n}")),
        // A bare number in a string would be bytes here and MiB as a number: say which.
        MemoryValue::Text(text) if text.trim().chars().all(|c| c.is_ascii_digit()) => {
            return Err(format!(
                "{text:?} has no unit: give a size (\"4GiB\", \"512MiB\") or a number of MiB (memory = {})",
                text.trim()
            ))
        }
        MemoryValue::Text(text) => match parse_bytes(text) {
            Some(n) => Some(n),
            None => {
                return Err(format!(
                "{text:?} is not a size (expected e.g. \"4GiB\", \"512MiB\", or a number of MiB)"
            ))
            }
        },
    };
    match bytes {
        Some(n) if n > MAX_MEMORY => {
            Err("that much memory is more than any machine has (at most 1PiB)".into())
        }
        Some(n) if n >= 1 << 20 => Ok(n),
        Some(_) => Err("memory is at least 1MiB".into()),
        None => Err("that much memory is more than any machine has (at most 1PiB)".into()),
    }
}

/// A memory request before it is checked.
pub enum MemoryValue<'a> {
    Mib(i64),
    Text(&'a str),
}

/// Bytes from a size with its unit: `4GiB`, `512MiB`, `64KiB`, `2GB`, `1000000` (bytes). None
/// when it is not one, or too large to count.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// `4GiB`, `512MiB`, `1.5GiB`: bytes as a person reads them.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if n >= size {
            let value = n as f64 / size as f64;
            return if n.is_multiple_of(size) {
                format!("{}{unit}", n / size)
            } else {
                format!("{value:.1}{unit}")
            };
        }
    }
    format!("{n}B")
}

/// Checks a label's name and value: a name of letters, digits, `.`, `_`, `-` and `/` (as
/// Kubernetes' label keys), a value of letters, digits, `.`, `_` and `-` (as Kubernetes' label
/// values: no `,` or `=`, which `--label` and `HOPPER_LABELS` split on), each at most 63.
pub fn check_label(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return Err(format!(
            "label name {name:?}: letters, digits, `.`, `_`, `-` and `/`, at most 63"
        ));
    }
    if value.len() > 63
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "label {name}: its value {value:?} is not letters, digits, `.`, `_` and `-`, at most 63"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, kind: &str, memory_mib: Option<u64>) -> Gpu {
        Gpu {
            index,
            kind: kind.into(),
            memory_mib,
        }
    }

    #[test]
    fn gpu_requests_parse_as_modal_writes_them_and_bad_ones_say_why() {
        let p = |v: GpuValue<'_>| parse_gpu(&v);
        assert_eq!(p(GpuValue::Count(1)).unwrap().describe(), "any");
        assert_eq!(
            p(GpuValue::Text("any")).unwrap().kinds,
            Vec::<String>::new()
        );
        assert_eq!(p(GpuValue::Text("h100:2")).unwrap().describe(), "H100:2");
        assert_eq!(
            p(GpuValue::List(vec!["H100", "a100"])).unwrap().kinds,
            vec!["H100", "A100"]
        );
        assert!(p(GpuValue::Count(0))
            .unwrap_err()
            .contains("between 1 and 64"));
        assert!(p(GpuValue::Text("A100:0"))
            .unwrap_err()
            .contains("count after `:`"));
        assert!(p(GpuValue::Text("")).unwrap_err().contains("give a kind"));
        assert!(p(GpuValue::Text("2"))
            .unwrap_err()
            .contains("a count alone"));
        assert!(p(GpuValue::Text("A 100"))
            .unwrap_err()
            .contains("not a GPU kind"));
        assert!(p(GpuValue::List(vec!["H100:2", "A100"]))
            .unwrap_err()
            .contains("same number"));
        assert!(p(GpuValue::List(vec![])).unwrap_err().contains("empty"));
    }

    #[test]
    fn kinds_match_nvidia_names_and_memory() {
        let a100 = gpu(0, "NVIDIA A100-SXM4-80GB", Some(81_920));
        let a100_40 = gpu(1, "NVIDIA A100-PCIE-40GB", Some(40_960));
        let a10g = gpu(2, "NVIDIA A10G", Some(23_028));
        assert!(kind_matches("A100", &a100));
        assert!(kind_matches("a100-80gb", &a100));
        assert!(!kind_matches("A100-80GB", &a100_40));
        assert!(!kind_matches("A100", &a10g));
        assert!(kind_matches("A10G", &a10g));
        assert!(kind_matches("L4", &gpu(3, "L4", None)));
    }

    #[test]
    fn a_machine_fits_what_it_has_and_says_what_it_lacks() {
        let m = Machine {
            gpus: vec![
                gpu(0, "A100", None),
                gpu(1, "A100", None),
                gpu(2, "L4", None),
            ],
            cpus: Some(8.0),
            memory_bytes: Some(16 << 30),
            labels: [("zone".to_string(), "eu".to_string())].into(),
        };
        let want = |gpu: Option<GpuRequest>| Resources {
            gpu,
            ..Default::default()
        };
        let req = |kinds: &[&str], count| GpuRequest {
            count,
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
        };
        assert!(m.fits(&want(Some(req(&["A100"], 2)))).is_ok());
        assert_eq!(
            m.fits(&want(Some(req(&["H100"], 1))))
                .unwrap_err()
                .to_string(),
            "needs a GPU of kind H100; this machine has 2 × A100, 1 × L4"
        );
        let picked = pick_gpus(&m.gpus, &req(&["H100", "L4"], 1)).unwrap();
        assert_eq!(picked[0].index, 2, "the first kind it has enough of");
        assert!(pick_gpus(&m.gpus, &req(&[], 4)).is_none());
        let mut big = want(None);
        big.memory_bytes = Some(32 << 30);
        assert!(m.fits(&big).unwrap_err().to_string().contains("32GiB"));
        let mut us = want(None);
        us.labels.insert("zone".into(), "us".into());
        assert!(m.fits(&us).unwrap_err().to_string().contains("zone=eu"));
        assert!(Machine::default()
            .fits(&want(Some(req(&[], 1))))
            .unwrap_err()
            .has
            .contains("no GPU"));
    }

    #[test]
    fn memory_is_mib_as_a_number_or_a_size() {
        assert_eq!(parse_memory(MemoryValue::Mib(1024)), Ok(1 << 30));
        assert_eq!(parse_memory(MemoryValue::Text("4GiB")), Ok(4 << 30));
        assert!(parse_memory(MemoryValue::Text("4 gigs")).is_err());
        assert!(parse_memory(MemoryValue::Mib(0)).is_err());
        assert!(parse_memory(MemoryValue::Text("10B")).is_err());
        assert_eq!(format_bytes(3 << 29), "1.5GiB");
    }
}
