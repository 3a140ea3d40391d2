//! `pgmesh drill`: starts the cross-region lab, runs chaos drills on it and writes a
//! JSON and a markdown report per drill plus a summary of all (README "Drills").

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::lab::drill::report::{summarize, DrillReport};
use crate::lab::drill::{self, DrillOptions, Scenario};
use crate::lab::regions::{clean_leftovers, LabOptions, RegionsLab};

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Scenarios to run, in order (see --list).
    pub scenarios: Vec<String>,
    /// Run every scenario.
    #[arg(long)]
    pub all: bool,
    /// Run each scenario this many times (percentiles over the trials).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Short holds (a degraded WAN for 20 s instead of 3 min): the form CI runs.
    #[arg(long)]
    pub short: bool,
    /// PostgreSQL major version of both regions.
    #[arg(long, default_value_t = 15)]
    pub pg: u32,
    /// Where reports go (default: drill-reports/<UTC time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Copy the lab's logs (agents, sidecars, etcd, HAProxy) next to every report, not
    /// only a failed one's: to see where a takeover's seconds went.
    #[arg(long)]
    pub keep_logs: bool,
}

pub fn run(args: &DrillArgs) -> ExitCode {
    match run_drills(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgmesh: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Ctrl-C (or SIGTERM) in the middle of a drill removes the lab as `pgmesh lab --regions`
/// does, then exits 130: the drill's threads are left as they are, so the lab is removed
/// from outside them (its namespaces, their processes, the hub address, its directory).
fn remove_the_lab_on_interrupt(opts: &LabOptions) {
    let (layout, dir) = (opts.layout.clone(), opts.dir.clone());
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(super::run::shutdown_signal());
        eprintln!("interrupted: removing the lab");
        if let Err(e) = clean_leftovers(&layout, &dir) {
            eprintln!("pgmesh: removing the lab: {e}; the next pgmesh lab --regions or drill removes what is left");
        }
        std::process::exit(130);
    });
}

fn chosen(args: &DrillArgs) -> anyhow::Result<Vec<Scenario>> {
    if args.all {
        return Ok(Scenario::ALL.to_vec());
    }
    if args.scenarios.is_empty() {
        bail!("name a scenario or pass --all (pgmesh drill --list shows them)");
    }
    args.scenarios
        .iter()
        .map(|s| {
            Scenario::parse(s)
                .with_context(|| format!("unknown scenario {s:?}; pgmesh drill --list shows them"))
        })
        .collect()
}

fn run_drills(args: &DrillArgs) -> anyhow::Result<ExitCode> {
    if args.list {
        for s in Scenario::ALL {
            println!("{:<22} {}", s.name(), s.describe());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let scenarios = chosen(args)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("drill-reports").join(stamp()));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let opts = LabOptions::new(args.pg, std::env::current_exe()?);
    remove_the_lab_on_interrupt(&opts);
    eprintln!("starting the cross-region lab (PostgreSQL {}) ...", args.pg);
    let mut lab = Some(RegionsLab::start(opts.clone())?);
    let mut reports: Vec<DrillReport> = Vec::new();
    for trial in 1..=args.repeat {
        for &s in &scenarios {
            let lab_now = match lab.as_mut() {
                Some(l) => l,
                None => lab.insert(RegionsLab::start(opts.clone())?),
            };
            eprintln!("drill {} (trial {trial}) ...", s.name());
            let r = drill::run(
                lab_now,
                s,
                &DrillOptions {
                    short: args.short,
                    trial,
                },
            );
            print!("{}", r.to_markdown());
            println!();
            let stem = out.join(format!("{}-{trial}", s.name()));
            std::fs::write(
                stem.with_extension("json"),
                serde_json::to_string_pretty(&r)?,
            )?;
            std::fs::write(stem.with_extension("md"), r.to_markdown())?;
            let logs = out.join(format!("{}-{trial}-logs", s.name()));
            if !r.passed || args.keep_logs {
                let _ = copy_logs(lab_now.dir(), &logs);
            }
            if !r.passed {
                let _ = std::fs::write(logs.join("state.txt"), lab_now.snapshot());
            }
            if !r.passed {
                // The next drill starts on a fresh lab.
                eprintln!(
                    "drill failed; its logs are in {}; restarting the lab",
                    logs.display()
                );
                lab = None;
            }
            reports.push(r);
        }
    }
    drop(lab);
    let summary = summarize(&reports);
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    std::fs::write(out.join("summary.md"), summary.to_markdown())?;
    print!("{}", summary.to_markdown());
    println!("\nreports: {}", out.display());
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn stamp() -> String {
    crate::pgtime::rfc3339_now()
        .chars()
        .take(19)
        .map(|c| if c == ':' { '-' } else { c })
        .collect()
}

fn copy_logs(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        if name.to_string_lossy().ends_with(".log") {
            std::fs::copy(e.path(), to.join(name))?;
        }
    }
    Ok(())
}
