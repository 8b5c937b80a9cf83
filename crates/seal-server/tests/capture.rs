//! A request still in flight when the server stops is drained by the
//! gateway after the capture writer has stopped: its captured record is
//! written by the server's last step, not lost.
#![allow(clippy::unwrap_used)]

#[path = "../../../tests/support/guests.rs"]
mod guests;

use seal_api_types::capture::StartCapture;
use seal_control::trust::Approvals;
use seal_server::testing::TestServer;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_drained_at_shutdown_keeps_its_captured_record() {
    let mut s = TestServer::start().await.unwrap();
    let component = std::fs::read(guests::guest("slow")).unwrap();
    s.publish("nap", &component, None).await.unwrap();
    s.control()
        .deploy("nap", 1, None, None, "test", Approvals::default())
        .await
        .unwrap();
    s.control()
        .start_capture(
            &StartCapture {
                function: "nap".into(),
                environment: None,
                rate_percent: 100.0,
                max: None,
                body_limit: None,
                drop_headers: vec![],
            },
            "test",
        )
        .await
        .unwrap();
    // A request that takes 1.5 s, sent over the gateway's socket.
    let addr = s.gateway_addr();
    let call = tokio::spawn(async move {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(
            b"GET /?ms=1500 HTTP/1.1\r\nhost: nap.production.localhost\r\nconnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    });
    // Stopped while the request runs: the gateway drains it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.restart().await.unwrap();
    let answer = call.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let captures = s.control().captures().await.unwrap();
    assert_eq!(captures.len(), 1);
    assert_eq!(captures[0].captured, 1, "{captures:?}");
}
