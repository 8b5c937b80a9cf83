//! What answers show of the secrets a deploy request may carry. A
//! notification URL often holds a token in its path or query, and a hook
//! header an `Authorization` value; anyone who may read deployments (a
//! viewer) sees where they go, not the secret. The stored plan keeps them
//! whole: the driver needs them.

use crate::rollout::plan::Plan;
use seal_state::DeploymentRecord;
use serde_json::Value;

/// What a redacted value reads.
pub const REDACTED: &str = "(redacted)";

/// `http://hooks.example.org:9000/t/abc?k=1` → `http://hooks.example.org:9000/(redacted)`:
/// the destination stays, its path, query and credentials do not.
pub fn url(text: &str) -> String {
    match reqwest::Url::parse(text) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{host}{port}/{REDACTED}", u.scheme())
        }
        Err(_) => REDACTED.to_owned(),
    }
}

/// A request path with its query (if any) redacted.
fn path(text: &str) -> String {
    match text.split_once('?') {
        Some((p, _)) => format!("{p}?{REDACTED}"),
        None => text.to_owned(),
    }
}

/// A deployment as answers show it: its plan's secrets redacted.
pub fn deployment(mut d: DeploymentRecord) -> DeploymentRecord {
    if let Some(plan) = d.plan.as_mut() {
        plan_secrets(plan);
    }
    d
}

/// A plan as answers show it: the notification URL's path and query, hook
/// header values, hook bodies and the queries of hook paths redacted.
pub fn plan(mut p: Plan) -> Plan {
    p.notify = p.notify.as_deref().map(url);
    for hook in &mut p.hook_specs {
        for value in hook.request.headers.values_mut() {
            *value = REDACTED.to_owned();
        }
        if hook.request.body.is_some() {
            hook.request.body = Some(REDACTED.to_owned());
        }
        hook.request.path = path(&hook.request.path);
    }
    p
}

/// An audit entry's detail as answers show it: a webhook URL (budget
/// changes) keeps its destination only. Entries written before webhooks
/// were redacted at write time are covered too; the hash chain is checked
/// on the stored detail, not on this.
pub(crate) fn audit_detail(detail: &mut Value) {
    if let Some(hook) = detail.get_mut("webhook")
        && let Some(text) = hook.as_str()
    {
        *hook = Value::String(url(text));
    }
}

fn plan_secrets(plan: &mut Value) {
    if let Some(notify) = plan.get_mut("notify")
        && let Some(text) = notify.as_str()
    {
        *notify = Value::String(url(text));
    }
    if let Some(hooks) = plan.get_mut("hook_specs").and_then(Value::as_array_mut) {
        for hook in hooks {
            let Some(request) = hook.get_mut("request") else {
                continue;
            };
            if let Some(headers) = request.get_mut("headers").and_then(Value::as_object_mut) {
                for value in headers.values_mut() {
                    *value = Value::String(REDACTED.to_owned());
                }
            }
            if let Some(body) = request.get_mut("body")
                && body.is_string()
            {
                *body = Value::String(REDACTED.to_owned());
            }
            if let Some(p) = request.get_mut("path")
                && let Some(text) = p.as_str()
            {
                *p = Value::String(path(text));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_destination_only() {
        assert_eq!(
            url("http://hooks.example.org:9000/t/abc?k=secret"),
            "http://hooks.example.org:9000/(redacted)"
        );
        assert_eq!(
            url("http://user:pw@10.0.0.1/x"),
            "http://10.0.0.1/(redacted)"
        );
        assert_eq!(url("not a url"), "(redacted)");
    }

    #[test]
    fn plans_lose_notify_paths_and_hook_header_values() {
        let mut plan = serde_json::json!({
            "notify": "http://hooks.example.org/T0KEN",
            "hook_specs": [{"name": "h", "request": {"path": "/x?key=k3y", "body": "b0dy",
                "headers": {"authorization": "Bearer s3cret"}}}],
            "hooks": [{"name": "h", "phase": "pre-traffic"}],
        });
        plan_secrets(&mut plan);
        let text = plan.to_string();
        for secret in ["T0KEN", "s3cret", "k3y", "b0dy"] {
            assert!(!text.contains(secret), "{secret}: {text}");
        }
        assert_eq!(plan["hook_specs"][0]["request"]["path"], "/x?(redacted)");
        assert_eq!(plan["notify"], "http://hooks.example.org/(redacted)");
        assert_eq!(
            plan["hook_specs"][0]["request"]["headers"]["authorization"],
            REDACTED
        );
        assert_eq!(plan["hooks"][0]["name"], "h");
    }
}
