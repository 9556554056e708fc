//! `hopper secrets`: set, list and delete named secrets.

use std::collections::BTreeMap;
use std::path::Path;

use super::client;
use crate::args::{ClientArgs, SecretAction};
use crate::exit::{self, Code};
use crate::output;

pub async fn run(args: &ClientArgs, action: Option<SecretAction>) -> anyhow::Result<Code> {
    let client = client(args)?;
    match action.unwrap_or(SecretAction::List) {
        SecretAction::List => {
            let list = client.secrets().await?;
            if args.json {
                output::json(&list);
                return Ok(Code::Ok);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.keys.join(", "),
                        s.updated_at.clone(),
                        if s.used_by.is_empty() {
                            "-".into()
                        } else {
                            s.used_by.join(", ")
                        },
                    ]
                })
                .collect();
            output::table(&["SECRET", "KEYS", "UPDATED", "USED BY"], &rows);
        }
        SecretAction::Set {
            name,
            values,
            from_dotenv,
        } => {
            hopper_core::function::validate_name(&name, "secret")
                .map_err(|e| exit::usage(e.to_string()))?;
            let mut all = match &from_dotenv {
                Some(path) => read_dotenv(path)?,
                None => BTreeMap::new(),
            };
            for (i, pair) in values.iter().enumerate() {
                // Never echoed: an argument without '=' may be a pasted value.
                let (key, value) = pair.split_once('=').ok_or_else(|| {
                    exit::usage(format!(
                        "value argument {} has no '=': give each as KEY=VALUE",
                        i + 1
                    ))
                })?;
                all.insert(key.to_string(), value.to_string());
            }
            if all.is_empty() {
                return Err(exit::usage(
                    "give the secret's values as KEY=VALUE arguments or with --from-dotenv FILE (- for stdin)",
                ));
            }
            let view = client.secret_put(&name, all).await?;
            if args.json {
                output::json(&view);
            } else {
                output::line(format_args!(
                    "secret {} set: {}",
                    view.name,
                    view.keys.join(", ")
                ));
            }
        }
        SecretAction::Reseal => {
            let done = client.secrets_reseal().await?;
            if args.json {
                output::json(&done);
            } else {
                output::line(format_args!(
                    "{} secrets sealed again with the first key of HOPPER_SECRET_KEY",
                    done.resealed
                ));
            }
            if !done.unreadable.is_empty() {
                return Err(exit::usage(format!(
                    "no key of the server opens {}: set {} again with `hopper secrets set`",
                    done.unreadable.join(", "),
                    if done.unreadable.len() == 1 {
                        "it"
                    } else {
                        "them"
                    }
                )));
            }
        }
        SecretAction::Delete { name } => {
            hopper_core::function::validate_name(&name, "secret")
                .map_err(|e| exit::usage(e.to_string()))?;
            client.secret_delete(&name).await?;
            if !args.json {
                output::line(format_args!("secret {name} deleted"));
            }
        }
    }
    Ok(Code::Ok)
}

/// `KEY=VALUE` lines of a .env file (or stdin for `-`): blank lines and `#` comments skipped,
/// an `export ` prefix allowed, a value in matching single or double quotes taken as is.
fn read_dotenv(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let (text, source) = super::read_text(path, "values")?;
    parse_dotenv(&text)
        .map_err(|(line, message)| exit::usage(format!("{source}:{line}: {message}")))
}

fn parse_dotenv(text: &str) -> Result<BTreeMap<String, String>, (usize, String)> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((i + 1, "expected KEY=VALUE".into()));
        };
        let value = value.trim();
        let unquoted = ['"', '\'']
            .iter()
            .find_map(|q| {
                value
                    .strip_prefix(*q)
                    .and_then(|v| v.strip_suffix(*q))
                    .filter(|_| value.len() >= 2)
            })
            .unwrap_or(value);
        out.insert(key.trim().to_string(), unquoted.to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dotenv_lines_become_values() {
        let text = "# keys\nexport API_KEY=\"sk=1 2\"\n\nREGION = eu-west-1\nEMPTY=\nQUOTE='x'\n";
        let got = parse_dotenv(text).unwrap();
        assert_eq!(got["API_KEY"], "sk=1 2");
        assert_eq!(got["REGION"], "eu-west-1");
        assert_eq!(got["EMPTY"], "");
        assert_eq!(got["QUOTE"], "x");
        assert_eq!(parse_dotenv("A=1\nnonsense\n").unwrap_err().0, 2);
    }
}
