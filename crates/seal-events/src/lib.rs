//! Event triggers on the serving layer, beside the HTTP gateway: what a
//! queue or a schedule needs to run a function, without a listener and
//! without a store.
//!
//! - [`codec`]: CloudEvents 1.0 in and out of HTTP — the binary mode
//!   (`ce-*` headers, percent-encoded per the HTTP binding), the
//!   structured mode (`application/cloudevents+json`) and batches
//!   (`application/cloudevents-batch+json`), with the size limits of an
//!   ingest; the event model is `cloudevents-sdk`'s.
//! - [`deliver`]: one attempt of one event on one version, through
//!   `Serving::invoke` (so its outcome counts in the version's telemetry
//!   and gates exactly as an HTTP request does), and the attempt's outcome
//!   by the documented table.
//! - [`schedule`]: cron expressions (5 fields, or 6 with seconds) in an
//!   IANA time zone, by `croner` and `chrono-tz`.
//!
//! Which event, when and how often is the control plane's business: this
//! crate runs one attempt and says how it ended.

pub mod codec;
pub mod deliver;
pub mod schedule;

pub use cloudevents::{AttributesReader, Data, Event};
pub use codec::{CodecError, Limits};
