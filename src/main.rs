//! `seal`: one executable for the server (`seal server`) and every client
//! command. Thin: parsing and printing live here, the work in the crates.

// mimalloc: per-request host allocations (store, WASI context, HTTP
// resources) are many and short-lived; measured +4% req/s on hello over
// glibc malloc (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often, at most, an idle worker thread hands its free memory back.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Run by each runtime worker as it goes idle: at most every
/// [`COLLECT_EVERY`], mimalloc returns the pages this thread freed to the
/// OS. Without it, memory freed after a burst (10,000 connections closed at
/// once) stays resident until the same thread allocates enough again, and
/// an idle server keeps the peak's RSS.
#[allow(unsafe_code)] // one FFI call into the allocator, see below
fn collect_when_idle() {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    LAST.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_some_and(|t| now.duration_since(t) < COLLECT_EVERY)
        {
            return;
        }
        last.set(Some(now));
        // SAFETY: takes no pointer and may be called from any thread at
        // any time; it returns free memory (this thread's and abandoned
        // segments') to the OS and touches no live allocation.
        unsafe { libmimalloc_sys::mi_collect(true) };
    });
}

/// Errors made by libraries capture no backtrace unless
/// `RUST_LIB_BACKTRACE` asks for one, even when `RUST_BACKTRACE` is set
/// (panics keep theirs). Wasmtime makes an error each time a store is
/// dropped; with `RUST_BACKTRACE=1` capturing its backtrace took ~11% of
/// a server's CPU serving fresh instances (bench/RESULTS.md).
#[allow(unsafe_code)] // setting an environment variable, see below
fn no_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in `main`, before any other thread
        // exists, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

mod client;
mod commands;
mod output;

use clap::{Parser, Subcommand};
use output::OutputFormat;

/// Seal: a self-hosted serverless platform built around immutable deployment.
///
/// Publish a WebAssembly component as a sealed, content-addressed version,
/// move traffic to it with a recorded deployment, and roll back in
/// milliseconds.
///
/// Quick start:
///   seal server &                       # gateway :8080, API :8081, data ./.seal
///   seal publish examples/hello         # → hello@1 sha256:…
///   seal deploy hello 1                 # production serves hello@1
///   curl http://127.0.0.1:8080/hello/
#[derive(Parser, Debug)]
#[command(name = "seal", version, verbatim_doc_comment)]
struct Cli {
    /// Output format of client commands.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,

