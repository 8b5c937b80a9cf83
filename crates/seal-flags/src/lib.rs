//! Feature flags in flagd's format: a flag set (`{"flags": {KEY: {state,
//! variants, defaultVariant, targeting?, metadata?}}, "$evaluators"?: …}`)
//! checked by name when it is read, its targeting compiled once as
//! JSONLogic (datalogic-rs) with flagd's `fractional` and `sem_ver`
//! operators, and evaluated against a context into an OpenFeature answer:
//! value, variant and reason (`STATIC`, `TARGETING_MATCH`, `DEFAULT`,
//! `DISABLED`, or an error code).
//!
//! `fractional` buckets a key the way flagd does — murmur3 (x86, 32-bit,
//! seed 0) of the bucketing key, as a share of `u32::MAX`, against the
//! variants' cumulative weights — so a user keeps their variant while the
//! weights stand. The default bucketing key is the flag key followed by
//! the context's `targetingKey`.

use datalogic_rs::{CompiledLogic, ContextStack, DataLogic, Evaluator, Operator};
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Flags in one set at most.
pub const MAX_FLAGS: usize = 1000;
/// Variants of one flag at most.
pub const MAX_VARIANTS: usize = 100;

/// Why an answer is what it is (OpenFeature's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// No targeting: the default variant.
    Static,
    /// The targeting chose a variant.
    TargetingMatch,
    /// The targeting chose none: the default variant.
    Default,
    /// The flag is disabled: its default variant.
    Disabled,
}

/// An evaluation that could not give a value (OpenFeature's error codes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EvalError {
    /// `FLAG_NOT_FOUND`, `TARGETING_KEY_MISSING`, `GENERAL`.
    pub code: &'static str,
    pub details: String,
}

/// An evaluation's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub key: String,
    pub value: Value,
    pub variant: String,
    pub reason: Reason,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

struct Flag {
    enabled: bool,
    variants: BTreeMap<String, Value>,
    default_variant: String,
    targeting: Option<Arc<CompiledLogic>>,
    metadata: Map<String, Value>,
}

/// A checked, compiled flag set; cheap to share and to evaluate from many
/// threads.
pub struct FlagSet {
    engine: DataLogic,
    flags: BTreeMap<String, Flag>,
    /// The set as given (flagd JSON), for listing and storing.
    source: Value,
}

