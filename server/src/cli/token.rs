//! The admin token: every admin route (`/consolidate`, `/metrics`,
//! `/admin/*`) needs it, on any network. `etracker start` takes
//! `ETRACKER_ADMIN_TOKEN`, or else the one in `<data dir>/admin.token`,
//! which it writes (mode 0600) the first time; the commands that call a
//! running tracker read the same two places.

use std::io::Write;
use std::path::{Path, PathBuf};

use ucanto::cli::{explain, BoxError};

/// The file the token is kept in, in the data directory.
pub(crate) const TOKEN_FILE: &str = "admin.token";

/// The token `etracker start` serves with: `given` (refused when empty),
/// else the data directory's file, made with a fresh random token when
/// there is none.
pub(crate) fn for_start(given: Option<&str>, data_dir: &Path) -> Result<String, BoxError> {
    let path = data_dir.join(TOKEN_FILE);
    if let Some(token) = given {
        let hint = format!(
            "Unset it, and etracker keeps a random one in {}; or set a long random value.",
            path.display()
        );
        return checked(token)
            .map(str::to_string)
            .map_err(|why| explain("ETRACKER_ADMIN_TOKEN cannot be used", &hint)(why));
    }
    let unusable = || {
        explain(
            format!("the admin token in {} cannot be used", path.display()),
            "Write a long random value in it, or delete it and etracker writes one.",
        )
    };
    std::fs::create_dir_all(data_dir).map_err(explain(
        format!("cannot create the data directory {}", data_dir.display()),
        super::batches::DATA_DIR_HINT,
    ))?;
    if let Some(token) = read(&path).map_err(unusable())? {
        return Ok(token);
    }
    let token = fresh();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(&path)
        .and_then(|mut file| file.write_all(format!("{token}\n").as_bytes()));
    match written {
        Ok(()) => Ok(token),
        // Another process wrote it first: theirs is the token.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path)
            .map_err(unusable())?
            .ok_or_else(|| unusable()("the file is empty".into())),
        Err(e) => Err(explain(
            format!("cannot write the admin token to {}", path.display()),
            "Pass a directory you can write to (--data-dir, ETRACKER_DATA_DIR), or set ETRACKER_ADMIN_TOKEN.",
        )(e)),
    }
}

/// The token a command sends: `given`, else the one in `file` (the data
/// directory's by default), else none.
pub(crate) fn for_client(given: Option<&str>, file: Option<&Path>) -> Option<String> {
    if let Some(token) = given.filter(|t| checked(t).is_ok()) {
        return Some(token.to_string());
    }
    let default = default_file();
    read(file.unwrap_or(&default)).ok().flatten()
}

/// `<data dir>/admin.token`, the data directory as `etracker start` takes
/// it by default (`ETRACKER_DATA_DIR`, else `etracker-data`).
pub(crate) fn default_file() -> PathBuf {
    std::env::var_os("ETRACKER_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etracker-data"))
        .join(TOKEN_FILE)
}

/// Why `token` cannot be the admin token, if it cannot.
fn checked(token: &str) -> Result<&str, &'static str> {
    if token.trim().is_empty() {
        Err("it is empty, which would let anyone in")
    } else if token.trim() != token {
        Err("it starts or ends with white space")
    } else {
        Ok(token)
    }
}

/// The token in `path`: `None` when the file does not exist.
fn read(path: &Path) -> Result<Option<String>, BoxError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(checked(text.trim())?.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// 32 random bytes, in hex.
fn fresh() -> String {
    let mut bytes = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("etracker-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = for_start(None, &dir).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(
            for_start(None, &dir).unwrap(),
            first,
            "kept across restarts"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            for_client(None, Some(&dir.join(TOKEN_FILE))).as_deref(),
            Some(first.as_str())
        );
        assert_eq!(for_start(Some("given"), &dir).unwrap(), "given");
        for empty in ["", "  "] {
            let error = for_start(Some(empty), &dir).unwrap_err().to_string();
            assert!(error.contains("it is empty"), "{error}");
        }
        std::fs::write(dir.join(TOKEN_FILE), "\n").unwrap();
        assert!(for_start(None, &dir).is_err(), "an empty file is refused");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