    /// URL of the Seal control API.
    #[arg(
        long,
        global = true,
        env = "SEAL_SERVER",
        default_value = "http://127.0.0.1:8081"
    )]
    server: String,

    /// API token (viewer, deployer or admin). Without one, a CLI talking to
    /// a server on this machine reads <data-dir>/admin.token.
    #[arg(long, global = true, env = "SEAL_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// Where the server keeps state, artifacts, compiled components and the
    /// admin token.
    #[arg(long, global = true, env = "SEAL_DATA_DIR", default_value = "./.seal")]
    data_dir: std::path::PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Seal server: gateway, control API and runtime.
    Server(commands::server::ServerArgs),
    /// Build (if a project directory), seal and upload a component as a new version.
    ///
    /// With --sign KEYFILE the version also gets a signed SLSA provenance
    /// attestation about its digest: where the source came from (--source,
    /// or the git remote), which commit (--commit, or git HEAD), the build
    /// command, the Cargo.lock dependencies and the builder. Environments
    /// whose policy requires a signature accept only such versions.
    #[command(after_long_help = PUBLISH_EXAMPLES)]
    Publish(commands::publish::PublishArgs),
    /// Move the traffic of an environment to a version: at once, or progressively.
    ///
    /// all-at-once (the default) switches the route in one recorded
    /// deployment. canary (--steps), linear (--increment) and blue-green move
    /// traffic in steps of --interval, judge the candidate by its gates at
    /// each step, and roll back on their own when a gate fails; only one
    /// deployment of a route runs at a time.
    ///
    /// Gates are absolute limits on the candidate (--max-error-rate,
    /// --max-latency) or limits relative to the baseline measured in the same
    /// window (--max-error-rate-increase, --max-latency-increase), and a
    /// breach that is statistically certain rolls back at once. With too
    /// little traffic a verdict is "inconclusive": the step waits for more
    /// (or fails, with --on-inconclusive fail) until --progress-deadline.
    #[command(after_long_help = DEPLOY_EXAMPLES)]
    Deploy(commands::deploy::DeployArgs),
    /// Return an environment to the version that served before (or --to N).
    ///
    /// Refused while a progressive deployment is active: use `seal abort ID`.
    Rollback(commands::deploy::RollbackArgs),
    /// Follow progressive deployments.
    #[command(subcommand)]
    Rollout(commands::rollout::RolloutCommand),
    /// Let a paused deployment (--approve-before-promote) go on.
    Approve(commands::rollout::DeploymentId),
    /// Skip the remaining steps and gates: send all traffic to the candidate now.
    Promote(commands::rollout::DeploymentId),
    /// Stop a progressive deployment: all traffic back to the baseline.
    Abort(commands::rollout::DeploymentId),
    /// List functions and where they are deployed.
    Functions,
    /// List the versions of a function.
    Versions(commands::query::FunctionArg),
    /// Show what serves a function in each environment, with live counters.
    Status(commands::query::FunctionArg),
    /// List the deployments of a function, newest first (or `show ID`).
    Deployments(commands::query::DeploymentsArgs),
    /// Show one deployment and its events.
    Deployment(commands::query::DeploymentArg),
    /// Show a version in full (FUNCTION@N): manifest, digests, routes; verifies its blobs.
    Inspect(commands::query::InspectArgs),
    /// Show the audit log, newest first; `seal audit verify` checks its hash chain.
    ///
    /// Every entry carries the SHA-256 of the entry before it and its own
    /// hash, so an edited, removed or reordered entry breaks the chain.
    Audit(commands::query::AuditArgs),
    /// List or create environments.
    #[command(subcommand)]
    Env(commands::query::EnvCommand),
    /// Show the invocation and guest logs of a function (or follow them with -f).
    ///
    /// Each invocation is one record (status, duration, cold start, memory,
    /// GB-seconds, request and trace ids), and every line the guest writes to
    /// stdout or stderr is one record tied to its request id. The server keeps
    /// the newest records of all functions in memory; its own log output is
    /// the durable copy. With --output json each record is printed as the JSON
    /// line the server sent.
    #[command(after_long_help = LOGS_EXAMPLES)]
    Logs(commands::observe::LogsArgs),
    /// Live table of every routed version: traffic, errors, latency, cold starts.
    ///
    /// Numbers are measured over the server's sliding window (about 10 s);
    /// COLD is the cold starts in the window, with the total since the version
    /// was loaded in parentheses. With --output json, one JSON line per frame.
    #[command(after_long_help = TOP_EXAMPLES)]
    Top(commands::observe::TopArgs),
    /// Show what a function consumed: invocations and GB-seconds per version, and its budget.
    ///
    /// GB-seconds are memory (in GB) × execution time (in seconds), counted
    /// per hour: --since counts from the start of the hour it falls in.
    #[command(after_long_help = COST_EXAMPLES)]
    Cost(commands::observe::CostArgs),
    /// Set or remove the GB-seconds budget of a function.
    #[command(subcommand, after_long_help = COST_EXAMPLES)]
    Budget(commands::observe::BudgetCommand),
    /// Print a generated Grafana dashboard or Prometheus alerting rules for a function.
    ///
    /// The same files are also written by the server to
    /// <data-dir>/monitoring/<function>/ (dashboard.json, rules.yml) on each
    /// deploy and budget change, ready for file-based provisioning.
    #[command(after_long_help = MONITORING_EXAMPLES)]
    Monitoring(commands::observe::MonitoringArgs),
    /// Create, list and revoke API tokens (admin).
    ///
    /// Every API call but the health check needs a token. On its first start
    /// the server writes an admin token to <data-dir>/admin.token (mode
    /// 0600); the CLI uses --token or SEAL_TOKEN, and otherwise that file
    /// when the server is on this machine.
    #[command(subcommand, after_long_help = TOKEN_EXAMPLES)]
    Token(commands::access::TokenCommand),
    /// Show which token the CLI is using: name, role, environments.
    Whoami,
    /// Config values of a function per environment (plain; guests read them
    /// as environment variables).
    ///
    /// A guest sees only the keys its manifest declares in [capabilities]
    /// config_keys. Every change is a revision (who, when, which keys);
    /// each invocation's log record carries the revision it ran with.
    #[command(subcommand, after_long_help = SETTINGS_EXAMPLES)]
    Config(commands::settings::ConfigCommand),
    /// Secrets of a function per environment: encrypted at rest, never shown.
    ///
    /// Values are read from standard input, encrypted with the server's
    /// master key (SEAL_MASTER_KEY or <data-dir>/master.key), and reach the
    /// guest as environment variables if its manifest declares the key. The
    /// API, logs, metrics and errors name secrets, never their values.
    #[command(subcommand, after_long_help = SETTINGS_EXAMPLES)]
    Secrets(commands::settings::SecretsCommand),
    /// Create an Ed25519 key pair for signing releases (no server needed).
    ///
    /// The private key (PKCS#8 PEM, mode 0600) signs with `seal publish
    /// --sign`; keep it secret, e.g. in your CI's secret store. The public
    /// key (.pub, SPKI PEM) is what an environment trusts (`seal policy set
    /// --trusted-key`) and what `seal verify --key` checks against. Both
    /// are named by the same key id: sha256 of the public key.
    #[command(after_long_help = TRUST_EXAMPLES)]
    Keygen(commands::trust::KeygenArgs),
    /// Check a version (FUNCTION@N): its blobs, its signed attestations, and
    /// whether an environment's policy would let it serve.
    ///
    /// Prints one line per check and exits non-zero, with the reason, when
    /// any fails: a damaged blob, the environment's policy refusing the
    /// version, or (with --key) no attestation signed by a given key about
    /// this artifact with valid SLSA provenance.
    #[command(after_long_help = TRUST_EXAMPLES)]
    Verify(commands::trust::VerifyArgs),
    /// What an environment demands before a version may serve there:
    /// signatures by trusted keys and provenance (set and clear: admin).
    ///
    /// The policy is checked on every deploy, rollback and progressive
    /// step into the environment; a refusal names the exact reason. An
    /// environment without a policy accepts any version.
    #[command(subcommand, after_long_help = TRUST_EXAMPLES)]
    Policy(commands::trust::PolicyCommand),
    /// Replay a capture to a candidate and to the version serving where it
    /// was captured, both in one environment, and compare their answers.
    ///
    /// `seal verify-release hello@7 --env staging --replay production`:
    /// production's captured requests (`seal capture`) go to hello@7 and
    /// to production's serving version, both run in staging with its
    /// config. The baseline runs twice, so fields that differ between two
    /// runs of the same code (timestamps, ids) are learned per route and
    /// never counted; JSON bodies are compared leaf by leaf. The report
    /// gives each route's mismatch rate with examples, errors and latency;
    /// the verdict is signed by the server's key as an SLSA verification
    /// summary attached to hello@7 — what `seal env create production
    /// --require-verification` asks for. Exits 3 when it failed.
    VerifyRelease(commands::promotion::VerifyReleaseArgs),
    /// The server's own trust: the key it signs its attestations with.
    #[command(subcommand)]
    Trust(commands::promotion::TrustCommand),
    /// List a version's signed attestations, or remove one (admin).
    #[command(subcommand)]
    Attestations(commands::trust::AttestationsCommand),
    /// Durable event queues of an environment: create, list, delete.
    ///
    /// An event is committed before its producer gets the 202, and each is
    /// handled or dead-lettered, never lost. Producers post CloudEvents
    /// (binary, structured or batch mode) to
    /// /v1/queues/ENV/QUEUE/events, or use `seal events send`.
    #[command(subcommand, after_long_help = EVENTS_EXAMPLES)]
    Queue(commands::events::QueueCommand),
    /// Bind a function to a queue or a cron schedule; list, delete, runs.
    ///
    /// Events reach the function as CloudEvents in HTTP binary mode. Its
    /// answer decides: 2xx = done; 408, 409, 429, 5xx, a trap, a timeout or
    /// a memory kill = retried with backoff, dead-lettered after the last
    /// attempt; any other 4xx = dead-lettered at once. Each event picks its
    /// version by a hash of its id against the route's weights, so a canary
    /// is judged on events too and a retry stays on one version.
    #[command(subcommand, after_long_help = EVENTS_EXAMPLES)]
    Trigger(commands::events::TriggerCommand),
    /// Feature flags per environment, in flagd's JSON format: apply, list, get, history, delete.
    #[command(subcommand)]
    Flags(commands::flags::FlagsCommand),
    /// Keep a sample of a function's real requests (credentials removed), for replays.
    #[command(subcommand)]
    Capture(commands::capture::CaptureCommand),
    /// Send an event to a queue, or show one with every attempt.
    #[command(subcommand, after_long_help = EVENTS_EXAMPLES)]
    Events(commands::events::EventsCommand),
    /// Dead letters: list, show, redrive (to the live route or --to N), purge.
    #[command(subcommand, after_long_help = EVENTS_EXAMPLES)]
    Dlq(commands::events::DlqCommand),
    /// The nodes sharing one PostgreSQL store and which one is the controller.
    ///
    /// Every node serves HTTP and events; the controller (one node at a time,
    /// by a lease renewed every second) also drives deployments and fires
    /// cron ticks. When it dies another node takes over within 5 s and
    /// resumes every deployment from its committed step.
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterCommand),
    /// Copy the embedded state of the data dir into an empty PostgreSQL store, its artifacts into a registry.
    ///
    /// Every table is copied row for row in one transaction (ids, audit
    /// hashes and sealed secrets as they are), read back and compared by
    /// digest, and the audit chain's head must match; nothing is committed
    /// otherwise. With --artifacts, every artifact and attestation of the
    /// data dir's layout is pushed to a registry, each blob read back and
    /// re-hashed. Stop the server first. Compiled code and the master key
    /// stay in the data dir: start the server with the same data dir and
    /// --state URL, --artifacts URL.
    Migrate(commands::server::MigrateArgs),
    /// Write today's state as a release file (TOML): what each environment serves.
    ///
    /// For every routed function: the version and digest it serves, its
    /// config values and the names of its secrets (never their values).
    /// `seal apply -f` of what it writes changes nothing.
    #[command(after_long_help = DESIRED_EXAMPLES)]
    Export(commands::desired::ExportArgs),
    /// Make the environments of a release file serve what it says (or --plan).
    ///
    /// The server computes one ordered plan (each function after those its
    /// `after` names; settings, then the route, with the file's rollout
    /// strategy and gates), then carries it out through the same deploy and
    /// settings services as every other command, waiting for each
    /// progressive deployment to end. When a step fails, the functions
    /// this apply already moved go back to what they served before.
    /// Applying the same file again changes nothing. The audit log records
    /// the file's digest and, in a git work tree, the commit, author and
    /// message.
    #[command(after_long_help = DESIRED_EXAMPLES)]
    Apply(commands::desired::ApplyArgs),
    /// Compare a release file with what serves: exit 0 in sync, 3 when it drifted.
    ///
    /// Each difference says why when it can: a manual deploy or rollback
    /// (who, when, which command), a rollback by a gate (with its numbers),
    /// a config change (who, when, which revision). A field left out of the
    /// file is never a difference.
    #[command(after_long_help = DESIRED_EXAMPLES)]
    Diff(commands::desired::DiffArgs),
    /// Show the last drift check of each environment: exit 0 in sync, 3 when one drifted.
    ///
    /// Every environment a release file was applied to is compared with it
    /// every `--drift-interval`; this prints each one's differences,
    /// functions and the environment's own settings (protection, trust
    /// policy, queues) alike, each with why.
    Drift(commands::desired::DriftArgs),
    /// List the versions held per environment: rolled back, so no apply deploys them again.
    ///
    /// A version a gate or a failed hook rolled back, a canary a person
    /// aborted, and the version `seal rollback` left are held in that
    /// environment until `seal hold release FUNCTION@N`.
    #[command(after_long_help = DESIRED_EXAMPLES)]
    Holds(commands::desired::HoldsArgs),
    /// Release a held version (`seal hold release hello@7 --env production`), audited.
    #[command(subcommand, after_long_help = DESIRED_EXAMPLES)]
    Hold(commands::desired::HoldCommand),
    /// A function's deployments, newest first: commit → version → deployment → outcome.
    ///
    /// Each entry: the version and its artifact digest, the commit and
    /// source its SLSA provenance names, who deployed it how (strategy,
    /// and the apply and release-file commit when an apply did), and how
    /// it ended (succeeded, rolled back by which gate with its numbers,
    /// aborted by a hook, still held). --format markdown for release notes.
    #[command(after_long_help = DESIRED_EXAMPLES)]
    Changelog(commands::desired::ChangelogArgs),
    /// The applies of release files, newest first (or `show ID`): one id, one state each.
    ///
    /// A release runs one at a time across every node; it ends succeeded,
    /// failed (a step failed and what it had moved went back) or
    /// rolled_back (a restart interrupted it, and it was rolled back as a
    /// whole when the server came back).
    #[command(after_long_help = DESIRED_EXAMPLES)]
    Releases(commands::desired::ReleasesArgs),
}

