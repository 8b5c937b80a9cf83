//! A guest's stdout and stderr, delivered line by line to the invocation's
//! [`InvocationObserver`].
//!
//! The guest writes bytes; the embedder wants lines, tagged with the stream
//! they came from and the invocation they belong to. [`GuestOutput`] is the
//! WASI output stream that splits them, synchronously and in order, so
//! every line reaches the observer before the invocation is reported. Lines
//! and an invocation's total output are capped, so a guest that prints
//! without end cannot grow the server's memory.

use crate::observer::InvocationObserver;
use bytes::Bytes;
use std::sync::Arc;

/// Which of the guest's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStream {
    Stdout,
    Stderr,
}

impl GuestStream {
    pub fn as_str(self) -> &'static str {
        match self {
            GuestStream::Stdout => "stdout",
            GuestStream::Stderr => "stderr",
        }
    }
}

/// A guest's stdout or stderr: split into lines, each handed to the
/// invocation's observer. Lines are cut at [`MAX_LINE`] bytes and an
/// invocation's output at [`MAX_OUTPUT`] (then one line says so), so a
/// guest that prints without end cannot grow the server's memory.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    inner: Arc<std::sync::Mutex<LineBuffer>>,
}

const MAX_LINE: usize = 16 << 10;
const MAX_OUTPUT: usize = 1 << 20;

struct LineBuffer {
    stream: GuestStream,
    /// The invocation the lines belong to; none while the instance is
    /// idle (made ahead, or kept for reuse), so it holds nothing of one.
    observer: Option<Arc<dyn InvocationObserver>>,
    partial: Vec<u8>,
    written: usize,
    truncated: bool,
}

impl LineBuffer {
    fn emit(&mut self, bytes: &[u8]) {
        if self.truncated {
            return;
        }
        self.written += bytes.len();
        if self.written > MAX_OUTPUT {
            self.truncated = true;
            if let Some(o) = &self.observer {
                o.guest_output(
                    self.stream,
                    &format!("[seal: output truncated after {} bytes]", MAX_OUTPUT),
                );
            }
            return;
        }
        if let Some(o) = &self.observer {
            let line = String::from_utf8_lossy(bytes);
            o.guest_output(self.stream, line.trim_end_matches('\r'));
        }
    }

    fn write(&mut self, mut buf: &[u8]) {
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            if self.partial.is_empty() {
                self.emit(&buf[..nl]);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&buf[..nl]);
                self.emit(&line);
            }
            buf = &buf[nl + 1..];
        }
        self.partial.extend_from_slice(buf);
        while self.partial.len() >= MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            let line = std::mem::replace(&mut self.partial, rest);
            self.emit(&line);
        }
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line);
        }
    }
}

impl GuestOutput {
    pub(crate) fn new(stream: GuestStream, observer: Option<Arc<dyn InvocationObserver>>) -> Self {
        Self {
            inner: Arc::new(std::sync::Mutex::new(LineBuffer {
                stream,
                observer,
                partial: Vec::new(),
                written: 0,
                truncated: false,
            })),
        }
    }
}

impl GuestOutput {
    /// Ends an invocation's output: its last partial line goes to its
    /// observer now, before the invocation is reported (a reused
    /// instance's store outlives the invocation).
    pub(crate) fn finish(&self) {
        if let Ok(mut b) = self.inner.lock()
            && !b.partial.is_empty()
        {
            let line = std::mem::take(&mut b.partial);
            b.emit(&line);
        }
    }

    /// Points a reused instance's output at the next invocation (`None`:
    /// at none, while it is idle), with that invocation's own output
    /// budget.
    pub(crate) fn rebind(&self, observer: Option<Arc<dyn InvocationObserver>>) {
        if let Ok(mut b) = self.inner.lock() {
            b.observer = observer;
            b.partial.clear();
            b.written = 0;
            b.truncated = false;
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    /// Written synchronously (no adapter task), so the guest's lines reach
    /// the observer in order and before its invocation is reported.
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        if let Ok(mut b) = self.inner.lock() {
            b.write(&bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if let Ok(mut b) = self.inner.lock() {
            b.write(buf);
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Recorder;
    use wasmtime_wasi::p2::OutputStream as _;

    fn output(stream: GuestStream) -> (Arc<Recorder>, GuestOutput) {
        let rec = Arc::new(Recorder::default());
        let out = GuestOutput::new(stream, Some(rec.clone()));
        (rec, out)
    }

    #[test]
    fn writes_are_split_into_lines_and_the_last_partial_line_flushed_on_drop() {
        let (rec, mut out) = output(GuestStream::Stderr);
        out.write(Bytes::from_static(b"one\r\ntw")).unwrap();
        assert_eq!(rec.lines(), [(GuestStream::Stderr, "one".to_owned())]);
        out.write(Bytes::from_static(b"o\n\nthree")).unwrap();
        assert_eq!(rec.texts(), ["one", "two", ""]);
        drop(out);
        assert_eq!(rec.texts(), ["one", "two", "", "three"]);
    }

    #[test]
    fn a_line_longer_than_max_line_is_cut() {
        let (rec, mut out) = output(GuestStream::Stdout);
        out.write(Bytes::from(vec![b'x'; MAX_LINE + 10])).unwrap();
        assert_eq!(rec.texts(), ["x".repeat(MAX_LINE)]);
        drop(out);
        assert_eq!(rec.texts(), ["x".repeat(MAX_LINE), "x".repeat(10)]);
    }

    #[test]
    fn output_past_max_output_ends_with_one_notice() {
        let (rec, mut out) = output(GuestStream::Stdout);
        let mut line = vec![b'y'; 1023];
        line.push(b'\n');
        for _ in 0..(MAX_OUTPUT / 1023 + 5) {
            out.write(Bytes::from(line.clone())).unwrap();
        }
        out.write(Bytes::from_static(b"after\n")).unwrap();
        drop(out);
        let texts = rec.texts();
        assert_eq!(texts.len(), MAX_OUTPUT / 1023 + 1);
        assert!(texts[..texts.len() - 1].iter().all(|t| t.len() == 1023));
        assert_eq!(
            texts[texts.len() - 1],
            format!("[seal: output truncated after {MAX_OUTPUT} bytes]")
        );
    }
}
