//! Transcripts recorded from etcd 3.5 (`engram-conformance record`), compared with the
//! endpoint's transcripts when there is no `--reference`.
//!
//! One file per case, `<dir>/<group>/<case>.txt`: the normalised answers the case got
//! (see `normalize.rs`), one per line. Lines starting with `#` are comments (the first
//! one says where and when it was recorded). The files in `conformance/expectations/`
//! are embedded in the binary at build time; `--expectations DIR` reads others.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/recorded.rs"));
}

/// Recorded transcripts by (group, case).
#[derive(Clone, Default)]
pub struct Expectations {
    cases: BTreeMap<(String, String), Vec<String>>,
}

fn lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

impl Expectations {
    /// The recordings built into this binary.
    pub fn embedded() -> Expectations {
        let cases = embedded::RECORDED
            .iter()
            .map(|(g, c, text)| ((g.to_string(), c.to_string()), lines(text)))
            .collect();
        Expectations { cases }
    }

    /// Reads `<dir>/<group>/<case>.txt`.
    pub fn load(dir: &Path) -> Result<Expectations> {
        let mut cases = BTreeMap::new();
        for g in std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
            let g = g?;
            if !g.path().is_dir() {
                continue;
            }
            for f in std::fs::read_dir(g.path())? {
                let p = f?.path();
                if p.extension().is_some_and(|e| e == "txt") {
                    let text = std::fs::read_to_string(&p)
                        .with_context(|| format!("read {}", p.display()))?;
                    let case = p
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let group = g.file_name().to_string_lossy().into_owned();
                    cases.insert((group, case), lines(&text));
                }
            }
        }
        Ok(Expectations { cases })
    }

    pub fn get(&self, group: &str, case: &str) -> Option<Vec<String>> {
        self.cases
            .get(&(group.to_string(), case.to_string()))
            .cloned()
    }
}

/// The text of a recording file.
pub fn render(group: &str, case: &str, source: &str, transcript: &[String]) -> String {
    let mut s = format!(
        "# engram-conformance transcript of {group}/{case}, recorded from {source}\n\
         # (re-record: engram-conformance record --endpoint URL --out conformance/expectations)\n"
    );
    for l in transcript {
        let _ = writeln!(s, "{l}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{RECORDED_GROUPS, registry};

    #[test]
    fn every_recorded_group_case_has_a_recording() {
        let exp = Expectations::embedded();
        let missing: Vec<String> = registry()
            .iter()
            .filter(|c| RECORDED_GROUPS.contains(&c.group))
            .filter(|c| exp.get(c.group, c.name).is_none_or(|t| t.is_empty()))
            .map(|c| format!("{}/{}", c.group, c.name))
            .collect();
        assert!(
            missing.is_empty(),
            "no etcd 3.5 recording for {missing:?}: run `engram-conformance record`"
        );
    }

    #[test]
    fn render_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let t = vec!["put a: rev=B+1 prev=[]".to_string(), "#x".to_string()];
        std::fs::create_dir(dir.path().join("g")).unwrap();
        std::fs::write(
            dir.path().join("g/c.txt"),
            render("g", "c", "etcd 3.5.1", &t),
        )
        .unwrap();
        let e = Expectations::load(dir.path()).unwrap();
        // A transcript line starting with `#` would be lost: normalised lines never do.
        assert_eq!(e.get("g", "c"), Some(vec![t[0].clone()]));
    }
}
