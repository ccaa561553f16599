//! Embeds the transcripts recorded from etcd 3.5 (`expectations/<group>/<case>.txt`) in
//! the binary, so that `engram-conformance` compares with them wherever it runs.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("expectations");
    println!("cargo:rerun-if-changed=expectations");
    let mut files = Vec::new();
    if let Ok(groups) = std::fs::read_dir(&dir) {
        for g in groups.flatten().filter(|e| e.path().is_dir()) {
            for f in std::fs::read_dir(g.path()).into_iter().flatten().flatten() {
                let p = f.path();
                if p.extension().is_some_and(|e| e == "txt") {
                    let group = g.file_name().to_string_lossy().into_owned();
                    let case = p
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    files.push((group, case, p));
                }
            }
        }
    }
    files.sort();
    let mut out = String::from("pub static RECORDED: &[(&str, &str, &str)] = &[\n");
    for (group, case, p) in files {
        let _ = writeln!(
            out,
            "    ({group:?}, {case:?}, include_str!({:?})),",
            p.to_string_lossy()
        );
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("recorded.rs");
    std::fs::write(dest, out).expect("write recorded.rs");
}