const DESIRED_EXAMPLES: &str = "\
Examples:
  seal export -e production > release.toml   # today's state
  seal apply -f release.toml --plan          # what would change, in order
  seal apply -f release.toml                 # carry it out
  seal diff -f release.toml                  # exit 3 and why, when it drifted
  seal holds -e production                   # versions rolled back: apply refuses them
  seal hold release checkout@7 -e production # after the fix: apply may deploy it again
  seal changelog checkout -e production --since 7d --format markdown
  seal releases; seal releases show 12       # every apply: state and each step's outcome

A release file:
  [environments.production.functions.billing]
  version = 4
  config = { CURRENCY = \"EUR\" }
  secrets = [\"STRIPE_KEY\"]               # names only: seal secrets set

  [environments.production.functions.checkout]
  version = 7
  after = [\"billing\"]                     # changed after billing
  [environments.production.functions.checkout.rollout]
  strategy = \"canary\"
  steps = [10, 50]
  interval_ms = 60000
  gates = { max_error_rate = 0.01 }";

const EVENTS_EXAMPLES: &str = "\
Examples:
  seal queue create orders -e staging
  seal trigger create queue --function billing --queue orders -e staging \\
      --max-attempts 5 --backoff 1s..30s --max-age 1h --max-in-flight 16
  seal trigger create cron --function report --schedule '*/5 * * * *' \\
      --timezone Europe/Paris --overlap forbid -e staging
  seal events send orders --type order.created --data @order.json -e staging
  seal events show 42                      # every attempt: version, digest, status
  seal trigger runs staging-report-cron
  seal dlq list --queue orders
  seal dlq redrive --all --queue orders --to 4";

const PUBLISH_EXAMPLES: &str = "\
Examples:
  seal publish examples/hello                   # build, seal, upload → hello@1
  seal publish hello.wasm --name hello --allow-host api.example.org
  seal publish examples/hello --sign release.key
  seal publish dist/hello.wasm --sign release.key \\
      --source git+https://example.org/team/hello --commit \"$GIT_SHA\"";

const TRUST_EXAMPLES: &str = "\
Examples:
  seal keygen --out release.key                 # release.key (secret) + release.pub
  seal publish examples/hello --sign release.key
  seal policy set production --require-signature --trusted-key release.pub \\
      --require-provenance source=git+https://example.org/team/hello --require-provenance commit
  seal policy show production
  seal verify hello@3 --key release.pub -e production
  seal deploy hello 3 -e production             # refused unless the policy is met
  seal policy clear production";

const SETTINGS_EXAMPLES: &str = "\
Examples:
  seal config set hello GREETING=hi --env staging
  seal config get hello --env staging
  seal config unset hello GREETING --env staging
  printf %s \"$API_KEY\" | seal secrets set hello API_KEY --env production
  seal secrets list hello --env production
  seal config history hello";

const TOKEN_EXAMPLES: &str = "\
Examples:
  seal token create --role deployer --env staging --name ci-staging
  SEAL_TOKEN=seal_… seal deploy hello 3 -e staging
  seal token list
  seal token revoke tk_1a2b3c4d
  seal whoami";

const LOGS_EXAMPLES: &str = "\
Examples:
  seal logs hello                          # the newest 100 records
  seal logs hello -e production --status 5xx --since 10m
  seal logs hello --version 2 -f           # follow until Ctrl-C
  seal logs hello -o json | jq 'select(.kind == \"invocation\") | .duration_ms'";

const TOP_EXAMPLES: &str = "\
Examples:
  seal top                                 # refresh every second until Ctrl-C
  seal top -e production --interval 5s
  seal top --iterations 1 -o json          # one frame, for scripts";

const COST_EXAMPLES: &str = "\
Examples:
  seal cost hello                          # the last 24 hours
  seal cost hello --since 30d -e production
  seal budget set hello --gb-seconds 100   # per calendar month (UTC)
  seal budget set hello --gb-seconds 5 --period day --webhook http://alerts.internal/seal
  seal budget delete hello";

const MONITORING_EXAMPLES: &str = "\
Examples:
  seal monitoring hello --grafana --out hello-dashboard.json
  seal monitoring hello --prometheus-rules > /etc/prometheus/rules/hello.yml";

const DEPLOY_EXAMPLES: &str = "\
Examples:
  seal deploy hello 2                      # all at once
  seal deploy hello 2 -e production --strategy canary --steps 10,50,100 \\
      --interval 30s --max-error-rate 1% --max-latency p99=200ms \\
      --max-error-rate-increase 0.5% --min-requests 50 --progress-deadline 10m
  seal deploy hello 2 --strategy canary --steps 10,50 --plan   # show the plan, change nothing
  seal deploy hello 2 --strategy linear --increment 20 --interval 1m --wait
  seal deploy hello 3 -e production --allow-new-permissions   # admin: v3 may do more than v2
  seal rollout status hello -e production --watch
  seal approve 7    seal promote 7    seal abort 7";

fn main() -> std::process::ExitCode {
    no_library_backtraces();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Server(_)) {
        // A client command whose reader went away (`seal audit | head`)
        // ends quietly, as other command-line tools do, instead of
        // panicking on its next write. Never for the server: a client
        // hanging up on it must not end it.
        sigpipe::reset();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(collect_when_idle)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A background task that never yields (seen: a database pool's
    // maintenance task after `seal migrate` failed) must not keep the
    // process from exiting once the command is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Printed already: only the exit code says it.
        Err(e) if e.is::<commands::desired::Drifted>() => {
            std::process::ExitCode::from(commands::desired::DRIFTED)
        }
        // The report says why.
        Err(e) if e.is::<commands::promotion::VerificationFailed>() => {
            std::process::ExitCode::from(commands::desired::DRIFTED)
        }
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = cli.output;
    let client = || client::Client::new(&cli.server, cli.token.as_deref(), &cli.data_dir);
    match cli.command {
        Command::Server(args) => commands::server::run(args, cli.data_dir.clone(), out).await,
        Command::Publish(args) => commands::publish::run(args, &client()?, out).await,
        Command::Deploy(args) => commands::deploy::deploy(args, &client()?, out).await,
        Command::Rollback(args) => commands::deploy::rollback(args, &client()?, out).await,
        Command::Rollout(commands::rollout::RolloutCommand::Status(args)) => {
            commands::rollout::status(args, &client()?, out).await
        }
        Command::Approve(args) => {
            commands::rollout::act(commands::rollout::Action::Approve, args, &client()?, out).await
        }
        Command::Promote(args) => {
            commands::rollout::act(commands::rollout::Action::Promote, args, &client()?, out).await
        }
        Command::Abort(args) => {
            commands::rollout::act(commands::rollout::Action::Abort, args, &client()?, out).await
        }
        Command::Functions => commands::query::functions(&client()?, out).await,
        Command::Versions(args) => commands::query::versions(args, &client()?, out).await,
        Command::Status(args) => commands::query::status(args, &client()?, out).await,
        Command::Deployments(args) => commands::query::deployments(args, &client()?, out).await,
        Command::Deployment(args) => commands::query::deployment(args, &client()?, out).await,
        Command::Inspect(args) => commands::query::inspect(args, &client()?, out).await,
        Command::Audit(args) => commands::query::audit(args, &client()?, out).await,
        Command::Env(cmd) => commands::query::env(cmd, &client()?, out).await,
        Command::Logs(args) => commands::observe::logs(args, &client()?, out).await,
        Command::Top(args) => commands::observe::top(args, &client()?, out).await,
        Command::Cost(args) => commands::observe::cost(args, &client()?, out).await,
        Command::Budget(cmd) => commands::observe::budget(cmd, &client()?, out).await,
        Command::Monitoring(args) => commands::observe::monitoring(args, &client()?, out).await,
        Command::Token(cmd) => commands::access::token(cmd, &client()?, out).await,
        Command::Whoami => commands::access::whoami(&client()?, out).await,
        Command::Config(cmd) => commands::settings::config(cmd, &client()?, out).await,
        Command::Secrets(cmd) => commands::settings::secrets(cmd, &client()?, out).await,
        Command::Keygen(args) => commands::trust::keygen(args, out),
        Command::VerifyRelease(args) => {
            commands::promotion::verify_release(args, &client()?, out).await
        }
        Command::Trust(cmd) => commands::promotion::trust(cmd, &client()?, out).await,
        Command::Verify(args) => commands::trust::verify(args, &client()?, out).await,
        Command::Policy(cmd) => commands::trust::policy(cmd, &client()?, out).await,
        Command::Attestations(cmd) => commands::trust::attestations(cmd, &client()?, out).await,
        Command::Queue(cmd) => commands::events::queue(cmd, &client()?, out).await,
        Command::Trigger(cmd) => commands::events::trigger(cmd, &client()?, out).await,
        Command::Capture(cmd) => commands::capture::capture(cmd, &client()?, out).await,
        Command::Flags(cmd) => commands::flags::flags(cmd, &client()?, out).await,
        Command::Events(cmd) => commands::events::events(cmd, &client()?, out).await,
        Command::Dlq(cmd) => commands::events::dlq(cmd, &client()?, out).await,
        Command::Cluster(cmd) => commands::cluster::cluster(cmd, &client()?, out).await,
        Command::Migrate(args) => commands::server::migrate(args, cli.data_dir.clone(), out).await,
        Command::Export(args) => commands::desired::export(args, &client()?, out).await,
        Command::Apply(args) => commands::desired::apply(args, &client()?, out).await,
        Command::Diff(args) => commands::desired::diff(args, &client()?, out).await,
        Command::Drift(args) => commands::desired::drift(args, &client()?, out).await,
        Command::Holds(args) => commands::desired::holds(args, &client()?, out).await,
        Command::Hold(cmd) => commands::desired::hold(cmd, &client()?, out).await,
        Command::Changelog(args) => commands::desired::changelog(args, &client()?, out).await,
        Command::Releases(args) => commands::desired::releases(args, &client()?, out).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn deployments_lists_or_shows() {
        use clap::Parser;
        let parse =
            |argv: &[&str]| super::Cli::try_parse_from(argv).map(|c| format!("{:?}", c.command));
        let list = parse(&["seal", "deployments", "hello", "-e", "production"]).expect("list");
        assert!(
            list.contains("function: Some(\"hello\")") && list.contains("production"),
            "{list}"
        );
        let show = parse(&["seal", "deployments", "show", "7"]).expect("show");
        assert!(show.contains("Show(DeploymentArg { id: 7 })"), "{show}");
        let named_show =
            parse(&["seal", "deployments", "--", "show"]).expect("a function named show");
        assert!(
            named_show.contains("function: Some(\"show\")"),
            "{named_show}"
        );
        assert!(parse(&["seal", "deployments"]).is_err());
        assert!(parse(&["seal", "deployments", "show"]).is_err());
        assert!(parse(&["seal", "deployments", "-e", "production", "show", "7"]).is_err());
        assert!(parse(&["seal", "deployment", "7"]).is_ok());
        assert!(
            parse(&[
                "seal",
                "rollout",
                "status",
                "hello",
                "-e",
                "production",
                "--watch"
            ])
            .is_ok()
        );
        for verb in ["approve", "promote", "abort"] {
            assert!(parse(&["seal", verb, "7"]).is_ok());
            assert!(parse(&["seal", verb, "x"]).is_err());
        }
    }
}