impl std::fmt::Debug for FlagSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagSet")
            .field("flags", &self.flags.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn engine() -> DataLogic {
    let mut engine = DataLogic::new();
    engine.add_operator("fractional".into(), Box::new(Fractional));
    engine.add_operator("sem_ver".into(), Box::new(SemVer));
    engine
}

/// A flag key: the rule a manifest's `[capabilities] flags` follows
/// (letters, digits, `-`, `_`, `.`, at most 128).
pub fn check_key(key: &str) -> Result<(), String> {
    seal_artifact::capabilities::validate_flag_key(key)
        .map_err(|_| format!("flag key {key:?}: use 1 to 128 letters, digits, '-', '_' or '.'"))
}

/// Replaces every `{"$ref": NAME}` with the evaluator of that name.
fn resolve_refs(v: &Value, evaluators: &Map<String, Value>, depth: u32) -> Result<Value, String> {
    if depth > 16 {
        return Err("$ref nests too deep (a cycle?)".into());
    }
    Ok(match v {
        Value::Object(m) if m.len() == 1 && m.contains_key("$ref") => {
            let name = m["$ref"].as_str().ok_or("$ref must name an evaluator")?;
            let target = evaluators
                .get(name)
                .ok_or_else(|| format!("$ref {name:?}: no such evaluator in $evaluators"))?;
            resolve_refs(target, evaluators, depth + 1)?
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| Ok((k.clone(), resolve_refs(x, evaluators, depth)?)))
                .collect::<Result<_, String>>()?,
        ),
        Value::Array(xs) => Value::Array(
            xs.iter()
                .map(|x| resolve_refs(x, evaluators, depth))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
        Value::Null => "null",
    }
}

impl FlagSet {
    /// An empty set.
    pub fn empty() -> Self {
        Self {
            engine: engine(),
            flags: BTreeMap::new(),
            source: json!({"flags": {}}),
        }
    }

    /// Reads and checks a flagd document; every error names the flag and
    /// field (`flags.new-checkout.defaultVariant: "blue" is not one of its
    /// variants (on, off)`).
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        Self::from_value(doc)
    }

    /// [`Self::parse`] of a value.
    pub fn from_value(doc: Value) -> Result<Self, String> {
        let Value::Object(top) = &doc else {
            return Err("a flag file is a JSON object with \"flags\"".into());
        };
        for k in top.keys() {
            if !matches!(k.as_str(), "flags" | "$evaluators" | "$schema" | "metadata") {
                return Err(format!(
                    "unknown field {k:?} (a flagd file has flags, $evaluators, metadata)"
                ));
            }
        }
        let flags = top
            .get("flags")
            .and_then(Value::as_object)
            .ok_or("\"flags\" must be an object of flag definitions")?;
        if flags.len() > MAX_FLAGS {
            return Err(format!("{} flags; at most {MAX_FLAGS}", flags.len()));
        }
        let evaluators = match top.get("$evaluators") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err("\"$evaluators\" must be an object".into()),
        };
        let engine = engine();
        let mut out = BTreeMap::new();
        for (key, def) in flags {
            check_key(key)?;
            let at = format!("flags.{key}");
            let flag = Self::flag(&engine, &at, def, &evaluators)?;
            out.insert(key.clone(), flag);
        }
        Ok(Self {
            engine,
            flags: out,
            source: doc,
        })
    }

    fn flag(
        engine: &DataLogic,
        at: &str,
        def: &Value,
        evaluators: &Map<String, Value>,
    ) -> Result<Flag, String> {
        let Value::Object(def) = def else {
            return Err(format!(
                "{at}: a flag is an object (state, variants, defaultVariant)"
            ));
        };
        for k in def.keys() {
            if !matches!(
                k.as_str(),
                "state" | "variants" | "defaultVariant" | "targeting" | "metadata"
            ) {
                return Err(format!(
                    "{at}: unknown field {k:?} (state, variants, defaultVariant, targeting, metadata)"
                ));
            }
        }
        let enabled = match def.get("state").and_then(Value::as_str) {
            Some("ENABLED") => true,
            Some("DISABLED") => false,
            _ => return Err(format!("{at}.state: \"ENABLED\" or \"DISABLED\"")),
        };
        let variants: BTreeMap<String, Value> = match def.get("variants") {
            Some(Value::Object(m)) if !m.is_empty() => {
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            _ => return Err(format!("{at}.variants: an object of at least one variant")),
        };
        if variants.len() > MAX_VARIANTS {
            return Err(format!("{at}.variants: at most {MAX_VARIANTS}"));
        }
        let first = kind(variants.values().next().unwrap_or(&Value::Null));
        if let Some((name, v)) = variants.iter().find(|(_, v)| kind(v) != first) {
            return Err(format!(
                "{at}.variants.{name}: a {} where the others are {first}s (a flag's variants share one type)",
                kind(v)
            ));
        }
        if first == "null" || first == "array" {
            return Err(format!(
                "{at}.variants: values are booleans, strings, numbers or objects"
            ));
        }
        let names = || variants.keys().cloned().collect::<Vec<_>>().join(", ");
        let default_variant = match def.get("defaultVariant") {
            Some(Value::String(d)) if variants.contains_key(d) => d.clone(),
            Some(Value::String(d)) => {
                return Err(format!(
                    "{at}.defaultVariant: {d:?} is not one of its variants ({})",
                    names()
                ));
            }
            _ => {
                return Err(format!(
                    "{at}.defaultVariant: the name of one of its variants ({})",
                    names()
                ));
            }
        };
        let targeting = match def.get("targeting") {
            None => None,
            Some(Value::Object(m)) if m.is_empty() => None,
            Some(t @ Value::Object(_)) => {
                let resolved =
                    resolve_refs(t, evaluators, 0).map_err(|e| format!("{at}.targeting: {e}"))?;
                Some(
                    engine
                        .compile(&resolved)
                        .map_err(|e| format!("{at}.targeting: not JSONLogic: {e}"))?,
                )
            }
            Some(_) => return Err(format!("{at}.targeting: a JSONLogic object")),
        };
        let metadata = match def.get("metadata") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(format!("{at}.metadata: an object")),
        };
        Ok(Flag {
            enabled,
            variants,
            default_variant,
            targeting,
            metadata,
        })
    }

    /// The set as given (flagd JSON).
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// The flags' keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.keys().map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.flags.contains_key(key)
    }

    /// This set with `other`'s flags added or replacing those of the same
    /// key (and `other`'s evaluators merged in); checked again as a whole.
    pub fn merged(&self, other: &FlagSet) -> Result<FlagSet, String> {
        let mut doc = self.source.clone();
        let flags = doc["flags"].as_object_mut().ok_or("flags")?;
        for (k, v) in other.source["flags"].as_object().into_iter().flatten() {
            flags.insert(k.clone(), v.clone());
        }
        if let Some(ev) = other.source.get("$evaluators").and_then(Value::as_object) {
            let mine = doc
                .as_object_mut()
                .ok_or("flags")?
                .entry("$evaluators")
                .or_insert_with(|| json!({}));
            if let Some(m) = mine.as_object_mut() {
                for (k, v) in ev {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        FlagSet::from_value(doc)
    }

    /// This set without `key` (none if it has no such flag).
    pub fn without(&self, key: &str) -> Option<FlagSet> {
        if !self.contains(key) {
            return None;
        }
        let mut doc = self.source.clone();
        doc["flags"].as_object_mut()?.remove(key);
        FlagSet::from_value(doc).ok()
    }

    /// Evaluates `key` for `context` (the OpenFeature evaluation context:
    /// `targetingKey` and any attributes).
    pub fn evaluate(&self, key: &str, context: &Map<String, Value>) -> Result<Answer, EvalError> {
        let flag = self.flags.get(key).ok_or_else(|| EvalError {
            code: "FLAG_NOT_FOUND",
            details: format!("no flag {key:?} in this environment"),
        })?;
        let answer = |variant: &str, reason: Reason| Answer {
            key: key.to_owned(),
            value: flag.variants[variant].clone(),
            variant: variant.to_owned(),
            reason,
            metadata: flag.metadata.clone(),
        };
        if !flag.enabled {
            return Ok(answer(&flag.default_variant, Reason::Disabled));
        }
        let Some(targeting) = &flag.targeting else {
            return Ok(answer(&flag.default_variant, Reason::Static));
        };
        let mut data = context.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        data.insert("$flagd".into(), json!({"flagKey": key, "timestamp": now}));
        let chosen = self
            .engine
            .evaluate_owned(targeting, Value::Object(data))
            .map_err(|e| EvalError {
                code: "GENERAL",
                details: format!("targeting of {key:?} failed: {e}"),
            })?;
        let name = match chosen {
            Value::Null => return Ok(answer(&flag.default_variant, Reason::Default)),
            Value::String(s) => s,
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(EvalError {
                    code: "GENERAL",
                    details: format!("targeting of {key:?} gave {other}, not a variant name"),
                });
            }
        };
        if flag.variants.contains_key(&name) {
            Ok(answer(&name, Reason::TargetingMatch))
        } else {
            Err(EvalError {
                code: "GENERAL",
                details: format!(
                    "targeting of {key:?} chose {name:?}, which is not one of its variants"
                ),
            })
        }
    }
}

/// The bucket (0 ≤ b < 100) flagd's `fractional` puts `key` in: murmur3
/// (x86, 32-bit, seed 0) as a share of `u32::MAX`, times 100.
pub fn bucket(key: &str) -> f64 {
    bucket_bytes(key.as_bytes())
}

/// [`bucket`] of raw bytes (a sticky header's value): the serving layer
/// places a sticky caller with it, so a canary's sticky bucket and a
/// flag's `fractional` bucket of the same key agree.
pub fn bucket_bytes(key: &[u8]) -> f64 {
    let hash = murmur3::murmur3_32(&mut std::io::Cursor::new(key), 0).unwrap_or(0);
    f64::from(hash) / f64::from(u32::MAX) * 100.0
}

/// `{"fractional": [KEY?, ["a", 50], ["b", 50]]}`.
struct Fractional;

impl Operator for Fractional {
    fn evaluate(
        &self,
        args: &[Value],
        context: &mut ContextStack,
        evaluator: &dyn Evaluator,
    ) -> datalogic_rs::Result<Value> {
        // The evaluator compiles what it is given on every call, so only
        // logic goes through it: a bucket written as literals (`["on", 10]`,
        // the usual form) is read as it stands.
        let literal = |v: &Value| !matches!(v, Value::Object(_) | Value::Array(_));
        let mut evaluated: Vec<std::borrow::Cow<'_, Value>> = Vec::with_capacity(args.len());
        for a in args {
            evaluated.push(match a {
                Value::Array(items) if items.iter().all(literal) => std::borrow::Cow::Borrowed(a),
                v if literal(v) => std::borrow::Cow::Borrowed(a),
                _ => std::borrow::Cow::Owned(evaluator.evaluate(a, context)?),
            });
        }
        let (key, buckets) = match evaluated.first().map(|v| v.as_ref()) {
            Some(Value::String(k)) => (k.clone(), &evaluated[1..]),
            _ => {
                let root = context.root();
                let data = root.data();
                let flag = data["$flagd"]["flagKey"].as_str().unwrap_or_default();
                let Some(targeting) = data.get("targetingKey").and_then(Value::as_str) else {
                    return Ok(Value::Null);
                };
                (format!("{flag}{targeting}"), &evaluated[..])
            }
        };
        let mut weights: Vec<(&str, f64)> = Vec::with_capacity(buckets.len());
        for b in buckets {
            match b.as_array().map(Vec::as_slice) {
                Some([Value::String(v)]) => weights.push((v, 1.0)),
                Some([Value::String(v), w]) => {
                    weights.push((v, w.as_f64().unwrap_or(0.0).max(0.0)))
                }
                _ => return Ok(Value::Null),
            }
        }
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        if total <= 0.0 {
            return Ok(Value::Null);
        }
        let at = bucket(&key);
        let mut end = 0.0;
        for (variant, w) in &weights {
            end += w * 100.0 / total;
            if at < end {
                return Ok(Value::String((*variant).to_owned()));
            }
        }
        Ok(weights
            .last()
            .map(|(v, _)| Value::String((*v).to_owned()))
            .unwrap_or(Value::Null))
    }
}

/// `{"sem_ver": [VERSION, OP, VERSION]}` with `=`, `!=`, `<`, `<=`, `>`,
/// `>=`, `^` (same major), `~` (same major and minor).
struct SemVer;

fn parse_semver(s: &str) -> Option<(u64, u64, u64)> {
    let s = s.trim().trim_start_matches(['v', 'V']);
    let core = s.split(['-', '+']).next()?;
    let mut parts = core.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().ok()?;
    let patch = parts.next().unwrap_or("0").parse().ok()?;
    Some((major, minor, patch))
}

impl Operator for SemVer {
    fn evaluate(
        &self,
        args: &[Value],
        context: &mut ContextStack,
        evaluator: &dyn Evaluator,
    ) -> datalogic_rs::Result<Value> {
        if args.len() != 3 {
            return Ok(Value::Bool(false));
        }
        let text = |v: Value| match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let a = text(evaluator.evaluate(&args[0], context)?);
        let op = text(evaluator.evaluate(&args[1], context)?);
        let b = text(evaluator.evaluate(&args[2], context)?);
        let (Some(a), Some(b)) = (parse_semver(&a), parse_semver(&b)) else {
            return Ok(Value::Bool(false));
        };
        Ok(Value::Bool(match op.as_str() {
            "=" => a == b,
            "!=" => a != b,
            "<" => a < b,
            "<=" => a <= b,
            ">" => a > b,
            ">=" => a >= b,
            "^" => a.0 == b.0,
            "~" => a.0 == b.0 && a.1 == b.1,
            _ => false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    const FILE: &str = r##"{
      "flags": {
        "new-checkout": {
          "state": "ENABLED",
          "variants": {"on": true, "off": false},
          "defaultVariant": "off",
          "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.org"]}, "on", null]}
        },
        "color": {
          "state": "ENABLED",
          "variants": {"red": "#f00", "blue": "#00f"},
          "defaultVariant": "red",
          "targeting": {"fractional": [["red", 50], ["blue", 50]]}
        },
        "beta": {
          "state": "DISABLED",
          "variants": {"on": true, "off": false},
          "defaultVariant": "off"
        },
        "api": {
          "state": "ENABLED",
          "variants": {"v1": 1, "v2": 2},
          "defaultVariant": "v1",
          "targeting": {"if": [{"$ref": "modern"}, "v2", "v1"]}
        }
      },
      "$evaluators": {"modern": {"sem_ver": [{"var": "app_version"}, ">=", "2.1.0"]}}
    }"##;

    #[test]
    fn a_flagd_file_evaluates_by_its_targeting() {
        let set = FlagSet::parse(FILE.as_bytes()).unwrap();
        let a = set
            .evaluate("new-checkout", &ctx(json!({"email": "ann@example.org"})))
            .unwrap();
        assert_eq!(
            (a.value, a.variant.as_str(), a.reason),
            (json!(true), "on", Reason::TargetingMatch)
        );
        let a = set
            .evaluate("new-checkout", &ctx(json!({"email": "bob@other.org"})))
            .unwrap();
        assert_eq!((a.value, a.reason), (json!(false), Reason::Default));
        let a = set.evaluate("beta", &Map::new()).unwrap();
        assert_eq!((a.value, a.reason), (json!(false), Reason::Disabled));
        let a = set
            .evaluate("api", &ctx(json!({"app_version": "2.3.1"})))
            .unwrap();
        assert_eq!(a.value, json!(2));
        let a = set
            .evaluate("api", &ctx(json!({"app_version": "1.9"})))
            .unwrap();
        assert_eq!(a.value, json!(1));
        let e = set.evaluate("nope", &Map::new()).unwrap_err();
        assert_eq!(e.code, "FLAG_NOT_FOUND");
    }

    #[test]
    fn fractional_buckets_are_stable_and_about_their_weights() {
        let set = FlagSet::parse(FILE.as_bytes()).unwrap();
        let mut blue = 0;
        for i in 0..2000 {
            let c = ctx(json!({"targetingKey": format!("user-{i}")}));
            let a = set.evaluate("color", &c).unwrap();
            let again = set.evaluate("color", &c).unwrap();
            assert_eq!(a.variant, again.variant, "sticky");
            assert_eq!(
                a.variant == "blue",
                bucket(&format!("coloruser-{i}")) >= 50.0,
                "the bucket of flag key + targeting key"
            );
            if a.variant == "blue" {
                blue += 1;
            }
        }
        assert!((850..1150).contains(&blue), "{blue} of 2000 at 50%");
        // Reference values of MurmurHash3 x86_32, seed 0 (Python's mmh3):
        // "hello" is 613,153,351 and "flagAkey1" 1,735,676,723.
        let b = bucket("hello");
        assert!(
            (b - 613_153_351.0 / f64::from(u32::MAX) * 100.0).abs() < 1e-9,
            "{b}"
        );
        let b = bucket("flagAkey1");
        assert!(
            (b - 1_735_676_723.0 / f64::from(u32::MAX) * 100.0).abs() < 1e-9,
            "{b}"
        );
    }

    #[test]
    fn fractional_takes_a_bucketing_expression_and_computed_buckets() {
        // The key from an expression (flagd's documented `cat` of flag key
        // and an attribute), a bucket whose weight is computed, and one
        // written as literals: the computed parts are evaluated, and the
        // split follows the hash of the key the expression gave.
        let set = FlagSet::parse(
            br#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": "a", "b": "b"},
                 "defaultVariant": "a",
                 "targeting": {"fractional": [
                   {"cat": [{"var": "$flagd.flagKey"}, {"var": "email"}]},
                   ["a", {"var": "share"}], ["b", 50]]}}}}"#,
        )
        .unwrap();
        let mut a_count = 0;
        for i in 0..400 {
            let email = format!("u{i}@example.org");
            let got = set
                .evaluate("f", &ctx(json!({"email": email, "share": 50})))
                .unwrap();
            assert_eq!(got.reason, Reason::TargetingMatch);
            assert_eq!(got.variant == "a", bucket(&format!("f{email}")) < 50.0);
            a_count += usize::from(got.variant == "a");
        }
        assert!((150..250).contains(&a_count), "{a_count} of 400 at 50%");
        // A computed weight of 0 sends everyone to the other bucket.
        let got = set
            .evaluate("f", &ctx(json!({"email": "x@example.org", "share": 0})))
            .unwrap();
        assert_eq!(got.variant, "b");
    }

    #[test]
    fn bad_files_are_refused_by_name() {
        let bad = |doc: &str| FlagSet::parse(doc.as_bytes()).unwrap_err();
        assert!(bad("[]").contains("JSON object"));
        assert!(bad("{").starts_with("not JSON"));
        assert!(bad(r#"{"flag": {}}"#).contains("unknown field"));
        let e = bad(
            r#"{"flags": {"f": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "blue"}}}"#,
        );
        assert_eq!(
            e,
            "flags.f.defaultVariant: \"blue\" is not one of its variants (off, on)"
        );
        let e = bad(
            r#"{"flags": {"f": {"state": "ON", "variants": {"on": true}, "defaultVariant": "on"}}}"#,
        );
        assert!(e.starts_with("flags.f.state"), "{e}");
        let e = bad(
            r#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": true, "b": "x"}, "defaultVariant": "a"}}}"#,
        );
        assert!(e.contains("share one type"), "{e}");
        let e = bad(
            r#"{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a", "targeting": {"$ref": "nope"}}}}"#,
        );
        assert!(e.contains("no such evaluator"), "{e}");
        let e = bad(r#"{"flags": {"bad key": {}}}"#);
        assert!(e.contains("flag key"), "{e}");
    }

    #[test]
    fn merging_replaces_by_key_and_removing_leaves_the_rest() {
        let set = FlagSet::parse(FILE.as_bytes()).unwrap();
        let more = FlagSet::parse(
            br#"{"flags": {"beta": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"}}}"#,
        )
        .unwrap();
        let merged = set.merged(&more).unwrap();
        assert_eq!(
            merged.evaluate("beta", &Map::new()).unwrap().value,
            json!(true)
        );
        assert!(merged.contains("api"), "evaluators kept");
        let less = merged.without("beta").unwrap();
        assert!(!less.contains("beta") && less.contains("color"));
        assert!(less.without("beta").is_none());
    }
}
