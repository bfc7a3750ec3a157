//! Command arguments checked the way QEMU's QAPI input visitor checks them, with its wording:
//! members are visited in schema order (a missing or mistyped one is reported as it is reached),
//! and whatever is left over at the end is "unexpected".

use serde_json::{Map, Value};

use super::ControlError;

/// A QMP error reply's class and description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QmpError {
    pub class: &'static str,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        QmpError {
            class: "GenericError",
            desc: desc.into(),
        }
    }

    pub fn command_not_found(desc: impl Into<String>) -> Self {
        QmpError {
            class: "CommandNotFound",
            desc: desc.into(),
        }
    }
}

impl From<ControlError> for QmpError {
    fn from(e: ControlError) -> Self {
        QmpError {
            class: e.class(),
            desc: e.to_string(),
        }
    }
}

pub(crate) fn missing(key: &str) -> QmpError {
    QmpError::generic(format!("Parameter '{key}' is missing"))
}

pub(crate) fn bad_type(key: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{key}', expected: {expected}"
    ))
}

/// A command's `arguments` object, consumed member by member.
pub(crate) struct Args(Map<String, Value>);

impl Args {
    pub fn new(map: Map<String, Value>) -> Self {
        Args(map)
    }

    /// Remove a member, whatever its type.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key)
    }

    /// A mandatory string member.
    pub fn string(&mut self, key: &str) -> Result<String, QmpError> {
        self.opt_string(key)?.ok_or_else(|| missing(key))
    }

    /// An optional string member (present means it must be a string: `null` is a type error).
    pub fn opt_string(&mut self, key: &str) -> Result<Option<String>, QmpError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad_type(key, "string")),
        }
    }

    /// An optional boolean member.
    pub fn opt_bool(&mut self, key: &str) -> Result<Option<bool>, QmpError> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(_) => Err(bad_type(key, "boolean")),
        }
    }

    /// An optional array of at most `max` uint32 values.
    pub fn opt_u32_list(&mut self, key: &str, max: usize) -> Result<Option<Vec<u32>>, QmpError> {
        let Some(v) = self.take(key) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(bad_type(key, "array"));
        };
        if items.len() > max {
            return Err(QmpError::generic(format!(
                "Parameter '{key}' expects at most {max} elements"
            )));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, v)| uint32(&format!("{key}[{i}]"), v))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Everything must have been consumed.
    pub fn finish(&self) -> Result<(), QmpError> {
        match self.0.keys().next() {
            Some(k) => Err(QmpError::generic(format!("Parameter '{k}' is unexpected"))),
            None => Ok(()),
        }
    }
}

/// A JSON integer in 0..=u32::MAX.
pub(crate) fn uint32(key: &str, v: &Value) -> Result<u32, QmpError> {
    let Value::Number(n) = v else {
        return Err(bad_type(key, "integer"));
    };
    if !(n.is_i64() || n.is_u64()) {
        return Err(bad_type(key, "integer"));
    }
    n.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| QmpError::generic(format!("Parameter '{key}' expects uint32_t")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn args(v: Value) -> Args {
        match v {
            Value::Object(m) => Args::new(m),
            _ => Args::new(Map::new()),
        }
    }

    #[test]
    fn qemu_wording_for_missing_mistyped_and_unexpected() {
        let mut a = args(json!({"id": 5, "x": 1}));
        assert_eq!(
            a.string("id").err().map(|e| e.desc),
            Some("Invalid parameter type for 'id', expected: string".into())
        );
        assert_eq!(
            a.string("id").err().map(|e| e.desc),
            Some("Parameter 'id' is missing".into())
        );
        assert_eq!(
            a.finish().err().map(|e| e.desc),
            Some("Parameter 'x' is unexpected".into())
        );
        let mut a = args(json!({"b": null, "n": [1, -1], "m": [1, 2, 3], "f": [1.5]}));
        assert_eq!(
            a.opt_bool("b").err().map(|e| e.desc),
            Some("Invalid parameter type for 'b', expected: boolean".into())
        );
        assert_eq!(
            a.opt_u32_list("n", 4).err().map(|e| e.desc),
            Some("Parameter 'n[1]' expects uint32_t".into())
        );
        assert_eq!(
            a.opt_u32_list("m", 2).err().map(|e| e.desc),
            Some("Parameter 'm' expects at most 2 elements".into())
        );
        assert_eq!(
            a.opt_u32_list("f", 2).err().map(|e| e.desc),
            Some("Invalid parameter type for 'f[0]', expected: integer".into())
        );
        assert!(a.finish().is_ok());
        let mut a = args(json!({"h": [0, 4294967295_u64]}));
        assert_eq!(a.opt_u32_list("h", 4).ok(), Some(Some(vec![0, u32::MAX])));
    }
}
