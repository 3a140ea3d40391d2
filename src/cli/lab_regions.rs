//! `pgmesh lab --regions`: starts the cross-region lab, prints how to reach it, and
//! removes it on Ctrl-C. Blocking: the lab runs its WAN on its own runtime.

use std::process::ExitCode;

use super::lab::LabArgs;
use crate::lab::regions::{LabOptions, RegionsLab};
use crate::lab::topology::{Service, Site, DNS_ZONE};

pub fn run(args: &LabArgs) -> ExitCode {
    match run_lab(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgmesh: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run_lab(args: &LabArgs) -> anyhow::Result<ExitCode> {
    let opts = LabOptions::new(args.pg, std::env::current_exe()?);
    println!("starting the cross-region lab (PostgreSQL {}) ...", args.pg);
    let lab = RegionsLab::start(opts)?;
    if !lab.leftovers.is_empty() {
        println!(
            "removed the leftovers of an earlier lab: {}",
            lab.leftovers.join(", ")
        );
    }
    print!("{}", overview(&lab));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(super::run::shutdown_signal());
    println!("stopping the lab");
    drop(lab);
    Ok(ExitCode::SUCCESS)
}

fn overview(lab: &RegionsLab) -> String {
    let l = lab.layout();
    let psql = lab.postgres(Site::A).bin_dir().join("psql");
    let mut s = format!(
        "\nthe cross-region lab is up in {:.1} s: regions a and b (PostgreSQL, sidecar, agent, etcd member, HAProxy), \
         a witness (etcd), clients; every path between sites crosses a {} ms round-trip WAN.\n\n",
        lab.started_in.as_secs_f64(),
        lab.wan().delay.as_millis() * 2
    );
    s.push_str("site      namespace  address      runs\n");
    for site in Site::ALL {
        let runs = match site {
            Site::A | Site::B => "postgres, pgmesh run, pgmesh agent, etcd, haproxy",
            Site::Witness => "etcd",
            Site::Clients => "knotd (DNS); the drills' load enters here",
        };
        s.push_str(&format!(
            "{:<9} {:<10} {:<12} {runs}\n",
            site.name(),
            l.namespace(site),
            l.site_addr(site).to_string()
        ));
    }
    s.push_str(&format!(
        "\nevery service is at the hub {} (its own port) from every site:\n",
        l.hub()
    ));
    for svc in Service::all() {
        s.push_str(&format!(
            "  {:<22} {}\n",
            format!("{svc:?}"),
            l.via_hub(svc)
        ));
    }
    s.push_str(&format!(
        "\nwrite as the application, through the client site's WAN and the HAProxies:\n  {} -d '{}' -c \"INSERT INTO orders VALUES (1, 'hello')\"\n",
        psql.display(),
        lab.client_dsn()
    ));
    let dns = l.inside(Service::Dns(Site::Clients));
    s.push_str(&format!(
        "DNS: the client site's server for {DNS_ZONE} is {dns} (from sites: {}, UDP and TCP); \
         the agents publish each endpoint's owner there (region a: {}, b: {}):\n  \
         kdig @{} -p {} app-eu.{DNS_ZONE} A +short\n",
        l.via_hub(Service::Dns(Site::Clients)),
        l.site_addr(Site::A),
        l.site_addr(Site::B),
        dns.ip(),
        dns.port()
    ));
    s.push_str(&format!(
        "status of both regions:\n  pgmesh status -c {}\n",
        lab.config_path().display()
    ));
    s.push_str(&format!(
        "logs: {0}/{{agent,sidecar,etcd,haproxy}}-SITE.log, {0}/knot/knot.log\nrun a drill against a fresh lab: pgmesh drill region-killed   (pgmesh drill --list)\n\nPress Ctrl-C to stop the lab (everything is removed).\n",
        lab.dir().display()
    ));
    s
}
