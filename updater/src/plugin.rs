//! `kubectl ospatch`: the operator's view and levers. `status` is the reference page's Nodes
//! tab (node, patched version, last applied patch time, step, reboot required); `now` requests
//! an on-demand run; `schedule`, `pause` and `resume` edit the patch policy ConfigMap;
//! `drain-policy` shows the drain policy the agents apply; `manifests` renders the install
//! manifests. It only reads and writes API objects; the agents do the work.

use crate::cycle::Step;
use crate::node::{self as nodeann, annotation};
use crate::policy;
use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use std::io::Write;

#[derive(Debug, Parser)]
#[command(
    name = "kubectl-ospatch",
    version,
    about = "OS patching of the cluster's nodes (bootpatch-updater)"
)]
pub struct Cli {
    /// Namespace of the updater (its patch policy and slots).
    #[arg(
        short = 'n',
        long,
        global = true,
        default_value = "bootpatch-system",
        env = "OSPATCH_NAMESPACE"
    )]
    pub namespace: String,
    /// Name of the drain policy ConfigMap.
    #[arg(long, global = true, default_value = policy::DRAIN_POLICY_CONFIGMAP)]
    pub drain_policy: String,
    /// Namespace of the drain policy ConfigMap (default: --namespace).
    #[arg(long, global = true)]
    pub drain_policy_namespace: Option<String>,
    /// Path to a kubeconfig (default: KUBECONFIG or ~/.kube/config, or in-cluster).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Patch status of every node (the Nodes tab).
    Status {
        /// Only nodes matching this label selector.
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Patch now (on demand): the named nodes, the nodes matching --selector, or all.
    Now {
        nodes: Vec<String>,
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Set the patch schedule (5-field cron), optionally its time zone.
    Schedule {
        cron: String,
        #[arg(long)]
        time_zone: Option<String>,
    },
    /// Stop starting new patch runs (runs under way finish).
    Pause,
    /// Start patch runs again.
    Resume,
    /// Show the drain policy in force (defaults filled in).
    DrainPolicy,
    /// Print the install manifests (Namespace, RBAC, ConfigMaps, DaemonSet).
    Manifests {
        #[arg(long, default_value = "bootpatch-updater:latest")]
        image: String,
    },
}

const MANIFESTS: [(&str, &str); 4] = [
    (
        "namespace.yaml",
        include_str!("../../templates/kubernetes/namespace.yaml"),
    ),
    (
        "rbac.yaml",
        include_str!("../../templates/kubernetes/rbac.yaml"),
    ),
    (
        "configmaps.yaml",
        include_str!("../../templates/kubernetes/configmaps.yaml"),
    ),
    (
        "daemonset.yaml",
        include_str!("../../templates/kubernetes/daemonset.yaml"),
    ),
];

/// Renders the manifests in `templates/kubernetes/` for a namespace and an agent image.
pub fn render_manifests(namespace: &str, image: &str) -> anyhow::Result<String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-./:_@".contains(c))
    };
    if !ok(namespace) || !ok(image) {
        bail!("namespace {namespace:?} and image {image:?} must be plain names");
    }
    let mut out = String::new();
    for (name, text) in MANIFESTS {
        out.push_str(&format!("---\n# Source: templates/kubernetes/{name}\n"));
        let rendered = text
            .replace("{{ namespace }}", namespace)
            .replace("{{ image }}", image);
        if rendered.contains("{{") {
            bail!("{name}: an unknown placeholder is left after rendering");
        }
        out.push_str(&rendered);
    }
    Ok(out)
}

/// The cluster as kubectl would find it: `--kubeconfig` (else KUBECONFIG, else
/// ~/.kube/config, else in-cluster) and `--context` (else the current context).
async fn load_config(cli: &Cli) -> anyhow::Result<kube::Config> {
    let options = kube::config::KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    match (&cli.kubeconfig, &cli.context) {
        (Some(p), _) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .with_context(|| format!("loading kubeconfig {}", p.display()))
        }
        (None, Some(ctx)) => kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("loading context {ctx:?} from the kubeconfig")),
        (None, None) => kube::Config::infer()
            .await
            .context("finding the cluster (kubeconfig)"),
    }
}

