//! The data directory's absolute path, taken out of text a tenant reads. Provider and
//! host lines in an environment's log name files under it (`using new workspace
//! /srv/tether/.codebolt/environments/dev`, `environment running resource=…`); where
//! the host keeps things is the admins' (as `workspacePath` is), so a user's token
//! reads such a line with `<data-dir>` in place of that path.

use std::path::Path;

/// What stands for the data directory in text a tenant reads.
pub(crate) const DATA_DIR_MARK: &str = "<data-dir>";

/// Replaces the data directory's path in JSON text.
#[derive(Debug, Clone)]
pub(crate) struct HiddenDataDir {
    /// The path as it appears inside a JSON string (escaped, without the quotes).
    escaped: String,
}

impl HiddenDataDir {
    /// For `data_dir` (absolute, canonical); `None` for `/`, which every path starts
    /// with and which hides nothing.
    pub(crate) fn new(data_dir: &Path) -> Option<Self> {
        let text = data_dir.to_string_lossy();
        let text = text.trim_end_matches('/');
        if text.is_empty() {
            return None;
        }
        let quoted = serde_json::to_string(text).ok()?;
        let escaped = quoted.get(1..quoted.len() - 1)?.to_owned();
        Some(Self { escaped })
    }

    /// `line` (one JSON object) with every mention of the data directory replaced.
    pub(crate) fn hide(&self, line: &str) -> String {
        line.replace(&self.escaped, DATA_DIR_MARK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_dir_is_replaced_as_json_escapes_it() {
        let hidden = HiddenDataDir::new(Path::new("/srv/te\"ther/")).expect("a data dir");
        let line = serde_json::json!({"message": "using /srv/te\"ther/.codebolt/environments/dev"});
        assert_eq!(
            hidden.hide(&line.to_string()),
            r#"{"message":"using <data-dir>/.codebolt/environments/dev"}"#
        );
        assert!(HiddenDataDir::new(Path::new("/")).is_none());
    }
}
