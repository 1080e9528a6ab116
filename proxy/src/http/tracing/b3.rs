//! B3 propagation: reading a caller's trace context and sampling flag from `x-b3-*` or the
//! single `b3` header, and writing this hop's context upstream in the same format.
//! https://github.com/openzipkin/b3-propagation (as Envoy's Zipkin tracer reads it)

use http::{HeaderMap, HeaderName, HeaderValue};

pub static X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub static X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub static X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub static B3: HeaderName = HeaderName::from_static("b3");

/// A caller's context: trace id (high 64 bits are zero for a 64-bit id), span, parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub trace_high: Option<u64>,
    pub trace: u64,
    pub span: u64,
    pub parent: Option<u64>,
}

/// What the request's B3 headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extracted {
    /// The caller's sampling flag, when it sent one.
    pub sampled: Option<bool>,
    pub context: Option<Context>,
    /// The caller used the single `b3` header, so the context goes upstream in it too.
    pub single: bool,
}

/// A context that cannot be read: Envoy then traces nothing for the request.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

pub fn extract(headers: &HeaderMap) -> Result<Extracted, Malformed> {
    if let Some(b3) = headers.get(&B3) {
        return single(b3.as_bytes());
    }
    let sampled = headers
        .get(&X_B3_SAMPLED)
        .map(|v| matches!(v.as_bytes(), b"1" | b"true"));
    let (Some(trace), Some(span)) = (headers.get(&X_B3_TRACE_ID), headers.get(&X_B3_SPAN_ID))
    else {
        return Ok(Extracted {
            sampled,
            context: None,
            single: false,
        });
    };
    let (trace_high, trace) = trace_id(trace.as_bytes())?;
    let span = id(span.as_bytes())?;
    let parent = match headers.get(&X_B3_PARENT_SPAN_ID) {
        Some(p) => Some(id(p.as_bytes())?),
        None => None,
    };
    Ok(Extracted {
        sampled,
        context: Some(Context {
            trace_high,
            trace,
            span,
            parent,
        }),
        single: false,
    })
}

/// `b3: {traceid}-{spanid}[-{sampled}[-{parentspanid}]]`, or only a sampling state.
fn single(value: &[u8]) -> Result<Extracted, Malformed> {
    let flag = |f: &[u8]| match f {
        b"1" | b"d" => Ok(true),
        b"0" => Ok(false),
        _ => Err(Malformed),
    };
    let mut parts = value.split(|b| *b == b'-');
    let first = parts.next().ok_or(Malformed)?;
    let Some(second) = parts.next() else {
        return Ok(Extracted {
            sampled: Some(flag(first)?),
            context: None,
            single: true,
        });
    };
    let (trace_high, trace) = trace_id(first)?;
    let span = id(second)?;
    let sampled = parts.next().map(flag).transpose()?;
    let parent = parts.next().map(id).transpose()?;
    if parts.next().is_some() {
        return Err(Malformed);
    }
    Ok(Extracted {
        sampled,
        context: Some(Context {
            trace_high,
            trace,
            span,
            parent,
        }),
        single: true,
    })
}

fn trace_id(v: &[u8]) -> Result<(Option<u64>, u64), Malformed> {
    match v.len() {
        16 => Ok((None, id(v)?)),
        32 => Ok((Some(id(&v[..16])?), id(&v[16..])?)),
        _ => Err(Malformed),
    }
}

fn id(v: &[u8]) -> Result<u64, Malformed> {
    if v.len() != 16 {
        return Err(Malformed);
    }
    let s = std::str::from_utf8(v).map_err(|_| Malformed)?;
    u64::from_str_radix(s, 16).map_err(|_| Malformed)
}

/// Sixteen lowercase hex digits.
pub fn hex(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate().take(16) {
        *o = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

fn hex_value(v: u64) -> HeaderValue {
    let mut buf = [0u8; 16];
    hex(&mut buf, v);
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn trace_value(high: Option<u64>, low: u64) -> HeaderValue {
    match high {
        None => hex_value(low),
        Some(h) => {
            let mut buf = [0u8; 32];
            hex(&mut buf[..16], h);
            hex(&mut buf[16..], low);
            HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
        }
    }
}

/// Writes this hop's context upstream, in the caller's format (single `b3` or `x-b3-*`).
pub fn inject(headers: &mut HeaderMap, ctx: &Context, sampled: bool, single: bool) {
    if single {
        // traceid-spanid-sampled[-parentspanid], as Envoy writes it.
        let mut buf = [0u8; 32 + 1 + 16 + 2 + 17];
        let mut n = 0;
        if let Some(h) = ctx.trace_high {
            hex(&mut buf[n..n + 16], h);
            n += 16;
        }
        hex(&mut buf[n..n + 16], ctx.trace);
        n += 16;
        buf[n] = b'-';
        n += 1;
        hex(&mut buf[n..n + 16], ctx.span);
        n += 16;
        buf[n] = b'-';
        buf[n + 1] = if sampled { b'1' } else { b'0' };
        n += 2;
        if let Some(p) = ctx.parent {
            buf[n] = b'-';
            hex(&mut buf[n + 1..n + 17], p);
            n += 17;
        }
        if let Ok(v) = HeaderValue::from_bytes(&buf[..n]) {
            headers.insert(B3.clone(), v);
        }
        return;
    }
    headers.insert(
        X_B3_TRACE_ID.clone(),
        trace_value(ctx.trace_high, ctx.trace),
    );
    headers.insert(X_B3_SPAN_ID.clone(), hex_value(ctx.span));
    if let Some(p) = ctx.parent {
        headers.insert(X_B3_PARENT_SPAN_ID.clone(), hex_value(p));
    }
    headers.insert(
        X_B3_SAMPLED.clone(),
        HeaderValue::from_static(if sampled { "1" } else { "0" }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).expect("valid in the test"),
                HeaderValue::from_str(v).expect("valid in the test"),
            );
        }
        h
    }

    #[test]
    fn multi_headers_round_trip() {
        let h = headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-parentspanid", "0020000000000001"),
            ("x-b3-sampled", "1"),
        ]);
        let e = extract(&h).expect("valid in the test");
        assert_eq!(e.sampled, Some(true));
        let c = e.context.expect("valid in the test");
        assert_eq!(c.trace_high, Some(0x463ac35c9f6413ad));
        assert_eq!(c.span, 0xa2fb4a1d1a96d312);
        let mut out = HeaderMap::new();
        inject(&mut out, &c, true, false);
        assert_eq!(out["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(out["x-b3-parentspanid"], "0020000000000001");
    }

    #[test]
    fn single_header_forms() {
        let e = extract(&headers(&[("b3", "0")])).expect("valid in the test");
        assert_eq!((e.sampled, e.context, e.single), (Some(false), None, true));
        let e = extract(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .expect("valid in the test");
        let c = e.context.expect("valid in the test");
        assert_eq!(c.parent, Some(0x05e3ac9a4f6e3b90));
        let mut out = HeaderMap::new();
        inject(&mut out, &c, true, true);
        assert_eq!(
            out["b3"],
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
        );
        assert_eq!(extract(&headers(&[("b3", "xyz-1")])), Err(Malformed));
    }

    #[test]
    fn only_a_trace_id_is_no_context() {
        let e =
            extract(&headers(&[("x-b3-traceid", "0000000000000001")])).expect("valid in the test");
        assert_eq!(e.context, None);
        assert_eq!(
            extract(&headers(&[
                ("x-b3-traceid", "zz00000000000001"),
                ("x-b3-spanid", "0000000000000001")
            ])),
            Err(Malformed)
        );
    }
}
