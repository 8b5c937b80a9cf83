//! Event contracts: the CloudEvent types a function consumes and produces,
//! each with a JSON Schema (draft 2020-12) of the event's `data`.
//!
//! They are part of the manifest, so part of the artifact's digest:
//! versioned and immutable with the code. This module checks them at
//! publish ([`EventContracts::validate`]), compiles them for ingest
//! ([`compile`]) and compares two versions' contracts at deploy
//! ([`ContractDiff::between`]).
//!
//! # What counts as breaking
//! A consumed type removed, a produced type removed, or a consumed schema
//! made stricter: the candidate would refuse (or never send) events the
//! serving version handled. "Stricter" is judged keyword by keyword
//! ([`stricter`]): a type narrowed, a required property added, an enum
//! value removed, a bound tightened, `additionalProperties` closed, a
//! pattern or format added or changed; a change to a keyword whose effect
//! Seal cannot judge (`allOf`, `$ref`, `if`…) counts as stricter too: the
//! gate errs on the side of asking.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Longest CloudEvent type a contract may name.
pub const MAX_TYPE_LEN: usize = 256;

/// The `events` section of the manifest. Empty maps are left out of the
/// canonical bytes, so a manifest without contracts keeps its old bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventContracts {
    /// Event type → JSON Schema of the `data` this function accepts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub consumes: BTreeMap<String, Value>,
    /// Event type → JSON Schema of the `data` this function emits.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub produces: BTreeMap<String, Value>,
}

impl EventContracts {
    pub fn is_empty(&self) -> bool {
        self.consumes.is_empty() && self.produces.is_empty()
    }

    /// Every type is a plausible CloudEvent type and every schema a valid
    /// draft 2020-12 JSON Schema that compiles without fetching anything.
    pub fn validate(&self) -> Result<(), String> {
        for (side, map) in [("consumes", &self.consumes), ("produces", &self.produces)] {
            for (ty, schema) in map {
                validate_type(ty).map_err(|e| format!("events.{side}: {e}"))?;
                compile(schema).map_err(|e| format!("events.{side}.{ty:?}: {e}"))?;
            }
        }
        Ok(())
    }
}

/// A CloudEvent type a contract may name: 1 to 256 visible ASCII
/// characters (the spec asks for a non-empty string; Seal keeps it
/// printable so it reads well in logs and diffs).
pub fn validate_type(ty: &str) -> Result<(), String> {
    if ty.is_empty() || ty.len() > MAX_TYPE_LEN || !ty.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "event type {:?} must be 1 to {MAX_TYPE_LEN} visible ASCII characters",
            ty.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

/// A compiled schema, ready to judge events' `data`.
pub struct Schema(jsonschema::Validator);

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// `Err` names the first place `data` breaks the schema.
    pub fn check(&self, data: &Value) -> Result<(), String> {
        self.0.validate(data).map_err(|e| {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() { "/".to_owned() } else { at };
            format!("data at {at}: {e}")
        })
    }
}

/// Checks `schema` against the draft 2020-12 meta-schema and compiles it.
/// References must resolve inside the schema: nothing is fetched.
pub fn compile(schema: &Value) -> Result<Schema, String> {
    jsonschema::draft202012::meta::validate(schema)
        .map_err(|e| format!("not a valid JSON Schema (draft 2020-12): {e}"))?;
    jsonschema::draft202012::new(schema)
        .map(Schema)
        .map_err(|e| format!("not a usable JSON Schema: {e}"))
}

/// What changes in event contracts from the serving version to a candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContractDiff {
    pub changes: Vec<ContractChange>,
    /// True when a change may break a producer or a consumer.
    pub breaking: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContractChange {
    /// `consumes` or `produces`.
    pub side: &'static str,
    #[serde(rename = "type")]
    pub event_type: String,
    /// `added`, `removed`, `stricter` or `changed`.
    pub change: &'static str,
    /// Why it is stricter (one reason per keyword), when it is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    pub breaking: bool,
}

