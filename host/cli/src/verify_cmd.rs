//! `rolehost verify`: the service's worker roles under every lost message and every crash
//! point, with the scenario's invariant checked after each run.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rolehost_runtime::manifest::{ComponentSource, Manifest};
use rolehost_runtime::service;
use rolehost_runtime::verify::{self, Case, Run, SCENARIO_FILE, Scenario, Verifier};

/// What `rolehost verify` was asked.
#[derive(clap::Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The service: a directory holding rolehost.toml (and verify.toml), or the manifest.
    #[arg(default_value = ".")]
    path: PathBuf,
    /// The scenario file. Default: verify.toml next to the manifest.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// 1: one fault per run; 2: also every pair of faults (bounded by --budget).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    depth: u8,
    /// Most cases to run.
    #[arg(long, default_value_t = 5000)]
    budget: usize,
    /// Run this case alone (an id from a report, e.g. c17-lose-response) and show its trace.
    #[arg(long)]
    case: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// In the table of cases, only the failing ones.
    #[arg(long)]
    failing: bool,
    /// Cargo target directory for guest builds.
    #[arg(long)]
    target_dir: Option<PathBuf>,
}

impl VerifyArgs {
    /// Whether one case is asked for (its guests' logs are then worth showing).
    pub(crate) fn single_case(&self) -> bool {
        self.case.is_some()
    }
}

/// Runs verify; `Ok(false)` when some case broke the invariant.
pub(crate) async fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let manifest = Manifest::load(&args.path)?;
    let scenario_path = args.scenario.clone().unwrap_or_else(|| {
        manifest
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join(SCENARIO_FILE)
    });
    let scenario = Scenario::load(&scenario_path)?;
    let components = tokio::task::block_in_place(|| {
        service::resolve_components(&manifest, args.target_dir.as_deref())
    })?;
    let checker = match scenario.checker.as_ref().map(|c| &c.source) {
        None => None,
        Some(ComponentSource::File(p)) => Some(p.clone()),
        Some(ComponentSource::Crate(dir)) => Some(tokio::task::block_in_place(|| {
            service::component_of_crate(dir, args.target_dir.as_deref())
        })?),
    };
    let verifier = Verifier::new(&manifest, &components, scenario, checker.as_deref()).await?;
    for role in verifier.left_out() {
        eprintln!("rolehost: verify: web role {role} does not run under verify (left out)");
    }
    tokio::task::block_in_place(|| run(&verifier, &args))
}

fn print_trace(run: &Run) {
    for t in &run.trace {
        let mark = if t.fault == "none" { "  " } else { "=>" };
        println!("   {mark} {t}");
    }
}

fn print_failure(run: &Run) {
    let (kind, messages) = match &run.verdict {
        verify::Verdict::Pass => return,
        verify::Verdict::Fail(m) => ("FAIL", m),
        verify::Verdict::Stuck(m) => ("STUCK", m),
    };
    println!("{kind} {}", run.id);
    for m in messages {
        println!("   {m}");
    }
    println!(
        "   trace ({} calls, {:.1} s of virtual time):",
        run.trace.len(),
        run.virtual_ms as f64 / 1000.0
    );
    print_trace(run);
    println!();
}

fn run(verifier: &Verifier, args: &VerifyArgs) -> anyhow::Result<bool> {
    let s = verifier.scenario();
    if let Some(id) = &args.case {
        let case = Case::parse(id).with_context(|| format!("--case {id:?}: not a case id (e.g. c17-lose-response, c3-crash-after+c20-lose-request)"))?;
        let run = verifier.run(&case)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&run)?);
        } else if run.verdict.passed() {
            println!("PASS {}", run.id);
            print_trace(&run);
        } else {
            print_failure(&run);
        }
        return Ok(run.verdict.passed());
    }
    eprintln!(
        "rolehost: verify: scenario {} (seed {}), depth {}",
        s.path.display(),
        s.seed,
        args.depth
    );
    let last_shown = std::sync::atomic::AtomicUsize::new(0);
    let progress = |done: usize, total: usize| {
        // A line every tenth of the way.
        let step = (total / 10).max(1);
        if done.is_multiple_of(step)
            && last_shown.swap(done, std::sync::atomic::Ordering::Relaxed) != done
        {
            eprintln!("rolehost: verify: {done} of {total} cases run");
        }
    };
    let report = verify::enumerate(verifier, args.depth, args.budget, &progress)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(report.baseline.verdict.passed() && report.failures().next().is_none());
    }
    if !report.baseline.verdict.passed() {
        println!("The fault-free run already breaks the invariant:\n");
        print_failure(&report.baseline);
        bail!("fix the fault-free run first: the scenario's checks fail without any fault");
    }
    let failures: Vec<&Run> = report.failures().collect();
    let n = report.cases.len();
    println!(
        "baseline: pass ({} storage calls, {:.1} s of virtual time)",
        report.baseline.trace.len(),
        report.baseline.virtual_ms as f64 / 1000.0
    );
    println!(
        "{n} cases (depth {}) in {:.1} s ({:.0} cases/s){}: {} break the invariant\n",
        args.depth,
        report.elapsed_s,
        n as f64 / report.elapsed_s.max(1e-9),
        if report.skipped > 0 {
            format!(", {} more left out by --budget", report.skipped)
        } else {
            String::new()
        },
        failures.len()
    );
    for f in &failures {
        print_failure(f);
    }
    println!(
        "{:<40} {:<16} {:<26} {:<14} OUTCOME",
        "CASE", "INSTANCE", "CALL", "TARGET"
    );
    for r in report
        .cases
        .iter()
        .filter(|r| !args.failing || !r.verdict.passed())
    {
        let call = r.faulted().last();
        let outcome = match &r.verdict {
            verify::Verdict::Pass => "pass".to_string(),
            verify::Verdict::Fail(m) => format!("FAIL: {}", m.join("; ")),
            verify::Verdict::Stuck(m) => format!("STUCK: {}", m.join("; ")),
        };
        println!(
            "{:<40} {:<16} {:<26} {:<14} {outcome}",
            r.id,
            call.map_or("", |c| c.instance.as_str()),
            call.map_or("", |c| c.operation.as_str()),
            call.map_or("", |c| c.target.as_str()),
        );
    }
    if args.failing && failures.len() < n {
        println!(
            "({} passing cases not shown: --failing)",
            n - failures.len()
        );
    }
    Ok(failures.is_empty())
}
