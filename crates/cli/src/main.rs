//! `hopper`: the one binary. Parses arguments, runs the command, prints the error chain and
//! maps it to a documented exit code.
//!
//! # Layout
//! - [`args`]: the command line, as clap parses it.
//! - [`exit`]: exit codes and the error that carries one.
//! - [`output`]: printing for people and for `--json`.
//! - `commands/`: one module per subcommand.

mod args;
mod commands;
mod exit;
mod output;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // The guard a worker puts between itself and each command (`hopper_worker::guard`).
    let mut raw = std::env::args_os().skip(1);
    if raw.next().is_some_and(|a| a == hopper_worker::guard::ARG) {
        hopper_worker::guard::main(raw.collect());
    }
    let cli = args::Cli::parse();
    if let Some(file) = cli
        .ca_cert
        .as_ref()
        .filter(|f| std::fs::File::open(f).is_err())
    {
        eprintln!(
            "error: --ca-cert {} (or HOPPER_CA_CERT): cannot read it; give a PEM file of the CA certificates to trust",
            file.display()
        );
        return exit::Code::Usage.into();
    }
    if let Some(file) = &cli.ca_cert {
        // Where every client of this process and of the processes it starts reads it (see
        // `hopper_sdk::Client::new`), as an absolute path: a worker's functions run in another
        // folder. Set before any other thread runs.
        let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        std::env::set_var("HOPPER_CA_CERT", file);
    }
    if cli.log_format == args::LogFormat::Json {
        // Read by `commands::init_logging`, here and in the workers a server starts.
        std::env::set_var("HOPPER_LOG_FORMAT", "json");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::Code::Internal.into();
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code.into(),
        Err(e) => {
            let code = exit::code_of(&e);
            eprintln!("error: {e:#}");
            code.into()
        }
    }
}
