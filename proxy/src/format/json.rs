//! JSON access log lines (`json_format`): a tree of keys compiled once, whose string leaves are
//! [`Template`]s. A leaf that is exactly one operator keeps its type (numbers bare, a missing
//! value `null`, or left out with `omit_empty_values`); any other leaf is a JSON string with
//! missing values written `-`, as in text. Keys come out sorted, one object per line.
//! Envoy: https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#format-dictionaries

use super::{Context, Template, Written};
use std::fmt::Write;

/// A value in a `json_format` tree.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonNode {
    Template(Template),
    Object(Vec<(String, JsonNode)>),
    Number(f64),
    Bool(bool),
    Null,
}

/// A compiled `json_format`.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonFormat {
    /// Keys already sorted and JSON-escaped.
    fields: Vec<(String, JsonNode)>,
    omit_empty: bool,
}

impl JsonFormat {
    pub fn new(fields: Vec<(String, JsonNode)>, omit_empty: bool) -> Self {
        Self {
            fields: sorted(fields),
            omit_empty,
        }
    }

    /// Every template in the tree, for the callers that collect which headers to keep.
    pub fn templates(&self) -> Vec<&Template> {
        fn walk<'a>(fields: &'a [(String, JsonNode)], into: &mut Vec<&'a Template>) {
            for (_, node) in fields {
                match node {
                    JsonNode::Template(t) => into.push(t),
                    JsonNode::Object(inner) => walk(inner, into),
                    _ => {}
                }
            }
        }
        let mut all = Vec::new();
        walk(&self.fields, &mut all);
        all
    }

    /// Appends one line: the object and a newline.
    pub fn render(&self, ctx: &Context<'_>, out: &mut String) {
        self.object(&self.fields, ctx, out);
        out.push('\n');
    }

    fn object(&self, fields: &[(String, JsonNode)], ctx: &Context<'_>, out: &mut String) {
        out.push('{');
        let mut first = true;
        for (key, node) in fields {
            let mark = out.len();
            if !first {
                out.push(',');
            }
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            if self.value(node, ctx, out) {
                first = false;
            } else {
                out.truncate(mark);
            }
        }
        out.push('}');
    }

    /// Writes `node`; false when it is to be left out (`omit_empty_values`).
    fn value(&self, node: &JsonNode, ctx: &Context<'_>, out: &mut String) -> bool {
        match node {
            JsonNode::Template(t) => {
                let start = out.len();
                out.push('"');
                match t.render_single(ctx, out) {
                    Some(Written::Missing) => {
                        out.truncate(start);
                        if self.omit_empty {
                            return false;
                        }
                        out.push_str("null");
                    }
                    Some(Written::Number) => {
                        // Digits need no quotes: drop the opening one.
                        out.remove(start);
                    }
                    Some(Written::Text) => {
                        if self.omit_empty && out.len() == start + 1 {
                            out.truncate(start);
                            return false;
                        }
                        escape_in_place(out, start + 1);
                        out.push('"');
                    }
                    None => {
                        t.render_log(ctx, self.omit_empty, out);
                        escape_in_place(out, start + 1);
                        out.push('"');
                    }
                }
            }
            JsonNode::Object(inner) => self.object(inner, ctx, out),
            JsonNode::Number(n) => write_number(*n, out),
            JsonNode::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            JsonNode::Null => out.push_str("null"),
        }
        true
    }
}

fn sorted(mut fields: Vec<(String, JsonNode)>) -> Vec<(String, JsonNode)> {
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
        .into_iter()
        .map(|(k, v)| {
            let mut key = String::with_capacity(k.len());
            escape(&k, &mut key);
            let v = match v {
                JsonNode::Object(inner) => JsonNode::Object(sorted(inner)),
                other => other,
            };
            (key, v)
        })
        .collect()
}

/// A whole number as an integer, as protobuf's JSON mapping prints `5.0`.
fn write_number(n: f64, out: &mut String) {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        let _ = write!(out, "{}", n as i64);
    } else {
        let _ = write!(out, "{n}");
    }
}

fn needs_escape(c: char) -> bool {
    c == '"' || c == '\\' || c < ' '
}

/// JSON-escapes `out[from..]` in place; the common case (nothing to escape) copies nothing.
fn escape_in_place(out: &mut String, from: usize) {
    if !out[from..].contains(needs_escape) {
        return;
    }
    let raw = out.split_off(from);
    escape(&raw, out);
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}
