//! Reading log lines into comparable fields: splitting text lines, flattening JSON, and
//! normalising what differs between any two runs.

use super::*;

/// Splits a text line into fields: `[...]`, `"..."` or space-separated words.
pub fn text_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut rest = line.trim_end();
    while !rest.is_empty() {
        rest = rest.trim_start();
        let (field, after) = match rest.chars().next() {
            Some(open @ ('[' | '"')) => {
                let close = if open == '[' { ']' } else { '"' };
                let end = rest[1..].find(close).map_or(rest.len(), |i| i + 2);
                (&rest[1..end.saturating_sub(1).max(1)], &rest[end..])
            }
            _ => {
                let end = rest.find(' ').unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        fields.push(field.to_string());
        rest = after;
    }
    fields
}

/// A line as (field, value) pairs, normalised: ports named, varying values reduced to
/// whether they are there.
pub fn normalise(
    log: &str,
    label: &str,
    line: &str,
    ports: &BTreeMap<u16, String>,
) -> Vec<(String, String)> {
    let json = ["json.log", "omit.log", "listener.log"];
    let pairs: Vec<(String, String)> = if json.iter().any(|j| log.ends_with(j)) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{log}: not JSON ({e}): {line}"));
        let mut flat = Vec::new();
        flatten("", &value, &mut flat);
        flat
    } else if log.ends_with("filtered.log") {
        let parts: Vec<&str> = line.split(' ').collect();
        ["response_code", "response_flags", "request_id"]
            .iter()
            .zip(parts)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    } else {
        let names = if log.ends_with("istio.log") {
            ISTIO_FIELDS
        } else {
            DEFAULT_FIELDS
        };
        let fields = text_fields(line);
        assert_eq!(
            fields.len(),
            names.len(),
            "{log}: unexpected field count: {line}"
        );
        names
            .iter()
            .zip(fields)
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    };
    pairs
        .into_iter()
        .map(|(k, v)| {
            let varies = VARYING.contains(&k.as_str())
                || VARYING_ON.iter().any(|(l, f)| *l == label && *f == k);
            let v = if varies {
                match v.as_str() {
                    "-" | "null" => v,
                    _ => "<varies>".to_string(),
                }
            } else {
                name_ports(&v, ports)
            };
            (k, v)
        })
        .collect()
}

pub fn flatten(prefix: &str, value: &serde_json::Value, into: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, into);
            }
        }
        other => into.push((prefix.to_string(), other.to_string())),
    }
}

/// `127.0.0.1:<port>` with known ports named and any other (a client's or an upstream
/// connection's ephemeral port) written `{ephemeral}`; a bare known port is named too.
pub fn name_ports(value: &str, ports: &BTreeMap<u16, String>) -> String {
    let name = |p: &str| -> String {
        match p.parse::<u16>().ok().and_then(|n| ports.get(&n)) {
            Some(n) => n.clone(),
            None => "{ephemeral}".to_string(),
        }
    };
    if let Ok(n) = value.trim_matches('"').parse::<u16>() {
        if let Some(named) = ports.get(&n).filter(|_| n > 1024) {
            return named.clone();
        }
    }
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find("127.0.0.1:") {
        let after = &rest[i + 10..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        out.push_str(&rest[..i + 10]);
        out.push_str(&name(&after[..digits]));
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}