impl ContractDiff {
    pub fn between(from: &EventContracts, to: &EventContracts) -> Self {
        let mut changes = Vec::new();
        for (side, old, new) in [
            ("consumes", &from.consumes, &to.consumes),
            ("produces", &from.produces, &to.produces),
        ] {
            let types: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for ty in types {
                let change = |change, reasons: Vec<String>, breaking| ContractChange {
                    side,
                    event_type: ty.clone(),
                    change,
                    reasons,
                    breaking,
                };
                match (old.get(ty), new.get(ty)) {
                    (Some(_), None) => changes.push(change("removed", Vec::new(), true)),
                    (None, Some(_)) => changes.push(change("added", Vec::new(), false)),
                    (Some(a), Some(b)) if a != b => {
                        // A produced schema may change freely here: its
                        // consumers' own contracts judge what they accept.
                        let reasons = if side == "consumes" {
                            stricter(a, b)
                        } else {
                            Vec::new()
                        };
                        if reasons.is_empty() {
                            changes.push(change("changed", reasons, false));
                        } else {
                            changes.push(change("stricter", reasons, true));
                        }
                    }
                    _ => {}
                }
            }
        }
        let breaking = changes.iter().any(|c| c.breaking);
        Self { changes, breaking }
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// One line per change: `+` added, `-` removed, `!` stricter, `~`
    /// changed without a stricter rule found.
    pub fn lines(&self) -> Vec<String> {
        self.changes
            .iter()
            .map(|c| {
                let mark = match c.change {
                    "added" => "+",
                    "removed" => "-",
                    "stricter" => "!",
                    _ => "~",
                };
                let mut line = format!("{mark} {} {}", c.side, c.event_type);
                match c.change {
                    "stricter" => {
                        line.push_str(": schema stricter (");
                        line.push_str(&c.reasons.join("; "));
                        line.push(')');
                    }
                    "changed" => line.push_str(": schema changed"),
                    _ => {}
                }
                line
            })
            .collect()
    }
}

/// Keywords that describe and never constrain.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "$anchor",
    "title",
    "description",
    "examples",
    "default",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Keywords whose raise (a larger number) makes a schema stricter.
const LOWER_BOUNDS: &[&str] = &[
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
    "minContains",
];
/// Keywords whose fall makes a schema stricter.
const UPPER_BOUNDS: &[&str] = &[
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
    "maxContains",
];

/// Why `new` may refuse data `old` accepted; empty when no rule finds a
/// way (the schemas are equal, or `new` only loosens).
pub fn stricter(old: &Value, new: &Value) -> Vec<String> {
    let mut reasons = Vec::new();
    walk(old, new, "", &mut reasons);
    reasons
}

fn walk(old: &Value, new: &Value, at: &str, out: &mut Vec<String>) {
    let place = if at.is_empty() { "/" } else { at };
    let anything = serde_json::Map::new();
    let (old, new) = match (old, new) {
        (_, Value::Bool(true)) => return,
        (Value::Bool(false), _) => return,
        (_, Value::Bool(false)) => {
            out.push(format!("{place} refuses everything"));
            return;
        }
        (Value::Bool(true), Value::Object(n)) => (&anything, n),
        (Value::Object(o), Value::Object(n)) => (o, n),
        _ => {
            out.push(format!("{place} changed"));
            return;
        }
    };
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let k = key.as_str();
        let (a, b) = (old.get(k), new.get(k));
        if ANNOTATIONS.contains(&k) || a == b {
            continue;
        }
        let Some(b) = b else {
            // A constraint dropped only loosens.
            continue;
        };
        match k {
            "type" => {
                let (a, b) = (types(a), types(Some(b)));
                let narrowed: Vec<&str> = a
                    .iter()
                    .filter(|t| {
                        // Still accepted: the same type, or an integer
                        // by `number`.
                        let kept = b.contains(*t) || (**t == "integer" && b.contains("number"));
                        !kept
                    })
                    .copied()
                    .collect();
                if !narrowed.is_empty() {
                    out.push(format!("{place} no longer accepts {}", narrowed.join(", ")));
                }
            }
            "required" => {
                let had = names(a);
                let added: Vec<&str> = names(Some(b))
                    .into_iter()
                    .filter(|n| !had.contains(n))
                    .collect();
                if !added.is_empty() {
                    out.push(format!("{place} now requires {}", added.join(", ")));
                }
            }
            "enum" => {
                let before: Option<&Vec<Value>> = a.and_then(Value::as_array);
                let after = b.as_array();
                let lost = match (before, after) {
                    (Some(x), Some(y)) => x.iter().any(|v| !y.contains(v)),
                    _ => true,
                };
                if lost {
                    out.push(format!("{place} enum accepts fewer values"));
                }
            }
            "properties" => {
                let (pa, pb) = (a.and_then(Value::as_object), b.as_object());
                if let Some(pb) = pb {
                    for (name, sb) in pb {
                        let child = format!("{at}/{name}");
                        match pa.and_then(|pa| pa.get(name)) {
                            Some(sa) => walk(sa, sb, &child, out),
                            // A newly described property was any value
                            // before (or refused, when closed; then this
                            // only loosens).
                            None if closed(old) => {}
                            None => walk(&Value::Bool(true), sb, &child, out),
                        }
                    }
                }
            }
            "additionalProperties" | "items" | "contains" | "propertyNames" => {
                let a = a.cloned().unwrap_or(Value::Bool(true));
                walk(&a, b, &format!("{at}/{k}"), out);
            }
            _ if LOWER_BOUNDS.contains(&k) => {
                if a.and_then(Value::as_f64)
                    .is_none_or(|x| b.as_f64().is_none_or(|y| y > x))
                {
                    out.push(format!("{place} {k} raised to {b}"));
                }
            }
            _ if UPPER_BOUNDS.contains(&k) => {
                if a.and_then(Value::as_f64)
                    .is_none_or(|x| b.as_f64().is_none_or(|y| y < x))
                {
                    out.push(format!("{place} {k} lowered to {b}"));
                }
            }
            _ => out.push(format!(
                "{place} {k} {}",
                if a.is_some() { "changed" } else { "added" }
            )),
        }
    }
}

