//! Traffic capture, the control side: starting, stopping, listing and
//! deleting captures (audited, in the state store, so every node's
//! gateway samples by them), and the one task per node that persists what
//! its gateway sampled. The sampling itself is `seal_serving::capture`.

use crate::engine::Control;
use crate::error::{ControlError, ControlResult};
use seal_api_types::capture::{Capture, CapturedRequest, StartCapture};
use seal_serving::capture::{CaptureRule, Captured};
use std::sync::Arc;

/// Requests a capture keeps unless told otherwise.
pub const DEFAULT_MAX: u64 = 10_000;
/// The most a capture may keep.
pub const MAX_MAX: u64 = 1_000_000;
/// Body bytes kept per request unless told otherwise.
pub const DEFAULT_BODY_LIMIT: u64 = 64 * 1024;
/// The most body bytes a capture may keep per request.
pub const MAX_BODY_LIMIT: u64 = 1024 * 1024;
/// Records a write waits for at most before it starts.
const BATCH: usize = 256;
/// How long the writer lets records gather before a write.
const LINGER: std::time::Duration = std::time::Duration::from_millis(200);

impl Control {
    /// Starts (or restarts) capturing a function's requests in an
    /// environment. Refused: an unknown function or environment, a rate
    /// not in (0, 100] percent, a maximum or body cap out of range, a
    /// header name that is not one.
    pub async fn start_capture(&self, req: &StartCapture, actor: &str) -> ControlResult<Capture> {
        let environment = req
            .environment
            .clone()
            .unwrap_or_else(|| self.default_environment().to_owned());
        self.function_or_404(&req.function).await?;
        self.environment_must_exist(&environment).await?;
        if !req.rate_percent.is_finite() || req.rate_percent <= 0.0 || req.rate_percent > 100.0 {
            return Err(ControlError::bad_request(format!(
                "rate {}% is not a share of requests: give more than 0% and at most 100%",
                req.rate_percent
            )));
        }
        let max = req.max.unwrap_or(DEFAULT_MAX);
        if max == 0 || max > MAX_MAX {
            return Err(ControlError::bad_request(format!(
                "max {max}: a capture keeps 1 to {MAX_MAX} requests"
            )));
        }
        let body_limit = req.body_limit.unwrap_or(DEFAULT_BODY_LIMIT);
        if body_limit > MAX_BODY_LIMIT {
            return Err(ControlError::bad_request(format!(
                "body limit {body_limit} bytes: a capture keeps at most {MAX_BODY_LIMIT} bytes of a body"
            )));
        }
        let mut drop_headers = Vec::new();
        for h in &req.drop_headers {
            let name = http::HeaderName::try_from(h.as_str()).map_err(|_| {
                ControlError::bad_request(format!("drop header {h:?} is not a header name"))
            })?;
            drop_headers.push(name.as_str().to_owned());
        }
        // What a capture kept was filtered by its own drop list: a restart
        // that drops more would leave those headers in the earlier rows.
        let earlier = match self.capture_of(&environment, &req.function).await {
            Ok(c) => Some(c),
            Err(ControlError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(earlier) = earlier
            && earlier.captured > 0
        {
            let more: Vec<&str> = drop_headers
                .iter()
                .filter(|h| !earlier.drop_headers.contains(h))
                .map(String::as_str)
                .collect();
            if !more.is_empty() {
                return Err(ControlError::conflict(format!(
                    "the capture of {} in {environment} kept {} requests with {} in them: delete them first (`seal capture delete {} --env {environment}`), or restart without dropping more headers",
                    req.function,
                    earlier.captured,
                    more.join(", "),
                    req.function
                )));
            }
        }
        let capture = Capture {
            environment: environment.clone(),
            function: req.function.clone(),
            rate_percent: req.rate_percent,
            max,
            body_limit,
            drop_headers,
            started_at: seal_state::now_ms(),
            started_by: actor.to_owned(),
            stopped_at: None,
            stopped_by: None,
            captured: 0,
        };
        self.state.start_capture(&capture).await?;
        self.load_captures().await?;
        tracing::info!(function = %capture.function, environment = %capture.environment, rate_percent = capture.rate_percent, max, "capture started");
        self.capture_of(&environment, &req.function).await
    }

    /// A capture as stored, with the count it kept.
    pub async fn capture_of(&self, environment: &str, function: &str) -> ControlResult<Capture> {
        self.state
            .captures()
            .await?
            .into_iter()
            .find(|c| c.environment == environment && c.function == function)
            .ok_or_else(|| {
                ControlError::not_found(format!(
                    "no capture of {function} in {environment} (`seal capture start {function} --env {environment} --rate 5%`)"
                ))
            })
    }

    /// Stops a running capture; what it kept stays.
    pub async fn stop_capture(
        &self,
        environment: &str,
        function: &str,
        actor: &str,
    ) -> ControlResult<Capture> {
        let capture = self.capture_of(environment, function).await?;
        if !self
            .state
            .stop_capture(environment, function, actor)
            .await?
        {
            return Err(ControlError::conflict(format!(
                "the capture of {function} in {environment} was stopped already (by {} at {})",
                capture.stopped_by.as_deref().unwrap_or("?"),
                crate::desired::time(capture.stopped_at.unwrap_or_default())
            )));
        }
        self.load_captures().await?;
        self.capture_of(environment, function).await
    }

    /// Every capture.
    pub async fn captures(&self) -> ControlResult<Vec<Capture>> {
        Ok(self.state.captures().await?)
    }

    /// What a capture kept, oldest first.
    pub async fn captured(
        &self,
        environment: &str,
        function: &str,
        limit: u32,
    ) -> ControlResult<Vec<CapturedRequest>> {
        self.capture_of(environment, function).await?;
        Ok(self.state.captured(environment, function, limit).await?)
    }

    /// Deletes a capture and everything it kept.
    pub async fn delete_capture(
        &self,
        environment: &str,
        function: &str,
        actor: &str,
    ) -> ControlResult<u64> {
        let deleted = self
            .state
            .delete_capture(environment, function, actor)
            .await?
            .ok_or_else(|| {
                ControlError::not_found(format!("no capture of {function} in {environment}"))
            })?;
        self.load_captures().await?;
        Ok(deleted)
    }

    /// Sets this node's gateway sampling from the running captures in the
    /// store (at start, after a change here, and when another node's
    /// change is followed).
    pub async fn load_captures(&self) -> ControlResult<()> {
        let rules = self
            .state
            .captures()
            .await?
            .into_iter()
            .filter(Capture::running)
            .map(|c| CaptureRule {
                rate: c.rate_percent / 100.0,
                body_limit: c.body_limit as usize,
                remaining: c.max.saturating_sub(c.captured),
                drop_headers: c.drop_headers,
                environment: c.environment,
                function: c.function,
            })
            .collect();
        self.serving.captures().set(rules);
        Ok(())
    }

    /// Persists what this node's gateway samples, in batches, until `stop`
    /// (what is waiting then is written first). A store that refuses a
    /// batch loses it, logged: the requests were served either way.
    pub async fn run_capture_writer(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let Some(mut rx) = self.serving.captures().take_receiver() else {
            return;
        };
        let mut batch: Vec<Captured> = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => n,
                _ = stop.cancelled() => {
                    while let Ok(c) = rx.try_recv() {
                        batch.push(c);
                    }
                    self.write_captured(&mut batch).await;
                    // Requests still draining send theirs after this:
                    // [`Self::flush_captures`] writes them at the end.
                    self.serving.captures().put_back_receiver(rx);
                    return;
                }
            };
            if n == 0 {
                return;
            }
            // A moment for more to arrive: one transaction per batch, not
            // per request (at 5% of 15,000 req/s, one per record cost a
            // fifth of the throughput).
            if batch.len() < BATCH {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = stop.cancelled() => {}
                }
                while batch.len() < BATCH * 4 {
                    match rx.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
            }
            self.write_captured(&mut batch).await;
        }
    }

