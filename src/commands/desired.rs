//! `seal export`, `seal apply`, `seal diff`: desired state in a release
//! file. The server parses and checks the file, so the CLI sends its text
//! with where it came from (the git commit, author and message when the
//! file is in a git work tree).

use crate::client::Client;
use crate::commands::trust::{VersionRef, parse_version_ref};
use crate::output::{OutputFormat, emit};
use crate::output::{table, time_ms};
use anyhow::Context;
use seal_api_types::desired::{
    ApplyAnswer, ApplyPlan, ApplyRequest, Change, Changelog, ChangelogEntry, DiffAnswer, Drift,
    Exported, FileSource, Hold, Holds, ReleaseHold, ReleaseRecord, Releases, StepOutcome,
};
use std::path::{Path, PathBuf};

/// `seal diff` exits with this code when an environment differs from the
/// file (0: in sync, 1: an error).
pub const DRIFTED: u8 = 3;

/// The error `seal diff` ends with when it found differences: printed
/// already, it only sets the exit code.
#[derive(Debug)]
pub struct Drifted;

impl std::fmt::Display for Drifted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the environments differ from the file")
    }
}

impl std::error::Error for Drifted {}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Only this environment (default: every environment).
    #[arg(long, short = 'e')]
    env: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// The release file (TOML).
    #[arg(long, short = 'f', value_name = "FILE")]
    file: PathBuf,
    /// Print the plan and change nothing.
    #[arg(long)]
    plan: bool,
    /// Admin: versions may ask for more than the ones they replace.
    #[arg(long)]
    allow_new_permissions: bool,
    /// Admin: versions may break the event contracts of the ones they replace.
    #[arg(long)]
    allow_breaking_contract: bool,
    /// Admin: versions may serve without the evidence an environment's
    /// pipeline asks for (audited with what lacked).
    #[arg(long)]
    allow_missing_evidence: bool,
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The release file (TOML).
    #[arg(long, short = 'f', value_name = "FILE")]
    file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct DriftArgs {
    /// Only this environment (default: every environment).
    #[arg(long, short = 'e')]
    env: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct HoldsArgs {
    /// Only this environment (default: every environment).
    #[arg(long, short = 'e')]
    env: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
pub enum HoldCommand {
    /// Lift the hold on a version (FUNCTION@N), so an apply may deploy it again.
    Release {
        /// The held version, e.g. hello@7.
        #[arg(value_parser = parse_version_ref)]
        target: VersionRef,
        /// Environment (default: the server's default, production).
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct ChangelogArgs {
    function: String,
    /// Only this environment (default: every environment).
    #[arg(long, short = 'e')]
    env: Option<String>,
    /// Only deployments started within this long, e.g. 7d, 24h.
    #[arg(long)]
    since: Option<String>,
    /// text, json, or markdown (for release notes).
    #[arg(long, value_enum, default_value_t = ChangelogFormat::Text)]
    format: ChangelogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChangelogFormat {
    Text,
    Json,
    Markdown,
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReleasesArgs {
    #[command(subcommand)]
    command: Option<ReleasesCommand>,
}

#[derive(clap::Subcommand, Debug)]
pub enum ReleasesCommand {
    /// One release: its plan and every step's outcome.
    Show { id: u64 },
}

const HEADER: &str = "\
# A Seal release file: what each environment should run.
# `seal apply -f FILE --plan` shows what applying it would change;
# `seal diff -f FILE` whether the environments match it.
# A field left out is not managed by the file; secrets are named, never held.
";

pub async fn export(args: ExportArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let path = match &args.env {
        Some(e) => format!("/v1/export?environment={e}"),
        None => "/v1/export".to_owned(),
    };
    let exported: Exported = client.get_as(&path).await?;
    let text = toml::to_string(&exported.file).context("cannot write the file as TOML")?;
    emit(out, &exported, |_| print!("{HEADER}\n{text}"));
    Ok(())
}

fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

pub async fn apply(args: ApplyArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let req = ApplyRequest {
        file: read(&args.file)?,
        plan: args.plan,
        source: git_source(&args.file),
        allow_new_permissions: args.allow_new_permissions,
        allow_breaking_contract: args.allow_breaking_contract,
        allow_missing_evidence: args.allow_missing_evidence,
    };
    let answer: ApplyAnswer = client.post_as("/v1/apply", &req).await?;
    emit(out, &answer, |a| {
        print_plan(&a.plan);
        print_outcomes(&a.outcomes);
        if !a.applied {
            println!("(plan only: nothing changed)");
        } else if !a.plan.steps.is_empty() && a.succeeded {
            println!("applied {}", a.plan.file_digest);
        }
    });
    if let Some(f) = answer.outcomes.iter().find(|o| o.outcome == "failed") {
        anyhow::bail!(
            "the apply failed at {}; what it had moved went back (see above)",
            subject(&f.environment, &f.function)
        );
    }
    Ok(())
}

/// How each step of an apply went, a line each.
fn print_outcomes(outcomes: &[StepOutcome]) {
    for o in outcomes {
        let d = o
            .deployment
            .map(|d| format!(" (deployment {d})"))
            .unwrap_or_default();
        let detail = o
            .detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        println!(
            "{}: {}{d}{detail}",
            subject(&o.environment, &o.function),
            o.outcome
        );
    }
}

/// A function in an environment, or the environment itself (no function).
fn subject(environment: &str, function: &str) -> String {
    if function.is_empty() {
        format!("environment {environment}")
    } else {
        format!("{function} in {environment}")
    }
}

fn print_plan(plan: &ApplyPlan) {
    if plan.steps.is_empty() {
        println!(
            "{} matches the file: nothing to change",
            plan.environments.join(", ")
        );
        return;
    }
    println!(
        "plan for {} ({}):",
        plan.environments.join(", "),
        plan.file_digest
    );
    // Headed by wave only when there are several (a release recorded
    // before waves existed has every step in wave 0, one after another).
    let waves = plan
        .steps
        .iter()
        .map(|s| s.wave)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    for (i, step) in plan.steps.iter().enumerate() {
        if waves > 1 && (i == 0 || plan.steps[i - 1].wave != step.wave) {
            let beside = plan.steps.iter().filter(|s| s.wave == step.wave).count();
            let together = if beside > 1 {
                " (side by side; the first to fail stops the others)"
            } else {
                ""
            };
            println!(" wave {}{together}:", step.wave + 1);
        }
        println!(
            "  {}. {}",
            i + 1,
            subject(&step.environment, &step.function)
        );
        for c in &step.changes {
            match c {
                Change::Protection { protected } => {
                    println!("       protected = {protected} (admin)")
                }
                Change::Policy {
                    require_signature,
                    trusted_keys,
                    require_provenance,
                } => {
                    println!(
                        "       policy: require_signature = {require_signature}, {} trusted key(s) {}, require_provenance [{}] (admin)",
                        trusted_keys.len(),
                        trusted_keys.join(", "),
                        require_provenance.join(", ")
                    )
                }
                Change::Queues { create } => {
                    println!("       queues create {}", create.join(", "))
                }
                Change::Config { set, unset } => {
                    for (k, v) in set {
                        println!("       config set {k}={v}");
                    }
                    for k in unset {
                        println!("       config unset {k}");
                    }
                }
                Change::UnsetSecrets { keys } => {
                    println!("       secrets unset {}", keys.join(", "))
                }
                Change::Triggers {
                    create,
                    replace,
                    delete,
                } => {
                    for (verb, names) in
                        [("create", create), ("replace", replace), ("delete", delete)]
                    {
                        if !names.is_empty() {
                            println!("       triggers {verb} {}", names.join(", "));
                        }
                    }
                }
                Change::Deploy {
                    from,
                    to,
                    digest,
                    strategy,
                    steps,
                    gates,
                    hooks,
                    note,
                } => {
                    let from = from.map_or("nothing".to_owned(), |v| format!("@{v}"));
                    println!("       deploy {from} → @{to} {digest}, {strategy}");
                    if !steps.is_empty() {
                        let s: Vec<String> = steps.iter().map(|w| format!("{w}%")).collect();
                        println!("         steps {}", s.join(" → "));
                    }
                    for g in gates {
                        println!("         gate {g}");
                    }
                    for h in hooks {
                        println!("         hook {h}");
                    }
                    if let Some(n) = note {
                        println!("         ({n})");
                    }
                }
            }
        }
    }
}

pub async fn diff(args: DiffArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let body = serde_json::json!({ "file": read(&args.file)? });
    let answer: DiffAnswer = client.post_as("/v1/diff", &body).await?;
    emit(out, &answer, |a| {
        if a.in_sync {
            println!("in sync with {}", a.file_digest);
            return;
        }
        for d in &a.differences {
            let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
            println!(
                "{} {}: file {}, serving {}",
                subject(&d.environment, &d.function),
                d.field,
                show(&d.desired),
                show(&d.actual)
            );
            if let Some(why) = &d.why {
                println!("    why: {why}");
            }
        }
    });
    if answer.in_sync {
        Ok(())
    } else {
        Err(Drifted.into())
    }
}

pub async fn drift(args: DriftArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let mut answer: Drift = client.get_as("/v1/drift").await?;
    if let Some(env) = &args.env {
        answer.environments.retain(|r| &r.environment == env);
    }
    let drifted = answer
        .environments
        .iter()
        .any(|r| !r.differences.is_empty() || r.error.is_some());
    emit(out, &answer, |a| {
        if a.environments.is_empty() {
            println!(
                "no drift checked yet: an environment is checked once a release file was applied to it (`seal apply -f FILE`)"
            );
        }
        for r in &a.environments {
            let state = match (&r.error, r.differences.len()) {
                (Some(e), _) => format!("cannot be checked: {e}"),
                (None, 0) => "in sync".to_owned(),
                (None, n) => format!("{n} differences"),
            };
            println!(
                "{}: {state} with {} (applied by {} at {}{}; checked at {})",
                r.environment,
                r.file_digest,
                r.applied_by,
                time_ms(r.applied_at),
                r.commit
                    .as_deref()
                    .map(|c| format!(", commit {}", &c[..c.len().min(12)]))
                    .unwrap_or_default(),
                time_ms(r.checked_at)
            );
            for d in &r.differences {
                let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(absent)".into());
                println!(
                    "  {} {}: file {}, serving {}",
                    subject(&d.environment, &d.function),
                    d.field,
                    show(&d.desired),
                    show(&d.actual)
                );
                if let Some(why) = &d.why {
                    println!("      why: {why}");
                }
            }
        }
    });
    if drifted { Err(Drifted.into()) } else { Ok(()) }
}

/// The commit the file is at, when it is in a git work tree (and git is
/// installed): commit, author, subject, and whether the file has changes
/// not committed.
fn git_source(file: &Path) -> Option<FileSource> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let name = file.file_name()?.to_string_lossy().into_owned();
    let commit = git(&["rev-parse", "HEAD"])?;
    let path = git(&["ls-files", "--full-name", "--", &name]).filter(|p| !p.is_empty());
    let log = git(&["log", "-1", "--format=%an <%ae>%x00%s", "--", &name])
        .or_else(|| git(&["log", "-1", "--format=%an <%ae>%x00%s"]))?;
    let (author, message) = log.split_once('\0').unwrap_or((&log, ""));
    let uncommitted = path.is_none()
        || git(&["status", "--porcelain", "--", &name]).is_some_and(|s| !s.is_empty());
    Some(FileSource {
        path: Some(path.unwrap_or(name)),
        commit: Some(commit),
        author: Some(author.to_owned()),
        message: Some(message.to_owned()),
        uncommitted,
    })
}

pub async fn holds(args: HoldsArgs, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let path = match &args.env {
        Some(e) => format!("/v1/holds?environment={e}"),
        None => "/v1/holds".to_owned(),
    };
    let holds: Holds = client.get_as(&path).await?;
    emit(out, &holds, |h| {
        if h.holds.is_empty() {
            println!("no version is held");
            return;
        }
        table(
            &[
                "ENVIRONMENT",
                "VERSION",
                "ROLLED BACK",
                "BY",
                "DEPLOYMENT",
                "WHY",
            ],
            h.holds
                .iter()
                .map(|h| {
                    vec![
                        h.environment.clone(),
                        format!("{}@{}", h.function, h.version),
                        time_ms(h.at),
                        h.by.clone(),
                        h.deployment.to_string(),
                        h.reason.clone(),
                    ]
                })
                .collect(),
        )
    });
    Ok(())
}

pub async fn hold(cmd: HoldCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    let HoldCommand::Release { target, env } = cmd;
    let req = ReleaseHold {
        function: target.function.clone(),
        version: target.version,
        environment: env,
    };
    let hold: Hold = client.post_as("/v1/holds/release", &req).await?;
    emit(out, &hold, |h| {
        println!(
            "released the hold on {target} in {} (rolled back in deployment {}: {})",
            h.environment, h.deployment, h.reason
        )
    });
    Ok(())
}

pub async fn changelog(
    args: ChangelogArgs,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    let mut query = vec![("function", args.function.clone())];
    if let Some(e) = &args.env {
        query.push(("environment", e.clone()));
    }
    if let Some(s) = &args.since {
        query.push(("since", s.clone()));
    }
    let req = client
        .request(reqwest::Method::GET, "/v1/changelog")
        .query(&query);
    let log: Changelog = client.send_as(req, "GET", "/v1/changelog").await?;
    let format = match (out, args.format) {
        (OutputFormat::Json, _) => ChangelogFormat::Json,
        (_, f) => f,
    };
    match format {
        ChangelogFormat::Json => emit(OutputFormat::Json, &log, |_| {}),
        ChangelogFormat::Text => {
            if log.entries.is_empty() {
                println!("no deployment of {}", log.function);
            }
            for e in &log.entries {
                println!("{}", headline(&log.function, e));
                for line in details(&log.function, e) {
                    println!("    {line}");
                }
            }
        }
        ChangelogFormat::Markdown => {
            println!("# Changes to {}\n", log.function);
            for e in &log.entries {
                let mut line = format!("- {}", headline(&log.function, e));
                for d in details(&log.function, e) {
                    line.push_str(&format!("; {d}"));
                }
                // Commits and digests as code.
                println!("{}", line.replace(&e.digest, &format!("`{}`", e.digest)));
            }
        }
    }
    Ok(())
}

/// `2026-12-04T12:03:00Z production hello@7 ← @6, canary by ci: rolled_back`
fn headline(function: &str, e: &ChangelogEntry) -> String {
    let from = e.from.map(|v| format!(" ← @{v}")).unwrap_or_default();
    format!(
        "{} {} {function}@{}{from}, {} {} by {} (deployment {}): {}",
        time_ms(e.at),
        e.environment,
        e.version,
        e.strategy,
        e.kind.as_str(),
        e.actor,
        e.deployment,
        e.outcome.as_str()
    )
}

fn details(function: &str, e: &ChangelogEntry) -> Vec<String> {
    let mut lines = vec![format!("artifact {}", e.digest)];
    match (&e.commit, &e.source) {
        (Some(c), Some(s)) => lines.push(format!("commit {c} of {s}")),
        (Some(c), None) => lines.push(format!("commit {c}")),
        _ => {}
    }
    if let Some(r) = &e.reason {
        lines.push(format!("reason: {r}"));
    }
    if let Some(w) = &e.why {
        lines.push(format!("why: {w}"));
    }
    if e.held {
        lines.push(format!(
            "held: release with seal hold release {function}@{} --env {}",
            e.version, e.environment
        ));
    }
    lines
}

pub async fn releases(
    args: ReleasesArgs,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    match args.command {
        None => {
            let list: Releases = client.get_as("/v1/releases").await?;
            emit(out, &list, |l| {
                if l.releases.is_empty() {
                    println!("no release yet: seal apply -f FILE makes one");
                    return;
                }
                table(
                    &[
                        "ID",
                        "STATE",
                        "STARTED",
                        "BY",
                        "ENVIRONMENTS",
                        "FILE",
                        "COMMIT",
                    ],
                    l.releases
                        .iter()
                        .map(|r| {
                            vec![
                                r.id.to_string(),
                                r.state.clone(),
                                time_ms(r.created_at),
                                r.actor.clone(),
                                r.environments.join(","),
                                r.file_digest.chars().take(19).collect(),
                                r.source
                                    .as_ref()
                                    .and_then(|s| s.commit.as_deref())
                                    .map(|c| c.chars().take(12).collect())
                                    .unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect(),
                )
            });
        }
        Some(ReleasesCommand::Show { id }) => {
            let r: ReleaseRecord = client.get_as(&format!("/v1/releases/{id}")).await?;
            emit(out, &r, |r| {
                println!(
                    "release {} {} by {} on {} at {}",
                    r.id,
                    r.state,
                    r.actor,
                    r.node,
                    time_ms(r.created_at)
                );
                if let Some(s) = &r.source {
                    for (k, v) in [
                        ("commit", &s.commit),
                        ("author", &s.author),
                        ("message", &s.message),
                        ("path", &s.path),
                    ] {
                        if let Some(v) = v {
                            println!("  {k}: {v}");
                        }
                    }
                }
                print_plan(&r.plan);
                print_outcomes(&r.outcomes);
            });
        }
    }
    Ok(())
}
