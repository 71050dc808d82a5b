//! The config's text and the files it names: reading them (bounded), and
//! finding the line a key is on, for `FILE:LINE` errors.

use std::path::Path;

use super::ConfigError;

/// The largest file a config may name (a list, a table, the config).
const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// Reads a file named by the config, or says which one could not be read.
/// Only regular files up to [`MAX_FILE_SIZE`] are read, so a config that
/// names `/dev/zero` or a huge file fails instead of hanging.
pub(super) fn read_file(path: &Path) -> Result<String, ConfigError> {
    let fail = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(fail)?;
    if !metadata.is_file() || metadata.len() > MAX_FILE_SIZE {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file of at most {MAX_FILE_SIZE} bytes"),
        )));
    }
    std::fs::read_to_string(path).map_err(fail)
}

/// The 1-based line of byte `offset` in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The 1-based line where `key` is set in `[table]` (or `[[table]]`), or
/// the table's own line, or 1.
pub(super) fn line_in_table(text: &str, table: &str, key: &str) -> usize {
    let mut current = "";
    let mut header = None;
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.starts_with('[') {
            current = line.trim_matches(|c| c == '[' || c == ']').trim();
            if current == table {
                header.get_or_insert(index + 1);
            }
            continue;
        }
        let named = line
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if current == table && named {
            return index + 1;
        }
    }
    header.unwrap_or(1)
}

/// The first line that mentions `key`, for checks that run after parsing.
pub(super) fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| line.split('#').next().unwrap_or_default().contains(key))
        .map_or(1, |index| index + 1)
}
