//! `seal verify-release` and `seal trust server-key`: the evidence a
//! pipeline asks for before a version may serve in the next environment.

use crate::client::Client;
use crate::commands::trust::{VersionRef, parse_version_ref};
use crate::output::{OutputFormat, emit};
use seal_api_types::promotion::{ServerKey, VerifyRelease, VerifyReport};

#[derive(clap::Args, Debug)]
pub struct VerifyReleaseArgs {
    /// FUNCTION@VERSION, the candidate, e.g. hello@7.
    #[arg(value_parser = parse_version_ref)]
    version: VersionRef,
    /// Where the candidate and the baseline run, with its config (e.g. staging).
    #[arg(long, short = 'e')]
    env: String,
    /// Whose captured requests are replayed, and whose serving version is
    /// the baseline (e.g. production).
    #[arg(long)]
    replay: String,
    /// Captured requests replayed at most (default 500).
    #[arg(long)]
    count: Option<u32>,
    /// Refuse every outbound request and event of both (side effects that
    /// must not repeat).
    #[arg(long)]
    deny_outbound: bool,
    /// A JSON pointer never compared (repeat for more), e.g. /meta/generated_at.
    #[arg(long, value_name = "POINTER")]
    ignore: Vec<String>,
    /// The share of requests that may differ beyond the noise: 1% (default), 0%.
    #[arg(long, value_parser = parse_percent)]
    max_mismatch: Option<f64>,
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let n: f64 = s
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 1%)"))?;
    if !(0.0..=100.0).contains(&n) {
        return Err(format!("{s}: give 0% to 100%"));
    }
    Ok(n)
}

/// A failed verification exits non-zero (3), after its report.
#[derive(Debug)]
pub struct VerificationFailed;

impl std::fmt::Display for VerificationFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the verification failed")
    }
}

impl std::error::Error for VerificationFailed {}

pub async fn verify_release(
    args: VerifyReleaseArgs,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    super::deploy::check_names(&args.version.function, Some(&args.env))?;
    super::deploy::check_names("x", Some(&args.replay))?;
    let req = VerifyRelease {
        function: args.version.function.clone(),
        version: args.version.version,
        environment: args.env,
        replay: args.replay,
        count: args.count,
        deny_outbound: args.deny_outbound,
        ignore: args.ignore,
        max_mismatch_percent: args.max_mismatch,
    };
    let r: VerifyReport = client.post_as("/v1/verify-release", &req).await?;
    emit(out, &r, |r| {
        println!(
            "{}@{} in {} against {}@{} (serving {}), {} captured requests of {} replayed{}",
            r.function,
            r.version,
            r.environment,
            r.function,
            r.baseline_version,
            r.replay,
            r.requests,
            r.replay,
            if r.deny_outbound {
                ", outbound refused"
            } else {
                ""
            }
        );
        for route in &r.routes {
            println!(
                "  {}: {} of {} differ ({}%)",
                route.route, route.mismatches, route.requests, route.mismatch_percent
            );
            for d in &route.differences {
                println!(
                    "    {} differs in {} (request {}): baseline {}, candidate {}",
                    d.field,
                    d.count,
                    d.request,
                    d.baseline.as_deref().unwrap_or("(absent)"),
                    d.candidate.as_deref().unwrap_or("(absent)")
                );
            }
        }
        if !r.noisy.is_empty() {
            println!(
                "  noise (differs between two runs of the baseline, not counted): {}",
                r.noisy.join("; ")
            );
        }
        println!(
            "  errors: baseline {}, candidate {}; p50 {:.2} ms → {:.2} ms, p95 {:.2} ms → {:.2} ms",
            r.baseline_errors,
            r.candidate_errors,
            r.baseline_p50_ms,
            r.candidate_p50_ms,
            r.baseline_p95_ms,
            r.candidate_p95_ms
        );
        println!("{}", r.verdict);
        if let Some(a) = &r.attestation {
            println!(
                "signed verification summary attached to {}@{}: {a}",
                r.function, r.version
            );
        }
    });
    if r.passed {
        Ok(())
    } else {
        Err(VerificationFailed.into())
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum TrustCommand {
    /// The key this server signs its own attestations with (a passed
    /// verification): the same on every node of one master key.
    ServerKey,
}

pub async fn trust(cmd: TrustCommand, client: &Client, out: OutputFormat) -> anyhow::Result<()> {
    match cmd {
        TrustCommand::ServerKey => {
            let k: ServerKey = client.get_as("/v1/server-key").await?;
            emit(out, &k, |k| {
                println!("key id {}", k.keyid);
                print!("{}", k.pem);
            });
        }
    }
    Ok(())
}
