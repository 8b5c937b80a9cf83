//! An in-process server for crate tests: the whole server built by
//! [`start`](crate::start) with its real stores on a temporary data dir,
//! both listeners on `127.0.0.1:0`, driven through its control plane and
//! its serving layer without spawning a binary. A test can restart it on
//! the same data dir (what a crash-and-restart looks like, minus the
//! crash) and run invocations through the serving layer with no socket,
//! so it works under a paused tokio clock.

use crate::{RunningServer, ServerConfig};
use anyhow::Context;
use bytes::Bytes;
use seal_artifact::SealManifest;
use seal_control::{Control, Published};
use std::path::Path;
use std::sync::Arc;

pub struct TestServer {
    /// `None` only while `restart` swaps it.
    running: Option<RunningServer>,
    control: Arc<Control>,
    gateway_addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

fn config(dir: &Path) -> ServerConfig {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = ServerConfig::new(any, any, dir.to_owned());
    config.telemetry.invocation_logs = false;
    config
}

impl TestServer {
    /// A server on a new, empty data dir.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp data dir")?;
        let running = crate::start(config(dir.path())).await?;
        Ok(Self {
            control: running.control.clone(),
            gateway_addr: running.gateway_addr,
            running: Some(running),
            dir,
        })
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn gateway_addr(&self) -> std::net::SocketAddr {
        self.gateway_addr
    }

    /// Stops the server (listeners, background tasks, deployment drivers)
    /// and starts a new one on the same data dir.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        let running = crate::start(config(self.dir.path())).await?;
        self.control = running.control.clone();
        self.gateway_addr = running.gateway_addr;
        self.running = Some(running);
        Ok(())
    }

    /// Publishes a component as function `name`, the way the CLI does:
    /// packs it, uploads its blobs, then the manifest. `description` makes
    /// another artifact (another version) of the same component.
    pub async fn publish(
        &self,
        name: &str,
        component: &[u8],
        description: Option<&str>,
    ) -> anyhow::Result<Published> {
        let mut manifest = SealManifest::new(name);
        manifest.description = description.map(str::to_owned);
        self.publish_manifest(component, &manifest).await
    }

    /// [`publish`](Self::publish) with a manifest of the test's own.
    pub async fn publish_manifest(
        &self,
        component: &[u8],
        manifest: &SealManifest,
    ) -> anyhow::Result<Published> {
        let packed = seal_artifact::pack(component, manifest)?;
        let control = self.control();
        for (digest, bytes) in [
            (&packed.config_digest, packed.config_bytes.clone()),
            (&packed.layer_digest, component.to_vec()),
        ] {
            let len = bytes.len() as u64;
            let mut body = futures::stream::iter([Ok::<_, String>(Bytes::from(bytes))]);
            control
                .catalog()
                .put_blob(digest.clone(), Some(len), &mut body)
                .await?;
        }
        Ok(control
            .catalog()
            .publish(packed.manifest_bytes, "test")
            .await?)
    }

    /// One invocation through the serving layer (no socket): the route of
    /// `function` in `environment`, the version `pinned` if given (as the
    /// `seal-version` header with the preview token does: judged by the
    /// gates), else the weighted choice. `None` when
    /// there is no route or no version to serve; else the status.
    pub async fn invoke(
        &self,
        environment: &str,
        function: &str,
        pinned: Option<u64>,
    ) -> Option<u16> {
        let serving = self.control().serving();
        let route = serving.route(environment, function)?;
        let backend = route.pick(pinned, None)?.clone();
        let req = http::Request::builder()
            .uri(format!("http://{function}.{environment}.localhost/"))
            .body(http_body_util::Full::new(Bytes::new()))
            .ok()?;
        let invoked = serving
            .invoke(
                &backend,
                req,
                tokio::time::Instant::now().into_std(),
                seal_serving::Traffic::Judged,
            )
            .await;
        Some(match invoked.result {
            Ok(resp) => resp.status().as_u16(),
            Err(e) => e.status(),
        })
    }

    /// The weights of a route as the serving layer has them now.
    pub fn weights(&self, environment: &str, function: &str) -> Vec<(u64, u32)> {
        self.control()
            .serving()
            .route(environment, function)
            .map(|r| r.backends.iter().map(|b| (b.version, b.weight)).collect())
            .unwrap_or_default()
    }

    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}
