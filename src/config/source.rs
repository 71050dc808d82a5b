//! The config's text and the files it names: reading them, bounded.

use std::path::Path;

use super::ConfigError;

/// Reads a file named by the config (see `read_named_file` for the
/// bound), or says which one could not be read.
pub(super) fn read_file(path: &Path) -> Result<String, ConfigError> {
    doorman_gate_api::section::read_named_file(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })
}
