//! Differences between two states (the JSON of `topology::state`), small where the states are
//! alike: the journal's records are the difference from the state before them, and its base is
//! the difference from the power-on state. Register images are hex strings of fixed length, so a
//! few changed registers are a few short runs of hex, not the whole 4 KiB image.
//!
//! A patch is JSON with one key that says what it does:
//!
//! ```text
//! {"set": VALUE}                       replace the value
//! {"del": 0}                           remove the object key (only inside "obj")
//! {"obj": {"KEY": PATCH, ...}}         patch these keys of an object
//! {"arr": [[INDEX, PATCH], ...]}       patch these elements of an array (same length)
//! {"str": [[OFFSET, "TEXT"], ...]}     overwrite these runs of an ASCII string (same length)
//! ```
//!
//! Applying checks everything (a patch comes from a file that may be damaged or hostile): the
//! kind must fit the value, indexes and runs must lie inside it, runs must be ASCII.

use serde_json::{json, Map, Value};
use thiserror::Error;

/// Equal bytes between two changed runs of a string below which the runs are written as one.
pub const RUN_GAP: usize = 8;
/// Nesting accepted when applying (states are a few levels deep).
const MAX_DEPTH: usize = 32;

/// Why a patch does not apply to a value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PatchError {
    /// Not one of the forms above.
    #[error("not a patch at {0}")]
    Malformed(String),
    /// The patch's kind does not fit the value there (e.g. an object patch on a number).
    #[error("a {kind} patch does not fit the value at {at}")]
    Mismatch {
        /// The patch's kind.
        kind: &'static str,
        /// Where, as a path from the top.
        at: String,
    },
    /// An index or a run outside the value.
    #[error("out of range at {0}")]
    OutOfRange(String),
}

/// The patch that turns `old` into `new`, `None` if they are equal.
pub fn diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    Some(match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut m = Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) => {
                        if let Some(p) = diff(ov, nv) {
                            m.insert(k.clone(), p);
                        }
                    }
                    None => {
                        m.insert(k.clone(), json!({ "set": nv }));
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                m.insert(k.clone(), json!({ "del": 0 }));
            }
            json!({ "obj": m })
        }
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => {
            let items: Vec<Value> = o
                .iter()
                .zip(n)
                .enumerate()
                .filter_map(|(i, (ov, nv))| diff(ov, nv).map(|p| json!([i, p])))
                .collect();
            json!({ "arr": items })
        }
        (Value::String(o), Value::String(n))
            if o.len() == n.len() && o.is_ascii() && n.is_ascii() =>
        {
            let runs = string_runs(o.as_bytes(), n.as_bytes());
            let changed: usize = runs.iter().map(|(_, t)| t.len()).sum();
            if changed * 2 > n.len() {
                json!({ "set": new })
            } else {
                let runs: Vec<Value> = runs.into_iter().map(|(at, t)| json!([at, t])).collect();
                json!({ "str": runs })
            }
        }
        _ => json!({ "set": new }),
    })
}

/// Runs where `new` differs from `old` (same length, ASCII), merged across short equal gaps.
fn string_runs(old: &[u8], new: &[u8]) -> Vec<(usize, String)> {
    // Equal blocks are skipped whole (one compare each): a persisted write changes a few
    // registers of a port's 8 KiB of hex, and this runs on every one.
    const BLOCK: usize = 32;
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let (old, new) = (
        &old[..old.len().min(new.len())],
        &new[..old.len().min(new.len())],
    );
    for (b, (o, n)) in old.chunks(BLOCK).zip(new.chunks(BLOCK)).enumerate() {
        if o == n {
            continue;
        }
        for i in (0..n.len())
            .filter(|&i| o[i] != n[i])
            .map(|i| b * BLOCK + i)
        {
            match runs.last_mut() {
                Some((_, end)) if i - *end <= RUN_GAP => *end = i + 1,
                _ => runs.push((i, i + 1)),
            }
        }
    }
    runs.into_iter()
        .map(|(s, e)| (s, String::from_utf8_lossy(&new[s..e]).into_owned()))
        .collect()
}

