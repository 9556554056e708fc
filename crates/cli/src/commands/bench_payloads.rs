//! `hopper bench --scenario payloads`: bytes through blobs. A 100 MiB file uploaded, spawned
//! through a command that returns its input (the worker fetches it and stores it back), and
//! its output downloaded, each leg timed; then `--inputs` byte strings of 1 MiB (default
//! 1,000) uploaded and mapped through a batched `serve` function. The server's resident
//! memory is read before (idle) and after (its peak), so a blob that was held whole in memory
//! shows.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hopper_core::api::{DeployRequest, MapRequest};
use serde::Serialize;
use serde_json::Value;

use super::bench::{Cluster, Figures};

/// The single blob's size.
const BIG: u64 = 100 * 1024 * 1024;
/// Each mapped input's size.
const EACH: usize = 1024 * 1024;

/// What the payloads scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct PayloadFigures {
    /// Megabytes (10^6 bytes) a second for the 100 MiB blob: client to server, through the
    /// worker and back (spawn to result), and server to client.
    pub upload_mb_per_s: f64,
    pub round_trip_mb_per_s: f64,
    pub download_mb_per_s: f64,
    /// The 1 MiB inputs: uploaded and mapped, megabytes a second over the whole.
    pub map_inputs: u64,
    pub map_mb_per_s: f64,
    /// The server's resident memory when idle, and its peak by the end.
    pub idle_rss_bytes: u64,
    pub peak_rss_bytes: u64,
}

fn rss(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024)
}

fn mb_per_s(bytes: u64, took: Duration) -> f64 {
    (bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9) * 10.0).round() / 10.0
}

/// Bytes that hash differently for every `seed`.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub async fn payloads(map_inputs: u64) -> anyhow::Result<Figures> {
    let server = Cluster::start()?;
    let clients = server.clients().await?;
    let client = clients[0].clone();
    let pid = server.pid();
    let exe = std::env::current_exe().context("cannot find this program")?;
    client
        .deploy(&DeployRequest {
            manifest: format!(
                "app = \"pay\"\n[functions.echo]\ncommand = [\"cat\"]\ntimeout = \"10m\"\n\
                 [functions.sink]\nserve = [{exe:?}, \"bench-serve\"]\nbatch = {{ max_size = 16, wait = \"5ms\" }}\nmax_workers = 1\n",
                exe = exe.display().to_string(),
            ),
            file: "<bench>".into(),
            base_dir: "/".into(),
            snapshot: None,
            snapshot_root: None,
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss(pid, "VmRSS:");
    let dir = tempfile::tempdir().context("cannot create a temporary folder")?;
    let file = dir.path().join("big.bin");
    std::fs::write(&file, noise(BIG as usize, 1)).context("cannot write the test file")?;

    let t = Instant::now();
    let reference = client.blob_put_file(&file).await?;
    let upload = t.elapsed();
    let t = Instant::now();
    let call = client
        .remote("pay.echo", reference, Duration::from_secs(600))
        .await?;
    let round_trip = t.elapsed();
    let Some(digest) = call
        .output
        .as_ref()
        .and_then(|o| o.get(hopper_core::blob::KEY))
        .and_then(Value::as_str)
    else {
        bail!(
            "payloads: pay.echo ended {:?}: {:?}",
            call.state,
            call.error
        );
    };
    let t = Instant::now();
    let got = client
        .blob_get_file(digest, &dir.path().join("back.bin"))
        .await?;
    let download = t.elapsed();
    if got != BIG {
        bail!("payloads: {got} bytes came back, not {BIG}");
    }

    let t = Instant::now();
    let mut refs = Vec::with_capacity(map_inputs as usize);
    for i in 0..map_inputs {
        refs.push(client.blob_put(noise(EACH, 10 + i)).await?);
    }
    let call = client
        .map_start(
            "pay.sink",
            &MapRequest {
                inputs: refs,
                done: true,
                ..Default::default()
            },
        )
        .await?;
    let done = client.wait(&call.id, Duration::from_secs(3600)).await?;
    if done.state != hopper_core::CallState::Succeeded {
        bail!("payloads: the map ended {:?}: {:?}", done.state, done.error);
    }
    let map_took = t.elapsed();
    let peak = rss(pid, "VmHWM:");

    let took = upload + round_trip + download + map_took;
    let mut out = super::bench::figures("payloads", 1 + map_inputs, took, Vec::new(), &server);
    out.payloads = Some(PayloadFigures {
        upload_mb_per_s: mb_per_s(BIG, upload),
        round_trip_mb_per_s: mb_per_s(BIG, round_trip),
        download_mb_per_s: mb_per_s(BIG, download),
        map_inputs,
        map_mb_per_s: mb_per_s(map_inputs * EACH as u64, map_took),
        idle_rss_bytes: idle,
        peak_rss_bytes: peak,
    });
    server.finish().await;
    Ok(out)
}

/// Prints the payloads scenario's figures under the main table.
pub fn print(f: &PayloadFigures) {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1_048_576.0);
    crate::output::line(format_args!(
        "\npayloads: a 100 MiB blob, MB/s: upload {:.1}, spawn to result through a command that returns it {:.1}, download {:.1}; {} inputs of 1 MiB uploaded and mapped through a batched function: {:.1} MB/s; server RSS idle {}, peak {} (+{})",
        f.upload_mb_per_s,
        f.round_trip_mb_per_s,
        f.download_mb_per_s,
        f.map_inputs,
        f.map_mb_per_s,
        mib(f.idle_rss_bytes),
        mib(f.peak_rss_bytes),
        mib(f.peak_rss_bytes.saturating_sub(f.idle_rss_bytes)),
    ));
}
