//! Printing: JSON for `--json` and pipes, short human lines otherwise.

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// Writes one line to stdout at once (results stream to a pipe or a file as they come). A
/// closed stdout (its reader went away, as in `hopper calls | head -2`) ends the command
/// quietly with exit code 0, as `ls | head` does.
pub fn line(text: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_fmt(text)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(crate::exit::Code::Internal as i32);
    }
}

/// Prints a value as JSON on one line.
pub fn json<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(text) => crate::output::line(format_args!("{text}")),
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}

/// Prints a JSON value the way a person reads it on a terminal, compact on a pipe.
pub fn value(value: &serde_json::Value) {
    let text = if std::io::stdout().is_terminal() {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    match text {
        Ok(text) => crate::output::line(format_args!("{text}")),
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}

/// Pads a table's columns to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == cells.len() {
                    c.to_string()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        crate::output::line(format_args!("{}", parts.join("  ").trim_end()));
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
