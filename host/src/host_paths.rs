//! The data directory's absolute path, taken out of text a tenant reads. Provider and
//! host lines in an environment's log name files under it (`using new workspace
//! /srv/tether/.codebolt/environments/dev`, `environment running resource=…`), and so
//! may a failed start's `lastError` (`creating workspace /srv/…: …`). Where the host
//! keeps things is the admins' (as `workspacePath` is), so a user's token reads such
//! text with `<data-dir>` in place of that path.

use std::path::Path;

/// What stands for the data directory in text a tenant reads.
pub(crate) const DATA_DIR_MARK: &str = "<data-dir>";

/// Replaces the data directory's path in text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HiddenDataDir {
    /// The path as it is.
    plain: String,
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
        Some(Self {
            plain: text.to_owned(),
            escaped,
        })
    }

    /// `line` (one JSON object) with every mention of the data directory replaced.
    pub(crate) fn hide_in_json(&self, line: &str) -> String {
        line.replace(&self.escaped, DATA_DIR_MARK)
    }

    /// `text` with every mention of the data directory replaced.
    pub(crate) fn hide(&self, text: &str) -> String {
        text.replace(&self.plain, DATA_DIR_MARK)
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
            hidden.hide_in_json(&line.to_string()),
            r#"{"message":"using <data-dir>/.codebolt/environments/dev"}"#
        );
        assert_eq!(hidden.hide("in /srv/te\"ther/x"), "in <data-dir>/x");
        assert!(HiddenDataDir::new(Path::new("/")).is_none());
    }
}
