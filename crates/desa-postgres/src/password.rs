//! The database password, kept out of argv: when the connection string
//! holds none, a worker takes it, in this order, from
//! `--store-password-file` (the file's first line), from `PGPASSWORD`, or
//! from libpq's password file (`PGPASSFILE`, else `~/.pgpass`): the first
//! line `host:port:database:user:password` that matches, `*` matching
//! anything and `\:`/`\\` escaping. As libpq does, a password file that its
//! group or others may read is ignored, with a warning.

use std::path::{Path, PathBuf};

use postgres::config::Host;

use crate::error::{Error, Result};

/// Fills in `config`'s password from the sources above, if it has none.
pub(crate) fn fill(config: &mut postgres::Config, password_file: Option<&Path>) -> Result<()> {
    if config.get_password().is_some() {
        return Ok(());
    }
    if let Some(path) = password_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "reading --store-password-file {}: {e}",
                path.display()
            ))
        })?;
        config.password(text.lines().next().unwrap_or("").as_bytes());
        return Ok(());
    }
    if let Ok(p) = std::env::var("PGPASSWORD") {
        config.password(p.as_bytes());
        return Ok(());
    }
    let Some(file) = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))
    else {
        return Ok(());
    };
    let Ok(meta) = std::fs::metadata(&file) else {
        return Ok(());
    };
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %file.display(),
            "password file ignored: its group or others may read it (chmod 0600)"
        );
        return Ok(());
    }
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Error::Config(format!("reading {}: {e}", file.display())))?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or("").to_owned();
    let db = config.get_dbname().unwrap_or(&user).to_owned();
    if let Some(p) = lookup(&text, [&host, &port, &db, &user]) {
        config.password(p.as_bytes());
    }
    Ok(())
}

/// The password of the first line of a password file matching `want`
/// (host, port, database, user).
fn lookup(text: &str, want: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let fields = split(l);
            (fields.len() == 5).then_some(fields)
        })
        .find(|f| {
            f[..4]
                .iter()
                .zip(want)
                .all(|(field, want)| field == "*" || field == want)
        })
        .map(|f| f[4].clone())
}

/// The fields of a password-file line, unescaped.
fn split(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields
                .last_mut()
                .into_iter()
                .for_each(|f| f.extend(chars.next())),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().into_iter().for_each(|f| f.push(c)),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_line_matches_as_libpqs_does() {
        let text = "# comment\n\
                    db.example:5432:other:desa:nope\n\
                    127.0.0.1:*:postgres:desa:p\\:w\\\\d\n\
                    *:*:*:*:fallback\n";
        assert_eq!(
            lookup(text, ["127.0.0.1", "55432", "postgres", "desa"]).as_deref(),
            Some("p:w\\d")
        );
        assert_eq!(
            lookup(text, ["db.example", "5432", "desa", "desa"]).as_deref(),
            Some("fallback")
        );
        assert_eq!(lookup("h:1:d:u\n", ["h", "1", "d", "u"]), None);
    }
}