    /// Writes the records sampled since the writer stopped (requests that
    /// drained after it): the server's last step, after its listeners.
    pub async fn flush_captures(&self) {
        let Some(mut rx) = self.serving.captures().take_receiver() else {
            return;
        };
        let mut batch = Vec::new();
        while let Ok(c) = rx.try_recv() {
            batch.push(c);
        }
        self.write_captured(&mut batch).await;
        self.serving.captures().put_back_receiver(rx);
    }

    async fn write_captured(&self, batch: &mut Vec<Captured>) {
        if batch.is_empty() {
            return;
        }
        let rows: Vec<CapturedRequest> = batch
            .drain(..)
            .map(|c| CapturedRequest {
                id: 0,
                environment: c.environment,
                function: c.function,
                version: c.version,
                at: c.at,
                method: c.method,
                path: c.path,
                headers: c.headers,
                body: c.body,
                body_truncated: c.body_truncated,
                status: c.status,
                response_digest: c.response_digest,
                response_bytes: c.response_bytes,
                duration_ms: c.duration_ms,
            })
            .collect();
        match self.state.add_captured(&rows).await {
            Ok(kept) if (kept as usize) < rows.len() => {
                // A capture filled up (or stopped on another node): its
                // sampling stops here too.
                if let Err(e) = self.load_captures().await {
                    tracing::warn!(error = %e, "cannot reload the captures");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, requests = rows.len(), "cannot persist captured requests; they are lost")
            }
        }
    }
}
