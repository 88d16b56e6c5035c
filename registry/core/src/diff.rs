//! What changed between two artifacts: a structural diff of their JSON, by
//! path, so a review reads "objects[name=account].fields[name=email].type:
//! text → email" rather than a line diff of two pretty-printed files.
//!
//! Arrays whose items are all objects with a distinct string `name` (or
//! `id`) are compared by that key — ObjectOS lists objects, fields and
//! views that way, and inserting one must not show every later item as
//! changed. Other arrays are compared by position.

use serde_json::Value;

/// One difference.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Added {
        path: String,
        after: Value,
    },
    Removed {
        path: String,
        before: Value,
    },
    Changed {
        path: String,
        before: Value,
        after: Value,
    },
}

impl Change {
    #[cfg(test)]
    pub fn path(&self) -> &str {
        match self {
            Self::Added { path, .. } | Self::Removed { path, .. } | Self::Changed { path, .. } => {
                path
            }
        }
    }
}

/// What a parsed `serde_json::Value` of `bytes` takes at most, from one
/// pass over them: the strings' bytes, 128 bytes per value (the value
/// itself and its slot in a growing array, or its entry in a map), and
/// 1 KiB per object (a map's first node). Counting what the parse would
/// allocate before it runs is what lets a diff be refused or queued
/// instead of taking the process past its budget.
pub fn parsed_bytes(bytes: &[u8]) -> u64 {
    let (mut values, mut objects) = (1u64, 0u64);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => {
                objects += 1;
                values += 1;
            }
            b'[' | b',' | b':' => values += 1,
            _ => {}
        }
    }
    bytes.len() as u64 + 128 * values + 1024 * objects
}

/// The differences from `before` to `after`, in document order, at most
/// `limit` of them; and whether there were more.
pub fn diff(before: &Value, after: &Value, limit: usize) -> (Vec<Change>, bool) {
    let mut out = Vec::new();
    let more = walk("", before, after, limit, &mut out);
    (out, more)
}

/// Returns true when it stopped at `limit`.
fn walk(path: &str, before: &Value, after: &Value, limit: usize, out: &mut Vec<Change>) -> bool {
    if before == after {
        return false;
    }
    match (before, after) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = child(path, k);
                let stop = match b.get(k) {
                    Some(vb) => walk(&p, va, vb, limit, out),
                    None => push_removed(out, limit, p, va),
                };
                if stop {
                    return true;
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) && push_added(out, limit, child(path, k), vb) {
                    return true;
                }
            }
            false
        }
        (Value::Array(a), Value::Array(b)) => match (keyed(a), keyed(b)) {
            (Some((ka, name)), Some((kb, name_b))) if name == name_b => {
                for (key, va) in &ka {
                    let p = format!("{path}[{name}={key}]");
                    let stop = match kb.iter().find(|(k, _)| k == key) {
                        Some((_, vb)) => walk(&p, va, vb, limit, out),
                        None => push_removed(out, limit, p, va),
                    };
                    if stop {
                        return true;
                    }
                }
                for (key, vb) in &kb {
                    if !ka.iter().any(|(k, _)| k == key)
                        && push_added(out, limit, format!("{path}[{name}={key}]"), vb)
                    {
                        return true;
                    }
                }
                false
            }
            _ => {
                for i in 0..a.len().max(b.len()) {
                    let p = format!("{path}[{i}]");
                    let stop = match (a.get(i), b.get(i)) {
                        (Some(va), Some(vb)) => walk(&p, va, vb, limit, out),
                        (Some(va), None) => push_removed(out, limit, p, va),
                        (None, Some(vb)) => push_added(out, limit, p, vb),
                        (None, None) => false,
                    };
                    if stop {
                        return true;
                    }
                }
                false
            }
        },
        _ => {
            if out.len() >= limit {
                return true;
            }
            out.push(Change::Changed {
                path: display_path(path),
                before: before.clone(),
                after: after.clone(),
            });
            false
        }
    }
}

fn push_added(out: &mut Vec<Change>, limit: usize, path: String, after: &Value) -> bool {
    if out.len() >= limit {
        return true;
    }
    out.push(Change::Added {
        path: display_path(&path),
        after: after.clone(),
    });
    false
}