/// Apply `patch` to `value`; on error `value` may be partly patched (callers patch a copy).
pub fn apply(value: &mut Value, patch: &Value) -> Result<(), PatchError> {
    apply_at(value, patch, &mut String::new(), 0)
}

fn apply_at(
    value: &mut Value,
    patch: &Value,
    at: &mut String,
    depth: usize,
) -> Result<(), PatchError> {
    let malformed = |at: &str| PatchError::Malformed(path(at));
    if depth > MAX_DEPTH {
        return Err(malformed(at));
    }
    let (kind, arg) = match patch.as_object() {
        Some(m) if m.len() == 1 => m.iter().next().ok_or_else(|| malformed(at))?,
        _ => return Err(malformed(at)),
    };
    let mismatch = |kind: &'static str, at: &str| PatchError::Mismatch { kind, at: path(at) };
    match kind.as_str() {
        "set" => *value = arg.clone(),
        "obj" => {
            let keys = arg.as_object().ok_or_else(|| malformed(at))?;
            let obj = value.as_object_mut().ok_or_else(|| mismatch("obj", at))?;
            for (k, p) in keys {
                let len = at.len();
                at.push('.');
                at.push_str(k);
                if p.get("del").is_some() && p.as_object().is_some_and(|m| m.len() == 1) {
                    obj.remove(k)
                        .ok_or_else(|| PatchError::OutOfRange(path(at)))?;
                } else if p.get("set").is_some() && !obj.contains_key(k) {
                    // A key the old state did not have.
                    let mut v = Value::Null;
                    apply_at(&mut v, p, at, depth + 1)?;
                    obj.insert(k.clone(), v);
                } else {
                    let v = obj
                        .get_mut(k)
                        .ok_or_else(|| PatchError::OutOfRange(path(at)))?;
                    apply_at(v, p, at, depth + 1)?;
                }
                at.truncate(len);
            }
        }
        "arr" => {
            let items = arg.as_array().ok_or_else(|| malformed(at))?;
            let arr = value.as_array_mut().ok_or_else(|| mismatch("arr", at))?;
            for item in items {
                let (i, p) = match item.as_array().map(Vec::as_slice) {
                    Some([i, p]) => (i.as_u64().ok_or_else(|| malformed(at))?, p),
                    _ => return Err(malformed(at)),
                };
                let len = at.len();
                at.push_str(&format!("[{i}]"));
                let v = usize::try_from(i)
                    .ok()
                    .and_then(|i| arr.get_mut(i))
                    .ok_or_else(|| PatchError::OutOfRange(path(at)))?;
                apply_at(v, p, at, depth + 1)?;
                at.truncate(len);
            }
        }
        "str" => {
            let runs = arg.as_array().ok_or_else(|| malformed(at))?;
            let Value::String(s) = value else {
                return Err(mismatch("str", at));
            };
            if !s.is_ascii() {
                return Err(mismatch("str", at));
            }
            let mut bytes = std::mem::take(s).into_bytes();
            for run in runs {
                let (off, text) = match run.as_array().map(Vec::as_slice) {
                    Some([o, Value::String(t)]) if t.is_ascii() => {
                        (o.as_u64().ok_or_else(|| malformed(at))?, t)
                    }
                    _ => return Err(malformed(at)),
                };
                let range = usize::try_from(off)
                    .ok()
                    .and_then(|o| Some(o..o.checked_add(text.len())?))
                    .filter(|r| r.end <= bytes.len())
                    .ok_or_else(|| PatchError::OutOfRange(path(at)))?;
                bytes[range].copy_from_slice(text.as_bytes());
            }
            // ASCII overwritten with ASCII stays UTF-8.
            *s = String::from_utf8(bytes).map_err(|_| mismatch("str", at))?;
        }
        _ => return Err(malformed(at)),
    }
    Ok(())
}

