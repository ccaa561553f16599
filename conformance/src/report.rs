//! Terminal, markdown and JSON reports.

use std::fmt::Write as _;

use crate::runner::{CaseResult, GROUPS, Verdict};

/// One terminal line per case.
pub fn line(r: &CaseResult) -> String {
    let verdict = match r.verdict {
        Verdict::Pass => "PASS",
        Verdict::Fail => "FAIL",
        Verdict::Skip => "SKIP",
    };
    format!(
        "{verdict} {}/{} ({} ms): {}",
        r.group, r.name, r.millis, r.reason
    )
}

/// Counts of one group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupSummary {
    pub group: String,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Every group that ran (or was skipped), in group order.
pub fn summary(results: &[CaseResult]) -> Vec<GroupSummary> {
    GROUPS
        .iter()
        .filter_map(|g| {
            let rs: Vec<&CaseResult> = results.iter().filter(|r| r.group == *g).collect();
            if rs.is_empty() {
                return None;
            }
            let count = |v| rs.iter().filter(|r| r.verdict == v).count();
            Some(GroupSummary {
                group: g.to_string(),
                passed: count(Verdict::Pass),
                failed: count(Verdict::Fail),
                skipped: count(Verdict::Skip),
            })
        })
        .collect()
}

/// Why the skipped groups were skipped, one line each (empty if none was).
pub fn skipped_note(results: &[CaseResult]) -> Vec<String> {
    summary(results)
        .into_iter()
        .filter(|g| g.skipped > 0)
        .map(|g| {
            let why = results
                .iter()
                .find(|r| r.group == g.group && r.verdict == Verdict::Skip)
                .map(|r| r.reason.trim_start_matches("skipped: ").to_string())
                .unwrap_or_default();
            format!(
                "{} of {} `{}` case(s) NOT RUN, {why}: this run does not cover them",
                g.skipped,
                g.passed + g.failed + g.skipped,
                g.group
            )
        })
        .collect()
}

pub fn summary_table(results: &[CaseResult]) -> String {
    let mut s = format!(
        "{:<16} {:>6} {:>6} {:>6} {:>6}\n",
        "group", "pass", "fail", "skip", "total"
    );
    let (mut tp, mut tf, mut ts) = (0, 0, 0);
    for g in summary(results) {
        let _ = writeln!(
            s,
            "{:<16} {:>6} {:>6} {:>6} {:>6}",
            g.group,
            g.passed,
            g.failed,
            g.skipped,
            g.passed + g.failed + g.skipped
        );
        tp += g.passed;
        tf += g.failed;
        ts += g.skipped;
    }
    let _ = writeln!(
        s,
        "{:<16} {tp:>6} {tf:>6} {ts:>6} {:>6}",
        "all",
        tp + tf + ts
    );
    for n in skipped_note(results) {
        let _ = writeln!(s, "note: {n}");
    }
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
        None => s.push_str(
            "- reference: none (etcd 3.5's answers built into the cases and, unless \
                 `--no-expectations`, the recorded etcd 3.5 transcripts)\n",
        ),
    }
    s.push_str("\n## Summary\n\n| group | pass | fail | skip | total |\n|---|---|---|---|---|\n");
    for g in summary(results) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            g.group,
            g.passed,
            g.failed,
            g.skipped,
            g.passed + g.failed + g.skipped
        );
    }
    let notes = skipped_note(results);
    if !notes.is_empty() {
        s.push('\n');
        for n in notes {
            let _ = writeln!(s, "**Note:** {}", md_cell(&n));
        }
    }
    s.push_str("\n## Cases\n\n| result | group | case | ms | reason |\n|---|---|---|---|---|\n");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            match r.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "**FAIL**",
                Verdict::Skip => "skip",
            },
            r.group,
            r.name,
            r.millis,
            md_cell(&r.reason)
        );
    }
    s
}

#[derive(serde::Serialize)]
struct JsonReport<'a> {
    endpoint: &'a str,
    reference: Option<&'a str>,
    /// No case failed (skipped cases do not count as failures; see `skipped`).
    passed: bool,
    skipped: usize,
    summary: Vec<GroupSummary>,
    cases: &'a [CaseResult],
}

pub fn json(
    endpoint: &str,
    reference: Option<&str>,
    results: &[CaseResult],
) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&JsonReport {
        endpoint,
        reference,
        passed: !results.iter().any(|r| r.verdict == Verdict::Fail),
        skipped: results
            .iter()
            .filter(|r| r.verdict == Verdict::Skip)
            .count(),
        summary: summary(results),
        cases: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(group: &str, verdict: Verdict) -> CaseResult {
        CaseResult {
            group: group.into(),
            name: "c".into(),
            verdict,
            passed: verdict == Verdict::Pass,
            reason: if verdict == Verdict::Skip {
                "skipped: needs --restart-cmd".into()
            } else {
                "ok".into()
            },
            millis: 1,
        }
    }

    #[test]
    fn skipped_groups_are_counted_and_explained() {
        let rs = vec![r("concurrency", Verdict::Pass), r("faults", Verdict::Skip)];
        let t = summary_table(&rs);
        assert!(
            t.contains("faults                0      0      1      1"),
            "{t}"
        );
        assert!(
            t.contains("note: 1 of 1 `faults` case(s) NOT RUN, needs --restart-cmd: this run"),
            "{t}"
        );
        assert!(line(&rs[1]).starts_with("SKIP faults/c"));
        let j = json("e", None, &rs).unwrap();
        assert!(
            j.contains("\"passed\": true") && j.contains("\"skipped\": 1"),
            "{j}"
        );
        assert!(markdown("e", None, &rs).contains("| skip | faults | c |"));
    }
}