/// An object schema that refuses properties it does not describe.
fn closed(schema: &serde_json::Map<String, Value>) -> bool {
    schema.get("additionalProperties") == Some(&Value::Bool(false))
}

fn types(v: Option<&Value>) -> BTreeSet<&str> {
    const ALL: [&str; 7] = [
        "null", "boolean", "object", "array", "number", "string", "integer",
    ];
    match v {
        None => ALL.into_iter().collect(),
        Some(Value::String(s)) => [s.as_str()].into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        Some(_) => BTreeSet::new(),
    }
}

fn names(v: Option<&Value>) -> BTreeSet<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contracts(consumes: &[(&str, Value)], produces: &[(&str, Value)]) -> EventContracts {
        let map = |xs: &[(&str, Value)]| {
            xs.iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        };
        EventContracts {
            consumes: map(consumes),
            produces: map(produces),
        }
    }

    #[test]
    fn valid_schemas_pass_and_invalid_ones_are_named() {
        let ok = contracts(&[("order.created", json!({"type": "object"}))], &[]);
        ok.validate().unwrap();
        for bad in [
            json!({"type": "objekt"}),
            json!({"minimum": "five"}),
            json!({"required": "id"}),
            json!(42),
            json!({"$ref": "https://example.com/elsewhere.json"}),
        ] {
            let c = contracts(&[("order.created", bad.clone())], &[]);
            let e = c.validate().unwrap_err();
            assert!(
                e.contains("events.consumes.\"order.created\""),
                "{bad}: {e}"
            );
            assert!(e.contains("JSON Schema"), "{bad}: {e}");
        }
        let e = contracts(&[], &[("bad type", json!({}))])
            .validate()
            .unwrap_err();
        assert!(
            e.contains("events.produces") && e.contains("visible ASCII"),
            "{e}"
        );
    }

    #[test]
    fn a_compiled_schema_names_where_data_breaks_it() {
        let s = compile(&json!({
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "integer"}}
        }))
        .unwrap();
        s.check(&json!({"id": 7})).unwrap();
        let e = s.check(&json!({"id": "seven"})).unwrap_err();
        assert!(e.contains("/id"), "{e}");
        let e = s.check(&json!({})).unwrap_err();
        assert!(e.contains("data at /") && e.contains("id"), "{e}");
    }

    #[test]
    fn empty_contracts_leave_the_bytes_alone() {
        assert_eq!(
            serde_json::to_string(&EventContracts::default()).unwrap(),
            "{}"
        );
        let c: EventContracts = serde_json::from_str("{}").unwrap();
        assert!(c.is_empty());
        assert!(serde_json::from_str::<EventContracts>(r#"{"consume": {}}"#).is_err());
    }

    #[test]
    fn removals_and_stricter_consumed_schemas_break() {
        let order = json!({"type": "object", "properties": {"id": {"type": "string"}}});
        let from = contracts(
            &[("order.created", order.clone()), ("order.paid", json!({}))],
            &[("invoice.issued", json!({}))],
        );
        let mut stricter_order = order.clone();
        stricter_order["required"] = json!(["id"]);
        let to = contracts(
            &[
                ("order.created", stricter_order),
                ("order.shipped", json!({})),
            ],
            &[],
        );
        let d = ContractDiff::between(&from, &to);
        assert!(d.breaking);
        let lines = d.lines();
        assert!(
            lines.contains(&"- consumes order.paid".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"- produces invoice.issued".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"+ consumes order.shipped".to_owned()),
            "{lines:?}"
        );
        assert!(
            lines.contains(
                &"! consumes order.created: schema stricter (/ now requires id)".to_owned()
            ),
            "{lines:?}"
        );
        // Additions alone never break.
        let d = ContractDiff::between(&from, &from);
        assert!(d.is_empty() && !d.breaking);
        let mut wider = from.clone();
        wider.consumes.insert("order.refunded".into(), json!({}));
        wider.produces.insert("invoice.voided".into(), json!({}));
        let d = ContractDiff::between(&from, &wider);
        assert!(!d.breaking && d.changes.len() == 2, "{d:?}");
    }

    #[test]
    fn stricter_finds_narrowing_and_not_loosening() {
        let base = json!({
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": {"type": "string", "maxLength": 10},
                "n": {"type": "number", "minimum": 0},
                "kind": {"enum": ["a", "b"]}
            }
        });
        let with = |path: &[&str], v: Value| {
            let mut s = base.clone();
            let mut at = &mut s;
            for p in &path[..path.len() - 1] {
                at = &mut at[*p];
            }
            at[path[path.len() - 1]] = v;
            s
        };
        // Stricter, each for its reason.
        for (new, reason) in [
            (with(&["required"], json!(["id", "n"])), "now requires n"),
            (
                with(&["properties", "n", "type"], json!("integer")),
                "/n no longer accepts number",
            ),
            (
                with(&["properties", "n", "minimum"], json!(1)),
                "minimum raised",
            ),
            (
                with(&["properties", "id", "maxLength"], json!(5)),
                "maxLength lowered",
            ),
            (
                with(&["properties", "kind", "enum"], json!(["a"])),
                "fewer values",
            ),
            (
                with(&["additionalProperties"], json!(false)),
                "/additionalProperties refuses everything",
            ),
            (
                with(&["properties", "id", "pattern"], json!("^x")),
                "/id pattern added",
            ),
            (
                with(&["allOf"], json!([{"required": ["n"]}])),
                "allOf added",
            ),
            (
                with(&["properties", "new"], json!({"type": "string"})),
                "/new no longer accepts",
            ),
        ] {
            let r = stricter(&base, &new);
            assert!(r.iter().any(|x| x.contains(reason)), "{reason}: {r:?}");
        }
        // Looser or equal: nothing found.
        for new in [
            base.clone(),
            with(&["required"], json!([])),
            with(&["properties", "n", "type"], json!(["number", "string"])),
            with(&["properties", "n", "minimum"], json!(-5)),
            with(&["properties", "id", "maxLength"], json!(50)),
            with(&["properties", "kind", "enum"], json!(["a", "b", "c"])),
            with(&["description"], json!("an order")),
            json!(true),
        ] {
            assert_eq!(stricter(&base, &new), Vec::<String>::new(), "{new}");
        }
        // An integer that becomes any number is a widening.
        assert!(stricter(&json!({"type": "integer"}), &json!({"type": "number"})).is_empty());
    }
}