/// Table rows for `status`.
pub fn status_rows(nodes: &[Node]) -> Vec<[String; 6]> {
    let mut rows: Vec<[String; 6]> = nodes
        .iter()
        .map(|n| {
            let a = |k: &str| annotation(n, k).unwrap_or("-").to_string();
            let mut step = a(nodeann::STEP);
            if step == "-" {
                step = Step::Idle.as_str().into();
            }
            [
                n.metadata.name.clone().unwrap_or_default(),
                a(nodeann::PATCHED_VERSION),
                a(nodeann::LAST_APPLIED_PATCH_TIME),
                step,
                a(nodeann::REBOOT_REQUIRED),
                a(nodeann::LAST_RESULT),
            ]
        })
        .collect();
    rows.sort();
    rows
}

pub fn format_table(header: &[&str], rows: &[[String; 6]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("   ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.to_vec()) + "\n";
    for r in rows {
        out += &(line(r.iter().map(String::as_str).collect()) + "\n");
    }
    out
}

async fn patch_policy_data(
    client: &Client,
    ns: &str,
    data: serde_json::Value,
) -> anyhow::Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let name = policy::PATCH_POLICY_CONFIGMAP;
    if api.get_opt(name).await?.is_none() {
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &cm)
            .await
            .with_context(|| format!("creating ConfigMap {ns}/{name}"))?;
    }
    let merged = api
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"data": data})),
        )
        .await
        .with_context(|| format!("updating ConfigMap {ns}/{name}"))?;
    // Refuse to leave a policy the agents would reject.
    policy::parse_patch_policy(&merged.data.unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("the patch policy does not parse after the change: {e}"))?;
    Ok(())
}

/// Runs one command, writing what it shows to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    if let Command::Manifests { image } = &cli.command {
        out.write_all(render_manifests(&cli.namespace, image)?.as_bytes())?;
        return Ok(());
    }
    let config = load_config(&cli).await?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    commands(&cli, client, out)
        .await
        .map_err(crate::kube_util::explain)
        .with_context(|| format!("the API server at {server}"))
}

