//! Terminal, markdown and JSON reports.

use std::fmt::Write as _;

use crate::runner::{CaseResult, GROUPS};

/// One terminal line per case.
pub fn line(r: &CaseResult) -> String {
    let verdict = if r.passed { "PASS" } else { "FAIL" };
    format!(
        "{verdict} {}/{} ({} ms): {}",
        r.group, r.name, r.millis, r.reason
    )
}

/// (group, passed, failed) for every group that ran, in group order.
pub fn summary(results: &[CaseResult]) -> Vec<(String, usize, usize)> {
    GROUPS
        .iter()
        .filter_map(|g| {
            let rs: Vec<&CaseResult> = results.iter().filter(|r| r.group == *g).collect();
            if rs.is_empty() {
                return None;
            }
            let passed = rs.iter().filter(|r| r.passed).count();
            Some((g.to_string(), passed, rs.len() - passed))
        })
        .collect()
}

pub fn summary_table(results: &[CaseResult]) -> String {
    let mut s = format!(
        "{:<14} {:>6} {:>6} {:>6}\n",
        "group", "pass", "fail", "total"
    );
    let (mut tp, mut tf) = (0, 0);
    for (g, p, f) in summary(results) {
        let _ = writeln!(s, "{g:<14} {p:>6} {f:>6} {:>6}", p + f);
        tp += p;
        tf += f;
    }
    let _ = writeln!(s, "{:<14} {tp:>6} {tf:>6} {:>6}", "all", tp + tf);
    s
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(endpoint: &str, reference: Option<&str>, results: &[CaseResult]) -> String {
    let mut s = String::from("# engram-conformance report\n\n");
    let _ = writeln!(s, "- endpoint: `{endpoint}`");
    match reference {
        Some(r) => {
            let _ = writeln!(s, "- reference: `{r}` (answers compared)");
        }
        None => s.push_str("- reference: none (built-in etcd 3.5 expectations)\n"),
    }
    s.push_str("\n## Summary\n\n| group | pass | fail | total |\n|---|---|---|---|\n");
    for (g, p, f) in summary(results) {
        let _ = writeln!(s, "| {g} | {p} | {f} | {} |", p + f);
    }
    s.push_str("\n## Cases\n\n| result | group | case | ms | reason |\n|---|---|---|---|---|\n");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            if r.passed { "pass" } else { "**FAIL**" },
            r.group,
            r.name,
            r.millis,
            md_cell(&r.reason)
        );
    }
    s
}

#[derive(serde::Serialize)]
struct JsonGroup {
    group: String,
    passed: usize,
    failed: usize,
}

#[derive(serde::Serialize)]
struct JsonReport<'a> {
    endpoint: &'a str,
    reference: Option<&'a str>,
    passed: bool,
    summary: Vec<JsonGroup>,
    cases: &'a [CaseResult],
}

pub fn json(
    endpoint: &str,
    reference: Option<&str>,
    results: &[CaseResult],
) -> serde_json::Result<String> {
    let summary = summary(results)
        .into_iter()
        .map(|(group, passed, failed)| JsonGroup {
            group,
            passed,
            failed,
        })
        .collect();
    serde_json::to_string_pretty(&JsonReport {
        endpoint,
        reference,
        passed: results.iter().all(|r| r.passed),
        summary,
        cases: results,
    })
}
