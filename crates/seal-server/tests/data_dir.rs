//! One data dir, one server: a second server on it refuses to start, names
//! the one that holds it, and changes nothing; once the first stops, the
//! data dir is free again.
#![allow(clippy::unwrap_used)]

use seal_server::testing::TestServer;
use seal_server::{DATA_DIR_LOCK, ServerConfig};

fn config(dir: &std::path::Path) -> ServerConfig {
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    ServerConfig::new(any, any, dir.to_owned())
}

#[tokio::test]
async fn a_second_server_on_one_data_dir_is_refused_by_name() {
    let mut first = TestServer::start().await.unwrap();
    let dir = first.data_dir().to_owned();
    let holder = std::fs::read_to_string(dir.join(DATA_DIR_LOCK)).unwrap();
    assert!(
        holder.starts_with(&format!("pid {}, api 127.0.0.1:", std::process::id())),
        "{holder:?}"
    );

    let Err(e) = seal_server::start(config(&dir)).await else {
        panic!("a second server started on a data dir in use");
    };
    let message = format!("{e:#}");
    assert!(
        message.contains("is in use by another seal server") && message.contains(holder.trim()),
        "{message}"
    );
    // The refusal left the holder's record and the first server alone.
    assert_eq!(
        std::fs::read_to_string(dir.join(DATA_DIR_LOCK)).unwrap(),
        holder
    );
    assert!(first.control().environments().await.unwrap().len() >= 2);

    // A restart stops the first before it starts again: the lock is free.
    first.restart().await.unwrap();
    assert!(seal_server::start(config(&dir)).await.is_err());
}