async fn commands(cli: &Cli, client: Client, out: &mut dyn Write) -> anyhow::Result<()> {
    let nodes_api: Api<Node> = Api::all(client.clone());
    match &cli.command {
        Command::Status { selector } => {
            let mut lp = ListParams::default();
            if let Some(s) = selector {
                lp = lp.labels(s);
            }
            let nodes = nodes_api.list(&lp).await.context("listing nodes")?;
            let rows = status_rows(&nodes.items);
            out.write_all(
                format_table(
                    &[
                        "NODE",
                        "PATCHED VERSION",
                        "LAST APPLIED PATCH TIME",
                        "STEP",
                        "REBOOT REQUIRED",
                        "LAST RESULT",
                    ],
                    &rows,
                )
                .as_bytes(),
            )?;
        }
        Command::Now { nodes, selector } => {
            let targets: Vec<Node> = if nodes.is_empty() {
                let mut lp = ListParams::default();
                if let Some(s) = selector {
                    lp = lp.labels(s);
                }
                nodes_api.list(&lp).await.context("listing nodes")?.items
            } else {
                if selector.is_some() {
                    bail!("give node names or --selector, not both");
                }
                let mut v = Vec::new();
                for n in nodes {
                    v.push(
                        nodes_api
                            .get(n)
                            .await
                            .with_context(|| format!("getting node {n}"))?,
                    );
                }
                v
            };
            if targets.is_empty() {
                bail!("no nodes matched");
            }
            let now = nodeann::now_rfc3339();
            for n in &targets {
                let name = n.metadata.name.clone().unwrap_or_default();
                let mut ann = serde_json::Map::new();
                ann.insert(nodeann::PATCH_REQUESTED.into(), now.clone().into());
                let step = nodeann::step_of(n);
                let failed = step == Step::Failed;
                if failed {
                    // A human clears a failed node by asking for a run: the machine's reset.
                    ann.insert(nodeann::STEP.into(), step.reset()?.as_str().into());
                }
                nodes_api
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(&serde_json::json!({"metadata": {"annotations": ann}})),
                    )
                    .await
                    .with_context(|| format!("requesting a patch run on {name}"))?;
                writeln!(
                    out,
                    "node/{name} patch requested{}",
                    if failed {
                        " (failed state cleared; it stays cordoned until the run uncordons it or you do)"
                    } else {
                        ""
                    }
                )?;
            }
        }
        Command::Schedule { cron, time_zone } => {
            crate::schedule::Schedule::parse(cron)
                .map_err(|e| anyhow::anyhow!("schedule {cron:?}: {e}"))?;
            let mut data = serde_json::json!({"schedule": cron});
            if let Some(tz) = time_zone {
                tz.parse::<chrono_tz::Tz>()
                    .map_err(|_| anyhow::anyhow!("time zone {tz:?} is not a zone name"))?;
                data["timeZone"] = tz.clone().into();
            }
            patch_policy_data(&client, &cli.namespace, data).await?;
            writeln!(
                out,
                "patch schedule set to {cron:?}{}",
                time_zone
                    .as_ref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default()
            )?;
        }
        Command::Pause => {
            patch_policy_data(
                &client,
                &cli.namespace,
                serde_json::json!({"paused": "true"}),
            )
            .await?;
            writeln!(
                out,
                "patching paused: no new runs start (runs under way finish)"
            )?;
        }
        Command::Resume => {
            patch_policy_data(
                &client,
                &cli.namespace,
                serde_json::json!({"paused": "false"}),
            )
            .await?;
            writeln!(out, "patching resumed")?;
        }
        Command::DrainPolicy => {
            let ns = cli
                .drain_policy_namespace
                .clone()
                .unwrap_or_else(|| cli.namespace.clone());
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let cm = api
                .get_opt(&cli.drain_policy)
                .await
                .context("reading the drain policy")?;
            let source = match &cm {
                Some(_) => format!("ConfigMap {ns}/{}", cli.drain_policy),
                None => format!("defaults (ConfigMap {ns}/{} not found)", cli.drain_policy),
            };
            let data = cm.and_then(|c| c.data).unwrap_or_default();
            match policy::parse_agent_config(&data) {
                Ok((c, warnings)) => {
                    let d = &c.drain;
                    writeln!(out, "Drain policy from {source}:")?;
                    writeln!(out, "  timeout:                  {}", if d.timeout.is_zero() { "none".to_string() } else { format!("{} ({} ns)", crate::drain::go_duration(d.timeout), d.timeout.as_nanos()) })?;
                    writeln!(out, "  gracePeriod:              {}", if d.grace_period < 0 { format!("{} (each pod's own)", d.grace_period) } else { format!("{}s", d.grace_period) })?;
                    writeln!(out, "  deleteLocalData:          {}", d.delete_local_data)?;
                    writeln!(out, "  ignoreDaemonSets:         {}", d.ignore_daemon_sets)?;
                    writeln!(out, "  force:                    {}", d.force)?;
                    writeln!(out, "  disableEviction:          {}", d.disable_eviction)?;
                    writeln!(out, "  skipWaitForDeleteTimeout: {}", d.skip_wait_for_delete_timeout)?;
                    writeln!(out, "  profiling:                {}", if c.profiling { "enable" } else { "disable" })?;
                    writeln!(out, "  feature.workloads:        {}", if c.workloads { "enable" } else { "disable" })?;
                    for w in warnings {
                        writeln!(out, "Warning: {w}")?;
                    }
                }
                Err(e) => bail!("the drain policy in {source} does not parse: {e}; the agents keep the last policy that did"),
            }
        }
        Command::Manifests { .. } => unreachable!("handled above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn manifests_render_with_no_placeholder_left() {
        let m = render_manifests("ops", "registry.invalid/updater:1").unwrap();
        assert!(m.contains("namespace: ops") && m.contains("image: registry.invalid/updater:1"));
        assert!(!m.contains("{{"));
        assert!(render_manifests("ops; rm", "x").is_err());
    }

    #[test]
    fn sample_policies_in_the_manifests_parse() {
        let m = render_manifests("ops", "x").unwrap();
        // The drain JSON block of the ConfigMap, as the agent reads it.
        let start = m.find("  drain: |\n").unwrap() + 11;
        let block: String = m[start..]
            .lines()
            .take_while(|l| l.starts_with("    "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        let data = [("drain".to_string(), block)].into_iter().collect();
        let (c, w) = policy::parse_agent_config(&data).unwrap();
        // The shipped values that can drain a real node (see configmaps.yaml), not the
        // parser's defaults.
        assert!(c.drain.ignore_daemon_sets && c.drain.delete_local_data && !c.drain.force);
        assert_eq!(c.drain.timeout, std::time::Duration::from_secs(600));
        assert!(w.is_empty(), "{w:?}");
    }
}
