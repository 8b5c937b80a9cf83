//! `seal capture …`: keep a sample of a function's real requests in an
//! environment (credentials removed), for replaying against a candidate.

use crate::client::Client;
use crate::commands::events::default_environment;
use crate::output::{OutputFormat, emit, table, time_ms};
use seal_api_types::capture::{
    Capture, CaptureDeleted, CaptureList, CapturedRequests, StartCapture,
};

#[derive(clap::Subcommand, Debug)]
pub enum CaptureCommand {
    /// Start keeping a sample of a function's requests in an environment.
    ///
    /// The gateway copies a sampled request (method, path, query, headers
    /// without Authorization, Proxy-Authorization and Cookie, the body up
    /// to --body-limit) and the response's status and body digest, off the
    /// request path: when the server cannot keep up, a sample is dropped
    /// and counted, never waited for. Starting again changes the rate and
    /// limits and keeps what was kept.
    Start {
        function: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
        /// Share of requests kept: 5%, 0.5%, 100%.
        #[arg(long, value_parser = parse_rate)]
        rate: f64,
        /// Requests kept at most (default 10000).
        #[arg(long)]
        max: Option<u64>,
        /// Body bytes kept per request, e.g. 16KiB (default 64KiB).
        #[arg(long, value_parser = super::server::parse_size)]
        body_limit: Option<u64>,
        /// Remove this header too (repeat for more), e.g. x-api-key.
        #[arg(long = "drop-header", value_name = "NAME")]
        drop_headers: Vec<String>,
    },
    /// Stop a capture; what it kept stays (for replays) until deleted.
    Stop {
        function: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
    /// List captures: rate, limits, how many requests each kept.
    List,
    /// Show the requests a capture kept, oldest first.
    Show {
        function: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Delete a capture and every request it kept.
    Delete {
        function: String,
        #[arg(long, short = 'e')]
        env: Option<String>,
    },
}

/// `5%`, `0.5%` or `5`: percent of requests, more than 0 and at most 100.
fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches('%').trim();
    let rate: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 5%)"))?;
    if !(rate > 0.0 && rate <= 100.0) {
        return Err(format!(
            "{s}: the rate is a share of requests, more than 0% and at most 100%"
        ));
    }
    Ok(rate)
}

fn print_capture(c: &Capture) {
    let state = if c.stopped_at.is_some() {
        format!(
            "stopped by {} at {}",
            c.stopped_by.as_deref().unwrap_or("?"),
            time_ms(c.stopped_at.unwrap_or_default())
        )
    } else if c.captured >= c.max {
        "full".to_owned()
    } else {
        "running".to_owned()
    };
    println!(
        "capture of {} in {}: {state}; {}% of requests, {} of at most {} kept, bodies up to {} bytes (started by {} at {})",
        c.function,
        c.environment,
        c.rate_percent,
        c.captured,
        c.max,
        c.body_limit,
        c.started_by,
        time_ms(c.started_at)
    );
}

pub async fn capture(
    cmd: CaptureCommand,
    client: &Client,
    out: OutputFormat,
) -> anyhow::Result<()> {
    let env_or_default = |env: Option<String>| async move {
        match env {
            Some(e) => Ok::<_, anyhow::Error>(e),
            None => default_environment(client).await,
        }
    };
    match cmd {
        CaptureCommand::Start {
            function,
            env,
            rate,
            max,
            body_limit,
            drop_headers,
        } => {
            super::deploy::check_names(&function, env.as_deref())?;
            let req = StartCapture {
                function,
                environment: env,
                rate_percent: rate,
                max,
                body_limit,
                drop_headers,
            };
            let c: Capture = client.post_as("/v1/captures", &req).await?;
            emit(out, &c, print_capture);
        }
        CaptureCommand::Stop { function, env } => {
            super::deploy::check_names(&function, env.as_deref())?;
            let env = env_or_default(env).await?;
            let c: Capture = client
                .post_as(
                    &format!("/v1/captures/{env}/{function}/stop"),
                    &serde_json::json!({}),
                )
                .await?;
            emit(out, &c, print_capture);
        }
        CaptureCommand::List => {
            let v: CaptureList = client.get_as("/v1/captures").await?;
            emit(out, &v, |v| {
                if v.captures.is_empty() {
                    println!("no captures (`seal capture start FN --env ENV --rate 5%`)");
                }
                for c in &v.captures {
                    print_capture(c);
                }
            });
        }
        CaptureCommand::Show {
            function,
            env,
            limit,
        } => {
            super::deploy::check_names(&function, env.as_deref())?;
            let env = env_or_default(env).await?;
            let v: CapturedRequests = client
                .get_as(&format!(
                    "/v1/captures/{env}/{function}/requests?limit={limit}"
                ))
                .await?;
            emit(out, &v, |v| {
                let rows = v
                    .requests
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            time_ms(r.at),
                            r.version.to_string(),
                            r.method.clone(),
                            r.path.clone(),
                            format!(
                                "{}{}",
                                r.body.len(),
                                if r.body_truncated { "+" } else { "" }
                            ),
                            r.status.to_string(),
                            format!("{}ms", r.duration_ms),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID", "AT", "VERSION", "METHOD", "PATH", "BODY", "STATUS", "TOOK",
                    ],
                    rows,
                );
            });
        }
        CaptureCommand::Delete { function, env } => {
            super::deploy::check_names(&function, env.as_deref())?;
            let env = env_or_default(env).await?;
            let path = format!("/v1/captures/{env}/{function}");
            let v: CaptureDeleted = client
                .send_as(
                    client.request(reqwest::Method::DELETE, &path),
                    "DELETE",
                    &path,
                )
                .await?;
            emit(out, &v, |v| {
                println!(
                    "capture of {} in {} deleted, with the {} requests it kept",
                    v.function, v.environment, v.deleted
                )
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_a_share_of_requests() {
        assert_eq!(parse_rate("5%"), Ok(5.0));
        assert_eq!(parse_rate("0.5%"), Ok(0.5));
        assert_eq!(parse_rate("100"), Ok(100.0));
        assert!(parse_rate("150%").unwrap_err().contains("at most 100%"));
        assert!(parse_rate("0%").is_err());
        assert!(parse_rate("five").unwrap_err().contains("not a percentage"));
    }
}
