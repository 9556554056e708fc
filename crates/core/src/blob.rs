//! Blobs: byte strings stored apart from the payloads (inputs and outputs) that refer to
//! them, content-addressed by their SHA-256, and how a JSON payload refers to one.
//!
//! A payload stays one JSON value. A byte string in it is either inline,
//! `{"$bytes": "<base64>"}` (small ones), or a reference to a stored blob,
//! `{"$blob": "sha256:<64 hex digits>", "size": N}`; a reference with `"type": "json"` stands
//! for the JSON value the blob holds (a payload too large to travel inline). An SDK uploads a
//! blob first (`POST /v1/blobs`, its bytes as they are) and sends the reference; the server
//! keeps the blob while a call that refers to it is kept.

use serde_json::Value;

/// The key of a blob reference.
pub const KEY: &str = "$blob";

/// Payload bytes above which the SDKs store a byte string (or a whole JSON payload) as a blob
/// instead of inline; `HOPPER_INLINE_MAX` (bytes) changes it for a process.
pub const INLINE_MAX: usize = 256 * 1024;

/// The bytes of one stored chunk of a blob.
pub const CHUNK: usize = 1024 * 1024;

/// What a blob reference stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The bytes themselves.
    Bytes,
    /// The JSON value they hold.
    Json,
}

/// A reference to a blob found in a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    /// `sha256:` and 64 lowercase hex digits.
    pub digest: String,
    pub size: u64,
    pub kind: Kind,
    /// Where the payload holds it (`the input[0].audio`); empty for a reference made here.
    pub at: String,
}

impl BlobRef {
    /// The reference as a payload holds it.
    pub fn to_value(&self) -> Value {
        let mut map = serde_json::Map::new();
        map.insert(KEY.into(), Value::String(self.digest.clone()));
        map.insert("size".into(), Value::from(self.size));
        if self.kind == Kind::Json {
            map.insert("type".into(), Value::String("json".into()));
        }
        Value::Object(map)
    }
}

/// `sha256:` and the hex digest of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// Whether `text` is a digest as [`digest`] writes it.
pub fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether a payload's JSON text may hold a blob reference (a cheap test before [`refs`]).
pub fn may_refer(text: &str) -> bool {
    text.contains("\"$blob\"")
}

/// The blob references in `value`, in document order, or what is wrong with one (an object
/// with a `$blob` key that is not a well-formed reference), naming where it is under `what`.
pub fn refs(value: &Value, what: &str) -> Result<Vec<BlobRef>, String> {
    let mut out = Vec::new();
    walk(value, what, &mut out)?;
    Ok(out)
}

fn walk(value: &Value, path: &str, out: &mut Vec<BlobRef>) -> Result<(), String> {
    match value {
        Value::Object(map) if map.contains_key(KEY) => {
            out.push(parse(map, path)?);
            Ok(())
        }
        Value::Object(map) => {
            for (k, v) in map {
                walk(v, &format!("{path}.{k}"), out)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, &format!("{path}[{i}]"), out)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn parse(map: &serde_json::Map<String, Value>, path: &str) -> Result<BlobRef, String> {
    let shape = "a blob reference is {\"$blob\": \"sha256:<64 hex digits>\", \"size\": N} (and \"type\": \"json\" for a JSON value)";
    let digest = map
        .get(KEY)
        .and_then(Value::as_str)
        .filter(|d| is_digest(d))
        .ok_or_else(|| format!("{path}: its \"$blob\" is not a sha256: digest; {shape}"))?;
    let size = map
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("{path}: its \"size\" is missing or not a byte count; {shape}"))?;
    let kind = match map.get("type").map(|t| t.as_str()) {
        None | Some(Some("bytes")) => Kind::Bytes,
        Some(Some("json")) => Kind::Json,
        Some(_) => {
            return Err(format!(
                "{path}: its \"type\" is neither \"bytes\" nor \"json\"; {shape}"
            ))
        }
    };
    // No "path": that is a worker's own note of where it put a blob (or where a process
    // put an output's bytes), never part of a payload the server keeps.
    if let Some(extra) = map
        .keys()
        .find(|k| !matches!(k.as_str(), KEY | "size" | "type"))
    {
        return Err(format!("{path}: {extra:?} has no place in it; {shape}"));
    }
    Ok(BlobRef {
        digest: digest.to_string(),
        size,
        kind,
        at: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_found_anywhere_and_bad_ones_named() {
        let d = digest(b"abc");
        assert!(is_digest(&d));
        let value = json!({"a": [1, {"$blob": d, "size": 3}], "b": {"$blob": d, "size": 3, "type": "json"}});
        let found = refs(&value, "the input").unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].kind, Kind::Json);
        assert_eq!(found[0].to_value(), json!({"$blob": d, "size": 3}));
        let err = refs(&json!([{"$blob": "md5:x", "size": 1}]), "the input").unwrap_err();
        assert!(err.starts_with("the input[0]: its \"$blob\""), "{err}");
        let err = refs(&json!({"$blob": d}), "the output").unwrap_err();
        assert!(err.contains("\"size\""), "{err}");
        assert!(refs(&json!({"$bytes": "AAAA"}), "x").unwrap().is_empty());
        let err = refs(
            &json!({"$blob": d, "size": 3, "path": "/etc/passwd"}),
            "the input",
        )
        .unwrap_err();
        assert!(err.contains("\"path\" has no place"), "{err}");
    }
}
