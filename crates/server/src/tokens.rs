//! Tokens from a file (`hopper serve --token-file FILE`), which an operator changes while the
//! servers run: one token a line, `name:scopes:token` (scopes comma-separated from `read`,
//! `submit`, `work`, `admin`; the name says whose it is, in logs and in messages); blank lines
//! and lines starting with `#` are skipped. The file is read again on SIGHUP and when it
//! changes ([`crate::reload`]): a token added works, a token removed stops working, without a
//! restart. A file that does not parse is refused at start, and a reload that does not parse
//! keeps the tokens read before (and says where the file is wrong).

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::config::{constant_time_eq, Scope};

/// One token of the file.
struct Named {
    name: String,
    scopes: Vec<Scope>,
    token: String,
}

/// The tokens of a token file, as last read.
pub struct TokenFile {
    path: PathBuf,
    tokens: RwLock<Vec<Named>>,
}

impl std::fmt::Debug for TokenFile {
    /// The path and the tokens' names, never the tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.read().iter().map(|t| t.name.clone()).collect();
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("names", &names)
            .finish()
    }
}

impl TokenFile {
    /// Reads the file; the error names the file, the line and what is wrong there.
    pub fn load(path: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o007 != 0 {
                tracing::warn!(file = %path.display(), "every user of this machine can read the token file; chmod 600 it");
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            tokens: RwLock::new(parse(path)?),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Named>> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the file again; keeps the tokens read before when it does not parse.
    pub fn reload(&self, why: &str) {
        match parse(&self.path) {
            Ok(fresh) => {
                let names: Vec<String> = fresh.iter().map(|t| t.name.clone()).collect();
                *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                tracing::info!(file = %self.path.display(), ?names, why, "read the token file again");
            }
            Err(e) => {
                tracing::warn!(error = %e, why, "cannot read the token file again; the tokens read before still hold")
            }
        }
    }

    /// The scopes of a presented token, if it is one of the file's.
    pub fn scopes_of(&self, presented: &str) -> Option<Vec<Scope>> {
        self.find(|token| constant_time_eq(presented.as_bytes(), token.as_bytes()))
    }

    /// The scopes of the token whose dashboard session value is `session`.
    pub fn scopes_of_session(&self, session: &str) -> Option<Vec<Scope>> {
        self.find(|token| {
            constant_time_eq(
                session.as_bytes(),
                crate::api::session::session_value(token).as_bytes(),
            )
        })
    }

    fn find(&self, matches: impl Fn(&str) -> bool) -> Option<Vec<Scope>> {
        self.read()
            .iter()
            .find(|t| matches(&t.token))
            .map(|t| t.scopes.clone())
    }

    /// Every token of the file now, in the file's order.
    pub fn tokens(&self) -> Vec<String> {
        self.read().iter().map(|t| t.token.clone()).collect()
    }
}

fn parse(path: &Path) -> Result<Vec<Named>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {shown}: cannot read it: {e}"))?;
    let mut tokens: Vec<Named> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("--token-file {shown} line {}", i + 1);
        let mut parts = line.splitn(3, ':');
        let (Some(name), Some(scopes), Some(token)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "{at}: expected name:scopes:token, e.g. ci:submit,read:s3cret"
            ));
        };
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(format!(
                "{at}: the name {name:?} must be letters, digits, '-', '_', '.' or '@'"
            ));
        }
        let scopes = scopes
            .split(',')
            .map(|s| {
                Scope::parse(s.trim()).ok_or_else(|| {
                    format!("{at}: unknown scope {s:?} (expected read, submit, work or admin)")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token = token.trim();
        if token.len() < 8 {
            return Err(format!(
                "{at}: the token of {name} is shorter than 8 characters"
            ));
        }
        if let Some(other) = tokens.iter().find(|t| t.name == name || t.token == token) {
            let what = if other.name == name { "name" } else { "token" };
            return Err(format!(
                "{at}: {name} has the {what} of {} again",
                other.name
            ));
        }
        tokens.push(Named {
            name: name.to_string(),
            scopes,
            token: token.to_string(),
        });
    }
    Ok(tokens)
}
