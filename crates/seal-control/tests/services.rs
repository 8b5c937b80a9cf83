//! The trust and usage services on their own: built from the state and
//! artifact ports, the catalog and the serving layer, with no deploy
//! engine, API or server around them.
#![allow(clippy::unwrap_used)]

mod support;

use seal_control::ControlError;
use seal_control::trust::TrustService;
use seal_control::usage::{BudgetRequest, UsageService};
use seal_trust::{BUILD_TYPE, BuildInfo, Envelope, SigningKey};
use std::collections::BTreeMap;
use std::sync::Arc;
use support::{Fixture, fixture, guests, publish};

fn trust(f: &Fixture) -> TrustService {
    TrustService::new(
        f.state.clone(),
        f.oci.clone(),
        f.catalog.clone(),
        Arc::new(seal_control::protection::Protection::new("production")),
    )
}

/// A DSSE envelope signed by `key` whose SLSA statement is about `digest`.
fn signed_statement(key: &SigningKey, function: &str, digest: &str) -> Vec<u8> {
    let statement = seal_trust::statement(&BuildInfo {
        function: function.into(),
        subject: seal_artifact::Digest::parse(digest).unwrap(),
        build_type: BUILD_TYPE.into(),
        source: Some("git+https://example.org/team/api".into()),
        commit: Some("0123456789abcdef".into()),
        build_command: None,
        project: None,
        resolved_dependencies: Vec::new(),
        builder_id: "https://seal.dev/builder/test".into(),
        started_on: std::time::SystemTime::now(),
        finished_on: std::time::SystemTime::now(),
    });
    Envelope::sign(&statement, key).to_json()
}

#[tokio::test]
async fn trust_judges_signatures_against_the_policy_and_refuses_bad_envelopes() {
    let f = fixture().await;
    let trust = trust(&f);
    let echo = std::fs::read(guests::guest("echo")).unwrap();
    let v1 = publish(&f, "api", &echo).await;

    // A policy for an environment that does not exist is refused by name.
    let e = trust
        .set_policy("prodution", false, &[], BTreeMap::new(), "admin")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::UnknownEnvironment { name, .. } if name == "prodution"),
        "{e:?}"
    );
    // Requiring a signature with no key to check it against is refused.
    let e = trust
        .set_policy("production", true, &[], BTreeMap::new(), "admin")
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::Invalid(_)), "{e:?}");

    let release = SigningKey::generate();
    let other = SigningKey::generate();
    let view = trust
        .set_policy(
            "production",
            true,
            &[other.public_key().to_pem()],
            BTreeMap::new(),
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(view.updated_by.as_deref(), Some("admin"));
    assert_eq!(view.policy.trusted_keys.len(), 1);

    // Unsigned: the policy says no, and says why.
    let report = trust
        .verify_version("api", v1.version, None, &[])
        .await
        .unwrap();
    assert!(!report.ok && report.artifact.ok, "{report:?}");
    assert_eq!(report.policy.environment, "production");
    let reason = report.policy.reason.clone().unwrap();
    assert!(reason.contains("not signed"), "{reason}");

    // Garbage and a statement about another artifact are refused, and
    // leave nothing attached.
    let e = trust
        .attach_attestation("api", v1.version, b"not json", "ci")
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::Invalid(_)), "{e:?}");
    let elsewhere = signed_statement(&release, "api", &format!("sha256:{}", "ab".repeat(32)));
    let e = trust
        .attach_attestation("api", v1.version, &elsewhere, "ci")
        .await
        .unwrap_err();
    assert_eq!(e.code(), "subject_mismatch", "{e:?}");
    assert!(
        trust
            .list_attestations("api", v1.version)
            .await
            .unwrap()
            .attestations
            .is_empty()
    );

    // One actor's junk takes its own slots only: its ninth attestation is
    // refused, and another actor still attaches the real provenance.
    for _ in 0..seal_control::trust::MAX_ATTESTATIONS_PER_ACTOR {
        let junk = signed_statement(&SigningKey::generate(), "api", &v1.digest);
        trust
            .attach_attestation("api", v1.version, &junk, "junk")
            .await
            .unwrap();
    }
    let junk = signed_statement(&SigningKey::generate(), "api", &v1.digest);
    let e = trust
        .attach_attestation("api", v1.version, &junk, "junk")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("limit per actor"), "{e}");
    let junk_count = trust
        .list_attestations("api", v1.version)
        .await
        .unwrap()
        .attestations
        .len();
    assert_eq!(junk_count, seal_control::trust::MAX_ATTESTATIONS_PER_ACTOR);

    // Signed by a key the policy does not trust: attached, still refused.
    let attached = trust
        .attach_attestation(
            "api",
            v1.version,
            &signed_statement(&release, "api", &v1.digest),
            "ci",
        )
        .await
        .unwrap();
    assert_eq!(attached.keyid, release.keyid());
    let listed = trust.list_attestations("api", v1.version).await.unwrap();
    assert_eq!(listed.attestations.len(), junk_count + 1);
    assert!(
        listed
            .attestations
            .iter()
            .any(|a| a.referrer == attached.referrer && a.actor == "ci")
    );
    // The artifact store lists the same referrer under the artifact.
    let subject = seal_artifact::Digest::parse(&v1.digest).unwrap();
    let referrers = f.oci.referrers(&subject).unwrap();
    assert_eq!(referrers.len(), junk_count + 1);
    assert!(
        referrers
            .iter()
            .any(|r| r.digest.to_string() == attached.referrer)
    );
    let report = trust
        .verify_version("api", v1.version, None, &[])
        .await
        .unwrap();
    assert!(!report.ok, "{report:?}");
    assert!(report.policy.reason.unwrap().contains("untrusted"));

    // Once the policy trusts the release key, the same artifact passes;
    // asked about the other key, verify says no signature of it is there.
    trust
        .set_policy(
            "production",
            true,
            &[release.public_key().to_pem()],
            BTreeMap::new(),
            "admin",
        )
        .await
        .unwrap();
    let report = trust
        .verify_version("api", v1.version, None, &[])
        .await
        .unwrap();
    assert!(report.ok && report.policy.ok, "{report:?}");
    let report = trust
        .verify_version("api", v1.version, None, &[other.public_key().to_pem()])
        .await
        .unwrap();
    assert!(!report.ok, "{report:?}");
    assert!(!report.keys.unwrap().ok);
}

