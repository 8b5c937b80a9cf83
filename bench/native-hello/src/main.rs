//! `native-hello 127.0.0.1:PORT`: answers `Hello from native hyper!\n` to
//! every request (HTTP/1.1, keep-alive, TCP_NODELAY, multi-threaded tokio).
//! The native baseline that bench/run compares Seal against. With port 0 it
//! prints the bound address as `listening on http://ADDR`.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const BODY: &[u8] = b"Hello from native hyper!\n";

async fn hello(_req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("static response"))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: native-hello 127.0.0.1:PORT");
        std::process::exit(2);
    });
    let addr: SocketAddr = arg.parse().unwrap_or_else(|e| {
        eprintln!("native-hello: invalid address {arg:?}: {e}");
        std::process::exit(2);
    });
    let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| {
        eprintln!("native-hello: cannot bind {addr}: {e}");
        std::process::exit(1);
    });
    let local = listener.local_addr().expect("local addr");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{local}");
        let _ = out.flush();
    }

    let accept = async {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // e.g. EMFILE: back off instead of spinning.
                    eprintln!("native-hello: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                // keep-alive is hyper's default for HTTP/1.1.
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(hello))
                    .await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
