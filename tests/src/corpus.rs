//! The validation corpus: bootstrap files under `tests/corpus/validate/`, each opening with
//! comment lines that say what it exercises and where Envoy documents it. A file's name states
//! Envoy's verdict (`ok-*` accepted, `err-*` refused). Files in `known-differences/` are ones
//! Envoy accepts and Outrigger deliberately refuses; they add `# difference: <why>` and
//! `# field: <the path Outrigger's error must name>`.

use std::fs;
use std::path::{Path, PathBuf};

/// One corpus file and what its header says.
#[derive(Debug, Clone)]
pub struct CorpusFile {
    pub path: PathBuf,
    /// The file name, for reports.
    pub name: String,
    /// The first comment line: what the file exercises.
    pub about: String,
    /// Envoy's verdict as recorded in the name: `Some(true)` for `ok-`, `Some(false)` for `err-`.
    pub expect_ok: Option<bool>,
    /// `# difference: ...`
    pub difference: Option<String>,
    /// `# field: ...`
    pub field: Option<String>,
    /// `# outrigger: accepts`: a known difference the other way round, where Outrigger is more
    /// lenient than Envoy (a limit Outrigger cannot reproduce).
    pub outrigger_accepts: bool,
    /// Every `# ` header line, for checks on the header itself.
    pub header: Vec<String>,
}

/// `tests/corpus/<name>` of this crate.
pub fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name)
}

/// The `.yaml`, `.yml` and `.json` files directly in `dir`, sorted by name.
pub fn list(dir: &Path) -> Vec<CorpusFile> {
    let entries = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read corpus directory {}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
        })
        .collect();
    paths.sort();
    paths.into_iter().map(|p| read(&p)).collect()
}

fn read(path: &Path) -> CorpusFile {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read corpus file {}: {e}", path.display()));
    let header: Vec<String> = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim().to_string())
        .collect();
    let tagged = |tag: &str| {
        header
            .iter()
            .find_map(|l| l.strip_prefix(tag).map(|v| v.trim().to_string()))
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let expect_ok = if name.starts_with("ok-") {
        Some(true)
    } else if name.starts_with("err-") {
        Some(false)
    } else {
        None
    };
    CorpusFile {
        path: path.to_path_buf(),
        about: header.first().cloned().unwrap_or_default(),
        expect_ok,
        difference: tagged("difference:"),
        field: tagged("field:"),
        outrigger_accepts: tagged("outrigger:").as_deref() == Some("accepts"),
        header,
        name,
    }
}

impl CorpusFile {
    /// The Envoy documentation page the header cites.
    pub fn doc_url(&self) -> Option<&str> {
        self.header
            .iter()
            .find(|l| l.starts_with("https://www.envoyproxy.io/docs/"))
            .map(String::as_str)
    }
}
