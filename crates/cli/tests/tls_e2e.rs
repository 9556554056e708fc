//! HTTPS with a private CA, end to end: the server serves the certificate `openssl` made for it
//! (and a renewed one after SIGHUP), the CLI, a remote worker and the Python SDK trust the CA
//! from `--ca-cert`, `HOPPER_CA_CERT` or `SSL_CERT_FILE` and nothing else, and the server's own
//! local workers run behind it. Skips without `openssl`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// A CA, and a certificate for 127.0.0.1 it signed, with its key, in `dir`.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pki(dir: &Path, name: &str) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
            &["-subj", &format!("/CN={name} Test CA")],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
            &["-subj", "/CN=127.0.0.1"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// The CLI against `url` with `env` (and no CA unless it says so).
fn cli_with(url: &str, env: &[(&str, &Path)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("HOPPER_SERVER", url)
        .env_remove("HOPPER_CA_CERT")
        .env_remove("SSL_CERT_FILE")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .unwrap()
}

fn has_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_private_ca_from_the_cli_a_worker_and_python() {
    if !has_openssl() {
        println!("SKIP: no openssl to make a CA with");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let one = pki(&dir.path().join("one"), "One");
    let m = manifest(
        dir.path(),
        "app = \"t\"\n[functions.echo]\ncommand = [\"cat\"]\n",
    );
    let tls = [
        "--tls-cert",
        one.cert.to_str().unwrap(),
        "--tls-key",
        one.key.to_str().unwrap(),
    ];
    // Local workers: the server's own, behind its HTTPS.
    let local = Server::start(
        &dir.path().join("local"),
        &[&tls[..], &["--deploy", m.to_str().unwrap()]].concat(),
    );
    assert!(local.url.starts_with("https://127.0.0.1:"), "{}", local.url);

    // Trusting only the public roots, the CLI refuses the server's certificate.
    let out = cli_with(&local.url, &[], &["calls"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).to_lowercase().contains("certificate") && stderr(&out).contains("--ca-cert"),
        "{}",
        stderr(&out)
    );
    // A CA file that is not there is a mistake in the command, named as such.
    let out = cli_with(
        &local.url,
        &[],
        &["calls", "--ca-cert", "/nonexistent/ca.pem"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--ca-cert /nonexistent/ca.pem"),
        "{}",
        stderr(&out)
    );
    // Plain HTTP to the HTTPS port gets nothing.
    let plain = local.url.replacen("https://", "http://", 1);
    assert_ne!(cli_with(&plain, &[], &["calls"]).status.code(), Some(0));

    // The CA from the flag, HOPPER_CA_CERT or SSL_CERT_FILE: spawn, and the local worker runs it.
    let ca = ["--ca-cert", one.ca.to_str().unwrap()];
    let out = cli_with(
        &local.url,
        &[],
        &[&["spawn", "t.echo", "--input", "\"hi\""][..], &ca].concat(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    for variable in ["HOPPER_CA_CERT", "SSL_CERT_FILE"] {
        let out = cli_with(&local.url, &[(variable, &one.ca)], &["get", &id]);
        assert_eq!(out.status.code(), Some(0), "{variable}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "\"hi\"", "{variable}");
    }

    // A remote worker trusts the CA from its flag.
    let remote = Server::start(
        &dir.path().join("remote"),
        &[&tls[..], &["--deploy", m.to_str().unwrap(), "--no-workers"]].concat(),
    );
    let _worker = Worker(
        Command::new(BIN)
            .args(["worker", "--server", &remote.url, "--function", "t.echo"])
            .args(ca)
            .env_remove("HOPPER_CA_CERT")
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let out = cli_with(
        &remote.url,
        &[("HOPPER_CA_CERT", &one.ca)],
        &["spawn", "t.echo", "--input", "\"remote\""],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let id = stdout(&out).trim().to_string();
    let out = cli_with(&remote.url, &[("HOPPER_CA_CERT", &one.ca)], &["get", &id]);
    assert_eq!(stdout(&out).trim(), "\"remote\"", "{}", stderr(&out));

    // The Python SDK trusts HOPPER_CA_CERT too.
    if std::env::var("HOPPER_TEST_PYTHON").is_ok() {
        let out = Command::new("python3")
            .args([
                "-c",
                "import hopper, sys; print(hopper.Client(sys.argv[1]).function('t.echo').remote('py'))",
                &remote.url,
            ])
            .env("HOPPER_CA_CERT", &one.ca)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "py");
    }

    // A renewed certificate, from another CA, is served after SIGHUP without a restart.
    let two = pki(&dir.path().join("two"), "Two");
    std::fs::copy(&two.cert, &one.cert).unwrap();
    std::fs::copy(&two.key, &one.key).unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &remote.pid().to_string()])
        .status()
        .unwrap()
        .success());
    eventually(
        "the renewed certificate is served",
        Duration::from_secs(20),
        || async {
            let out = cli_with(&remote.url, &[("HOPPER_CA_CERT", &two.ca)], &["calls"]);
            (out.status.code() == Some(0)).then_some(())
        },
    )
    .await;
    let out = cli_with(&remote.url, &[("HOPPER_CA_CERT", &one.ca)], &["calls"]);
    assert_ne!(out.status.code(), Some(0), "the old CA no longer fits");
}

#[test]
fn a_certificate_that_cannot_be_read_is_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("cert.pem");
    std::fs::write(&bad, "not a certificate\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .args(["--tls-cert", bad.to_str().unwrap(), "--tls-key"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--tls-cert"), "{}", stderr(&out));
    assert!(stderr(&out).contains("cert.pem"), "{}", stderr(&out));
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--tls-key"), "{}", stderr(&out));
}
