//! Case results and the pass/fail table.

use std::fmt::Write as _;

#[derive(Debug, Clone)]
pub struct Outcome {
    pub suite: &'static str,
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Records one case: `passed`, with `detail` explaining a failure (or noting a pass).
    pub fn check(
        &mut self,
        suite: &'static str,
        name: impl Into<String>,
        passed: bool,
        detail: impl Into<String>,
    ) {
        self.outcomes.push(Outcome {
            suite,
            name: name.into(),
            passed,
            detail: detail.into(),
        });
    }

    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| !o.passed).collect()
    }

    pub fn all_passed(&self) -> bool {
        !self.outcomes.is_empty() && self.outcomes.iter().all(|o| o.passed)
    }

    /// The table: one line per case, then totals per suite.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self
            .outcomes
            .iter()
            .map(|o| o.name.len())
            .max()
            .unwrap_or(10)
            .min(70);
        for o in &self.outcomes {
            let mark = if o.passed { "PASS" } else { "FAIL" };
            let _ = writeln!(
                out,
                "{mark}  {:<12} {:<width$}  {}",
                o.suite, o.name, o.detail
            );
        }
        let mut suites: Vec<&str> = self.outcomes.iter().map(|o| o.suite).collect();
        suites.dedup();
        let _ = writeln!(out);
        for suite in suites {
            let (passed, total) = self
                .outcomes
                .iter()
                .filter(|o| o.suite == suite)
                .fold((0, 0), |(p, t), o| (p + usize::from(o.passed), t + 1));
            let _ = writeln!(out, "{suite:<12} {passed}/{total} passed");
        }
        let passed = self.outcomes.iter().filter(|o| o.passed).count();
        let _ = writeln!(
            out,
            "{:<12} {passed}/{} passed",
            "TOTAL",
            self.outcomes.len()
        );
        out
    }
}
