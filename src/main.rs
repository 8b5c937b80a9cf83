//! `seal`: one executable for the server (`seal server`) and every client
//! command. Thin: parsing and printing live here, the work in the crates.

// mimalloc: per-request host allocations (store, WASI context, HTTP
// resources) are many and short-lived; measured +4% req/s on hello over
// glibc malloc (bench/RESULTS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the Seal server: gateway, control API and runtime.
    Server(commands::server::ServerArgs),
    /// Build (if a project directory), seal and upload a component as a new version.
    Publish(commands::publish::PublishArgs),
    /// Send all traffic of an environment to a version (all-at-once).
    Deploy(commands::deploy::DeployArgs),
    /// Return an environment to the version that served before (or --to N).
    Rollback(commands::deploy::RollbackArgs),
    /// List functions and where they are deployed.
    Functions,
    /// List the versions of a function.
    Versions(commands::query::FunctionArg),
    /// Show what serves a function in each environment, with live counters.
    Status(commands::query::FunctionArg),
    /// List the deployments of a function, newest first.
    Deployments(commands::query::DeploymentsArgs),
    /// Show one deployment and its events.
    Deployment(commands::query::DeploymentArg),
    /// Show a version in full (FUNCTION@N): manifest, digests, routes; verifies its blobs.
    Inspect(commands::query::InspectArgs),
    /// Show the audit log, newest first.
    Audit(commands::query::AuditArgs),
    /// List or create environments.
    #[command(subcommand)]
    Env(commands::query::EnvCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let out = cli.output;
    let client = || client::Client::new(&cli.server);
    match cli.command {
        Command::Server(args) => commands::server::run(args, out).await,
        Command::Publish(args) => commands::publish::run(args, &client()?, out).await,
        Command::Deploy(args) => commands::deploy::deploy(args, &client()?, out).await,
        Command::Rollback(args) => commands::deploy::rollback(args, &client()?, out).await,
        Command::Functions => commands::query::functions(&client()?, out).await,
        Command::Versions(args) => commands::query::versions(args, &client()?, out).await,
        Command::Status(args) => commands::query::status(args, &client()?, out).await,
        Command::Deployments(args) => commands::query::deployments(args, &client()?, out).await,
        Command::Deployment(args) => commands::query::deployment(args, &client()?, out).await,
        Command::Inspect(args) => commands::query::inspect(args, &client()?, out).await,
        Command::Audit(args) => commands::query::audit(args, &client()?, out).await,
        Command::Env(cmd) => commands::query::env(cmd, &client()?, out).await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
