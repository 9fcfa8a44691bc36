//! kube-dns `stubDomains` (a JSON object of domain to nameserver IPs) with Maille's entry for
//! `maille.mesh` added or taken out as text, so that taking it out gives back the user's JSON
//! exactly as it was written.

use super::corefile::MESH_ZONE;
use serde_json::{Map, Value};

/// The `stubDomains` value could not be read; nothing is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a JSON object of domain to a list of nameserver IPs: {reason}")]
pub struct Error {
    /// The value found.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

fn parse(text: &str) -> Result<Map<String, Value>, Error> {
    let bad = |reason: String| Error {
        value: text.to_string(),
        reason,
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(bad(format!("found a JSON {}", kind(&other)))),
        Err(e) => Err(bad(e.to_string())),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Our entry as written by [`with_entry`], without the leading comma.
fn entry_text(ip: &str) -> String {
    format!(
        "{}:{}",
        Value::String(MESH_ZONE.into()),
        Value::Array(vec![Value::String(ip.into())])
    )
}

/// `stubDomains` with `maille.mesh` pointing at `ip`. Unchanged (same text) when it already
/// does; an entry pointing elsewhere (an install in another namespace) is replaced.
pub fn with_entry(existing: Option<&str>, ip: &str) -> Result<String, Error> {
    let fresh = || format!("{{{}}}", entry_text(ip));
    let Some(text) = existing.filter(|t| !t.trim().is_empty()) else {
        return Ok(fresh());
    };
    let map = parse(text)?;
    let wanted = Value::Array(vec![Value::String(ip.into())]);
    let base = match map.get(MESH_ZONE) {
        Some(current) if *current == wanted => return Ok(text.to_string()),
        Some(_) => match without_entry(text)? {
            Some(rest) => rest,
            None => return Ok(fresh()),
        },
        None => text.to_string(),
    };
    if parse(&base)?.is_empty() {
        return Ok(fresh());
    }
    // Insert right after the last member, before the closing brace and whatever whitespace
    // precedes it, so that the exact inserted text can be found and taken out again.
    let close = base.trim_end().len() - 1;
    let last_member_end = base[..close].trim_end().len();
    let out = format!(
        "{},{}{}",
        &base[..last_member_end],
        entry_text(ip),
        &base[last_member_end..]
    );
    debug_assert!(parse(&out).is_ok_and(|m| m.get(MESH_ZONE) == Some(&wanted)));
    Ok(out)
}

/// `stubDomains` without the `maille.mesh` entry: `None` when nothing else is left, the text
/// unchanged when there is no such entry.
pub fn without_entry(existing: &str) -> Result<Option<String>, Error> {
    let mut map = parse(existing)?;
    let Some(ours) = map.remove(MESH_ZONE) else {
        return Ok(Some(existing.to_string()));
    };
    if map.is_empty() {
        return Ok(None);
    }
    // The text `with_entry` inserted, when it is still there as written.
    if let Some(ip) = ours
        .as_array()
        .filter(|a| a.len() == 1)
        .and_then(|a| a[0].as_str())
    {
        let inserted = format!(",{}", entry_text(ip));
        if existing.matches(&inserted).count() == 1 {
            let candidate = existing.replacen(&inserted, "", 1);
            if parse(&candidate).is_ok_and(|m| m == map) {
                return Ok(Some(candidate));
            }
        }
    }
    // Reformatted by someone since: fall back to a canonical rendering of the other entries.
    Ok(Some(Value::Object(map).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_to_absent_or_empty_and_removes_to_nothing() {
        for existing in [None, Some(""), Some("  "), Some("{}")] {
            let text = with_entry(existing, "10.96.0.53").unwrap();
            assert_eq!(text, r#"{"maille.mesh":["10.96.0.53"]}"#);
            assert_eq!(without_entry(&text).unwrap(), None);
        }
    }

    #[test]
    fn keeps_user_entries_byte_for_byte() {
        let user =
            "{\n  \"corp.example\": [\"10.0.0.2\", \"10.0.0.3\"],\n  \"lab\": [\"10.1.0.2\"]\n}\n";
        let ours = with_entry(Some(user), "10.96.0.53").unwrap();
        let map = parse(&ours).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(map[MESH_ZONE], serde_json::json!(["10.96.0.53"]));
        assert_eq!(with_entry(Some(&ours), "10.96.0.53").unwrap(), ours);
        assert_eq!(without_entry(&ours).unwrap().as_deref(), Some(user));
    }

    #[test]
    fn moves_the_entry_to_a_new_address() {
        let user = r#"{"corp.example": ["10.0.0.2"]}"#;
        let first = with_entry(Some(user), "10.96.0.53").unwrap();
        let second = with_entry(Some(&first), "10.96.7.7").unwrap();
        assert!(
            second.contains("10.96.7.7") && !second.contains("10.96.0.53"),
            "{second}"
        );
        assert_eq!(without_entry(&second).unwrap().as_deref(), Some(user));
    }

    #[test]
    fn reformatted_text_still_loses_only_our_entry() {
        let text = r#"{ "maille.mesh" : [ "10.96.0.53" ], "b": ["10.0.0.9"] }"#;
        assert_eq!(
            without_entry(text).unwrap().as_deref(),
            Some(r#"{"b":["10.0.0.9"]}"#)
        );
        let untouched = r#"{"b": ["10.0.0.9"]}"#;
        assert_eq!(
            without_entry(untouched).unwrap().as_deref(),
            Some(untouched)
        );
    }

    #[test]
    fn refuses_what_is_not_an_object() {
        let err = with_entry(Some("[\"10.0.0.1\"]"), "10.96.0.53").unwrap_err();
        assert!(err.to_string().contains("found a JSON array"), "{err}");
        assert!(without_entry("{not json").is_err());
    }
}
