//! `${…}` templates: a step's arguments name parameters (`${cell}`), earlier steps' outputs
//! (`${steps.drain.tenants}`), the for-each item (`${item.tenant}`) and the run (`${run.id}`).
//! A string that is exactly one reference takes the referenced value as it is (a list stays a
//! list); anywhere else the value is written into the text.

use serde_json::{Map, Value};

/// What references resolve against.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub params: Map<String, Value>,
    /// Step name → its output.
    pub steps: Map<String, Value>,
    pub item: Option<Value>,
    pub run_id: String,
    pub run_by: String,
}

impl Context {
    fn lookup(&self, path: &str) -> Result<Value, String> {
        let mut parts = path.split('.');
        let root = parts.next().unwrap_or_default();
        let mut value = match root {
            "steps" => {
                let step = parts.next().unwrap_or_default();
                self.steps
                    .get(step)
                    .cloned()
                    .ok_or_else(|| format!("${{{path}}}: step {step} has no output (yet)"))?
            }
            "item" => self
                .item
                .clone()
                .ok_or_else(|| format!("${{{path}}}: no item here"))?,
            "run" => match parts.next() {
                Some("id") => return Ok(Value::String(self.run_id.clone())),
                Some("by") => return Ok(Value::String(self.run_by.clone())),
                _ => return Err(format!("${{{path}}}: run has id and by")),
            },
            p => self
                .params
                .get(p)
                .cloned()
                .ok_or_else(|| format!("${{{path}}}: no parameter {p}"))?,
        };
        for part in parts {
            value = match &value {
                Value::Object(m) => m
                    .get(part)
                    .cloned()
                    .ok_or_else(|| format!("${{{path}}}: no field {part}"))?,
                _ => return Err(format!("${{{path}}}: {part} of a value that has no fields")),
            };
        }
        Ok(value)
    }
}

/// The text of a value written into a template.
pub fn display(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(display).collect::<Vec<_>>().join(", "),
        Value::Object(m) => match (m.get("tenant"), m.get("env")) {
            (Some(t), Some(e)) => format!("{}/{}", display(t), display(e)),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// The references in `text`, in order; an unclosed `${` is an error.
fn refs_in(text: &str) -> Result<Vec<(usize, usize, &str)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = text[at..].find("${") {
        let start = at + start;
        let Some(len) = text[start..].find('}') else {
            return Err(format!("{text:?}: ${{ without a closing }}"));
        };
        let inner = text[start + 2..start + len].trim();
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(format!(
                "{text:?}: ${{{inner}}} is not a reference (like ${{cell}} or ${{steps.drain.tenants}})"
            ));
        }
        out.push((start, start + len + 1, inner));
        at = start + len + 1;
    }
    Ok(out)
}

/// Every reference in a value (strings at any depth).
pub fn references(value: &Value) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    match value {
        Value::String(s) => out.extend(refs_in(s)?.into_iter().map(|r| r.2.to_owned())),
        Value::Array(a) => {
            for v in a {
                out.extend(references(v)?);
            }
        }
        Value::Object(m) => {
            for v in m.values() {
                out.extend(references(v)?);
            }
        }
        _ => {}
    }
    Ok(out)
}

/// `value` with every reference resolved.
pub fn render(value: &Value, ctx: &Context) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => {
            let refs = refs_in(s)?;
            match refs.as_slice() {
                [] => value.clone(),
                [(0, end, path)] if *end == s.len() => ctx.lookup(path)?,
                _ => {
                    let mut text = String::new();
                    let mut at = 0;
                    for (start, end, path) in refs {
                        text.push_str(&s[at..start]);
                        text.push_str(&display(&ctx.lookup(path)?));
                        at = end;
                    }
                    text.push_str(&s[at..]);
                    Value::String(text)
                }
            }
        }
        Value::Array(a) => {
            Value::Array(a.iter().map(|v| render(v, ctx)).collect::<Result<_, _>>()?)
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ctx() -> Context {
        let mut c = Context {
            run_id: "rb_1".into(),
            run_by: "alice".into(),
            ..Default::default()
        };
        c.params.insert("cell".into(), json!("pool-1"));
        c.params.insert("cells".into(), json!(["a", "b"]));
        c.steps.insert(
            "drain".into(),
            json!({ "tenants": [{ "tenant": "acme", "env": "prod" }] }),
        );
        c.item = Some(json!({ "tenant": "acme", "env": "prod" }));
        c
    }

    #[test]
    fn a_whole_reference_keeps_its_value_and_text_interpolates() {
        let c = ctx();
        assert_eq!(render(&json!("${cells}"), &c), Ok(json!(["a", "b"])));
        assert_eq!(
            render(&json!("${steps.drain.tenants}"), &c),
            Ok(json!([{ "tenant": "acme", "env": "prod" }]))
        );
        assert_eq!(
            render(&json!("drain ${cell} (${run.id})"), &c),
            Ok(json!("drain pool-1 (rb_1)"))
        );
        assert_eq!(
            render(&json!("cells ${cells}"), &c),
            Ok(json!("cells a, b"))
        );
        assert_eq!(
            render(&json!("${item}"), &c),
            Ok(json!({ "tenant": "acme", "env": "prod" }))
        );
        assert_eq!(
            render(&json!("move ${item}"), &c),
            Ok(json!("move acme/prod"))
        );
        assert_eq!(
            render(&json!({ "t": "${item.tenant}" }), &c),
            Ok(json!({ "t": "acme" }))
        );
    }

    #[test]
    fn unknown_and_malformed_references_are_named() {
        let c = ctx();
        assert!(
            render(&json!("${nope}"), &c)
                .unwrap_err()
                .contains("no parameter nope")
        );
        assert!(
            render(&json!("${item.region}"), &c)
                .unwrap_err()
                .contains("no field region")
        );
        assert!(
            references(&json!("${cell"))
                .unwrap_err()
                .contains("without a closing")
        );
        assert!(
            references(&json!("${a b}"))
                .unwrap_err()
                .contains("is not a reference")
        );
        assert_eq!(
            references(&json!({ "x": ["${a}", "t ${steps.b.c}"] })),
            Ok(vec!["a".to_owned(), "steps.b.c".to_owned()])
        );
    }
}