fn push_removed(out: &mut Vec<Change>, limit: usize, path: String, before: &Value) -> bool {
    if out.len() >= limit {
        return true;
    }
    out.push(Change::Removed {
        path: display_path(&path),
        before: before.clone(),
    });
    false
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "(the whole document)".to_owned()
    } else {
        path.to_owned()
    }
}

fn child(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::String(key.to_owned())),
    }
}

/// The items of `items` by their `name` (or `id`) when every item is an
/// object with a distinct string under that key.
fn keyed(items: &[Value]) -> Option<(Vec<(String, &Value)>, &'static str)> {
    if items.is_empty() {
        return None;
    }
    'names: for name in ["name", "id"] {
        let mut keys = Vec::with_capacity(items.len());
        for item in items {
            let Some(k) = item.get(name).and_then(Value::as_str) else {
                continue 'names;
            };
            if keys.iter().any(|(seen, _)| seen == k) {
                continue 'names;
            }
            keys.push((k.to_owned(), item));
        }
        return Some((keys, name));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_by_key_and_arrays_by_name() {
        let before = json!({
            "version": 1,
            "objects": [
                {"name": "account", "fields": [{"name": "email", "type": "text"}]},
                {"name": "order", "label": "Order"}
            ],
            "tags": ["a", "b"]
        });
        let after = json!({
            "version": 2,
            "objects": [
                {"name": "invoice"},
                {"name": "account", "fields": [{"name": "email", "type": "email"}]}
            ],
            "tags": ["a"],
            "odd key": true
        });
        let (changes, more) = diff(&before, &after, 100);
        assert!(!more);
        // Document order follows serde_json's map order; compare as a set.
        let mut paths: Vec<&str> = changes.iter().map(Change::path).collect();
        paths.sort_unstable();
        let mut expected = [
            "version",
            "objects[name=account].fields[name=email].type",
            "objects[name=order]",
            "objects[name=invoice]",
            "tags[1]",
            "[\"odd key\"]",
        ];
        expected.sort_unstable();
        assert_eq!(paths, expected);
        let by_path = |p: &str| changes.iter().find(|c| c.path() == p).unwrap().clone();
        assert_eq!(
            by_path("objects[name=account].fields[name=email].type"),
            Change::Changed {
                path: "objects[name=account].fields[name=email].type".into(),
                before: json!("text"),
                after: json!("email"),
            }
        );
        assert!(matches!(
            by_path("objects[name=order]"),
            Change::Removed { .. }
        ));
        assert!(matches!(
            by_path("objects[name=invoice]"),
            Change::Added { .. }
        ));
    }

    #[test]
    fn same_documents_have_no_changes_and_the_limit_holds() {
        let a = json!({"x": [1, 2, 3]});
        assert_eq!(diff(&a, &a, 10), (vec![], false));
        let b = json!({"x": [4, 5, 6]});
        let (changes, more) = diff(&a, &b, 2);
        assert_eq!(changes.len(), 2);
        assert!(more);
        let (whole, _) = diff(&json!(1), &json!("1"), 10);
        assert_eq!(whole[0].path(), "(the whole document)");
    }

    #[test]
    fn the_estimate_of_a_parse_covers_what_it_holds() {
        // A flat array of small numbers is the densest in values.
        let dense = format!("[{}0]", "0,".repeat(10_000));
        assert!(parsed_bytes(dense.as_bytes()) >= 10_000 * 64);
        // Strings count their bytes; punctuation inside them is text.
        let text = format!("\"{}\"", "{[,:".repeat(1000));
        assert!(parsed_bytes(text.as_bytes()) < 4000 + 1024);
        let objects = "[{\"a\":1},{\"b\":2}]";
        assert!(parsed_bytes(objects.as_bytes()) >= 2 * 1024);
    }

    #[test]
    fn duplicate_names_fall_back_to_positions() {
        let a = json!([{"name": "x", "v": 1}, {"name": "x", "v": 2}]);
        let b = json!([{"name": "x", "v": 1}, {"name": "x", "v": 3}]);
        let (changes, _) = diff(&a, &b, 10);
        assert_eq!(changes[0].path(), "[1].v");
    }
}