#[tokio::test]
async fn usage_keeps_budgets_with_their_audit_entries_and_answers_cost() {
    let f = fixture().await;
    let serving = seal_serving::Serving::new(seal_serving::Telemetry {
        logs: seal_serving::logs::LogHub::new(16),
        tracer: None,
        invocation_logs: false,
        trace_sample_ratio: 1.0,
        flag_counts: Default::default(),
    });
    let metrics = Arc::new(seal_control::metrics::Metrics::new(
        serving.clone(),
        f.runtime.clone(),
    ));
    let outbound = seal_control::outbound::Outbound::new(Default::default());
    let usage = UsageService::new(f.state.clone(), serving, metrics, outbound);
    let echo = std::fs::read(guests::guest("echo")).unwrap();
    publish(&f, "api", &echo).await;
    let audit_len = || async { f.state.audit_log(1000).await.unwrap().len() };
    let before = audit_len().await;

    // Refusals change nothing.
    for (gb_seconds, period, webhook) in [
        (0.0, None, None),
        (f64::NAN, None, None),
        (10.0, Some("week"), None),
        (10.0, None, Some("ftp://example.org/hook")),
        // What only the server can reach is not a webhook.
        (10.0, None, Some("http://127.0.0.1:8081/v1/tokens")),
        (10.0, None, Some("http://169.254.169.254/latest/meta-data")),
    ] {
        let e = usage
            .set_budget(
                "api",
                BudgetRequest {
                    gb_seconds,
                    period: period.map(str::to_owned),
                    webhook: webhook.map(str::to_owned),
                },
                "admin",
            )
            .await
            .unwrap_err();
        assert!(matches!(e, ControlError::Invalid(_)), "{e:?}");
    }
    let e = usage
        .set_budget(
            "nope",
            BudgetRequest {
                gb_seconds: 1.0,
                period: None,
                webhook: None,
            },
            "admin",
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::NotFound(_)), "{e:?}");
    assert_eq!(audit_len().await, before);

    let budget = usage
        .set_budget(
            "api",
            BudgetRequest {
                gb_seconds: 10.0,
                period: None,
                webhook: None,
            },
            "admin",
        )
        .await
        .unwrap();
    assert_eq!(budget.period, "month");
    let entries = f.state.audit_log(1000).await.unwrap();
    assert_eq!(entries.len(), before + 1);
    assert!(entries.iter().any(|e| e.action == "budget_set"));

    // Nothing ran: no usage, the budget untouched.
    let cost = usage.cost("api", 0, None).await.unwrap();
    assert!(cost.versions.is_empty());
    assert_eq!(cost.total.invocations, 0);
    let status = cost.budget.unwrap();
    assert_eq!((status.used_gb_seconds, status.exceeded), (0.0, false));

    usage.delete_budget("api", "admin").await.unwrap();
    let e = usage.delete_budget("api", "admin").await.unwrap_err();
    assert!(matches!(e, ControlError::NotFound(_)), "{e:?}");
    assert!(usage.cost("api", 0, None).await.unwrap().budget.is_none());
    assert_eq!(audit_len().await, before + 2);
}