fn path(at: &str) -> String {
    if at.is_empty() {
        "the top".into()
    } else {
        at.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(old: Value, new: Value) -> Value {
        let p = diff(&old, &new).expect("a difference");
        let mut v = old;
        apply(&mut v, &p).expect("applies");
        assert_eq!(v, new);
        p
    }

    #[test]
    fn equal_values_have_no_patch() {
        let v = json!({"a": [1, "00ff"], "b": null});
        assert_eq!(diff(&v, &v), None);
    }

    #[test]
    fn a_changed_register_is_a_short_run_of_hex() {
        let old = "00".repeat(4096);
        let mut new = old.clone();
        new.replace_range(0x40..0x44, "beef");
        let p = roundtrip(
            json!({"f": [{"space": {"value": old}}]}),
            json!({"f": [{"space": {"value": new}}]}),
        );
        assert_eq!(
            p,
            json!({"obj": {"f": {"arr": [[0, {"obj": {"space": {"obj": {"value":
                {"str": [[0x40, "beef"]]}}}}}]]}}})
        );
        assert!(p.to_string().len() < 100);
    }

    #[test]
    fn string_runs_skip_equal_blocks_but_find_every_change() {
        // One byte at a time and in pairs, at and around every 32-byte block boundary.
        let old = "0".repeat(200);
        for i in 0..200 {
            for j in [i, (i + 1).min(199), (i + 9).min(199), (i + 10).min(199)] {
                let mut new = old.clone().into_bytes();
                new[i] = b'f';
                new[j] = b'e';
                let naive: Vec<usize> = (0..200).filter(|&k| new[k] != b'0').collect();
                let runs = string_runs(old.as_bytes(), &new);
                let found: Vec<usize> = runs
                    .iter()
                    .flat_map(|(at, t)| (*at..at + t.len()).filter(|&k| new[k] != b'0'))
                    .collect();
                assert_eq!(found, naive, "changes at {i} and {j}");
                // Merged across at most RUN_GAP equal bytes.
                assert_eq!(runs.len(), if j - i > RUN_GAP + 1 { 2 } else { 1 });
            }
        }
    }

    #[test]
    fn keys_added_and_removed_and_kinds_changed() {
        roundtrip(json!({"a": 1, "b": 2}), json!({"a": "x", "c": [3]}));
        roundtrip(json!([1, 2]), json!([1, 2, 3]));
        roundtrip(json!("ab"), json!("abc"));
        roundtrip(json!({"s": "0000"}), json!({"s": "1111"}));
    }

    #[test]
    fn patches_that_do_not_fit_are_errors() {
        let mut v = json!({"a": [1], "s": "00"});
        let bad = [
            json!({"obj": {"a": {"arr": [[1, {"set": 0}]]}}}),
            json!({"obj": {"s": {"str": [[1, "ff"]]}}}),
            json!({"obj": {"s": {"str": [[0, "é"]]}}}),
            json!({"obj": {"s": {"obj": {}}}}),
            json!({"obj": {"x": {"obj": {}}}}),
            json!({"obj": {"x": {"del": 0}}}),
            json!({"set": 1, "obj": {}}),
            json!({"what": 1}),
            json!([]),
            json!({"obj": {"a": {"arr": [[18446744073709551615u64, {"set": 0}]]}}}),
            json!({"obj": {"s": {"str": [[18446744073709551615u64, "f"]]}}}),
        ];
        for p in bad {
            assert!(apply(&mut v.clone(), &p).is_err(), "{p} applied");
        }
        let mut deep = json!({"set": 0});
        for _ in 0..100 {
            deep = json!({ "obj": { "a": deep } });
        }
        assert!(apply(&mut v, &deep).is_err());
        let mut nested = json!(0);
        for _ in 0..100 {
            nested = json!({ "a": nested });
        }
        assert_eq!(
            apply(&mut nested.clone(), &deep),
            Err(PatchError::Malformed(".a".repeat(33)))
        );
    }
}
