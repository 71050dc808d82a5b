//! The `[admin]` section, and the admin token file: one word of at least
//! [`MIN_TOKEN_LENGTH`] printable characters, in a file that its owner
//! alone may read. A token file that group or others can read is refused
//! at start-up, at a reload and by `doorman check`, as ssh refuses a private
//! key that others can read: the token changes backends fleet-wide.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;

use super::defaults::default_trusted;
use super::source::read_file;
use super::ConfigError;

/// The shortest admin token taken.
pub const MIN_TOKEN_LENGTH: usize = 16;

/// The `[admin]` section.
#[derive(Clone, Debug, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Where `/metrics`, `/healthz` and the control requests are served;
    /// none: not at all.
    pub address: Option<SocketAddr>,
    /// Where HAProxy's agent check (`agent-check agent-port N`) is
    /// answered: `ready NN%`, `drain` after `doorman drain` and during the
    /// SIGTERM grace, `down` with no backend up; none: not at all.
    pub agent: Option<SocketAddr>,
    /// Networks whose control requests (drain, backends, users) need no
    /// token.
    #[serde(default = "default_trusted")]
    #[schemars(with = "Vec<String>")]
    pub trusted: Vec<ipnet::IpNet>,
    /// A file holding the bearer token that control requests from
    /// elsewhere must carry: one word of at least 16 printable characters,
    /// in a file only its owner may read (`chmod 600`).
    pub token_file: Option<PathBuf>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            address: None,
            agent: None,
            trusted: default_trusted(),
            token_file: None,
        }
    }
}

/// Reads the admin token from `path`; an error names the file and says how
/// to fix it.
pub fn read_token(path: &Path) -> Result<String, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        line: 1,
        message,
    };
    let metadata = std::fs::metadata(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "the admin token file is open to group or others (mode {mode:03o}); \
             it must be readable by doorman's user only: chmod 600 {}",
            path.display()
        )));
    }
    let token = read_file(path)?.trim().to_string();
    if token.is_empty() || token.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(invalid(
            "the admin token must be one word of printable ASCII".into(),
        ));
    }
    if token.len() < MIN_TOKEN_LENGTH {
        return Err(invalid(format!(
            "the admin token has {} characters; it needs at least {MIN_TOKEN_LENGTH} \
             (e.g. `openssl rand -hex 32`)",
            token.len()
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn a_token_is_long_and_private() {
        let (_dir, path) = token_file("0123456789abcdef\n", 0o600);
        assert_eq!(read_token(&path).unwrap(), "0123456789abcdef");
        let (_dir, path) = token_file("0123456789abcdef\n", 0o400);
        assert!(read_token(&path).is_ok(), "read-only for its owner");
        let (_dir, path) = token_file("short\n", 0o600);
        let error = read_token(&path).unwrap_err().to_string();
        assert!(
            error.contains("has 5 characters; it needs at least 16"),
            "{error}"
        );
        for mode in [0o640, 0o604, 0o620] {
            let (_dir, path) = token_file("0123456789abcdef\n", mode);
            let error = read_token(&path).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("{}:1: ", path.display())),
                "{error}"
            );
            assert!(
                error.contains(&format!("chmod 600 {}", path.display())),
                "{error}"
            );
        }
        let (_dir, path) = token_file("two words here!!\n", 0o600);
        assert!(read_token(&path).is_err());
    }
}
