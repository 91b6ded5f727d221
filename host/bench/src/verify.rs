//! The `verify` suite: the full depth-1 enumeration of the counter example (10 messages, two
//! instances), as `rolehost verify guests/verify/counter` runs it.

use std::collections::BTreeMap;

use rolehost_runtime::manifest::Manifest;
use rolehost_runtime::verify::{self, Scenario, Verifier};

use crate::line;

pub(crate) fn verify() {
    let dir = crate::runtime::repo_root().join("guests/verify/counter");
    let manifest = Manifest::load(&dir).expect("manifest");
    let scenario = Scenario::load(&dir.join("verify.toml")).expect("scenario");
    let component = crate::runtime::guest("counter");
    let components: BTreeMap<_, _> = manifest
        .roles
        .keys()
        .map(|r| (r.clone(), component.clone()))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let verifier = rt
        .block_on(Verifier::new(
            &manifest,
            &components,
            scenario,
            Some(&crate::runtime::guest("counter_checker")),
        ))
        .expect("verifier");
    let report = verify::enumerate(&verifier, 1, usize::MAX, &|_, _| {}).expect("enumeration");
    let cases = report.cases.len();
    line("counter_depth1_cases", cases);
    line("counter_depth1_failing", report.failures().count());
    line("counter_depth1_s", format!("{:.2}", report.elapsed_s));
    line(
        "cases_per_s",
        format!("{:.1}", (cases + 1) as f64 / report.elapsed_s),
    );
    line("counter_baseline_calls", report.baseline.trace.len());
}
