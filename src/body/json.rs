//! JSON bodies: the top-level members the forge merges into `params`, read whole
//! ([`json_fields`]) or incrementally while the body streams ([`JsonScanner`]).

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{BodyError, Fields, LeadingBom, MAX_JSON_DEPTH};
use crate::credentials;

/// (key, value) of every top-level key of a JSON object that is a credential parameter;
/// duplicates all count (Ruby keeps the last). A non-object body has no parameters but must
/// still be valid JSON (the forge answers 400 otherwise). A credential's value must be a
/// string, null, or an array of them.
pub(crate) fn json_fields(bytes: &[u8]) -> Result<Fields, BodyError> {
    const BAD: BodyError =
        BodyError::Malformed("invalid JSON, or a credential that is not a string");
    // Grape skips an empty body (`return if body.empty?`); whitespace alone is invalid JSON.
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    // Ruby's parser refuses a source that is not UTF-8; serde_json checks only what it keeps.
    if std::str::from_utf8(bytes).is_err() {
        return Err(BAD);
    }
    if json_depth_exceeds(bytes, MAX_JSON_DEPTH) {
        return Err(BodyError::Malformed("JSON nested too deeply"));
    }
    let mut fields = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    TopLevel(&mut fields)
        .deserialize(&mut de)
        .map_err(|_| BAD)?;
    de.end().map_err(|_| BAD)?;
    Ok(fields)
}

/// Whether brackets outside strings nest deeper than `max`: checked before parsing so that no
/// parser recursion depends on the client.
fn json_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

struct TopLevel<'f>(&'f mut Fields);

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if credentials::is_credential_param(key.as_bytes()) {
                for value in map.next_value::<CredentialValue>()?.0 {
                    self.0.push((key.as_bytes().to_vec(), value.into_bytes()));
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A credential parameter's JSON value: a string, null (no credential) or an array of those
/// (ActiveRecord would look up every element). Anything else is refused.
struct CredentialValue(Vec<String>);

impl<'de> de::Deserialize<'de> for CredentialValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CredentialVisitor { nested: false })
    }
}

struct CredentialVisitor {
    nested: bool,
}

impl<'de> Visitor<'de> for CredentialVisitor {
    type Value = CredentialValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, null or an array of strings")
    }
    fn visit_str<E>(self, v: &str) -> Result<CredentialValue, E> {
        Ok(CredentialValue(vec![v.to_owned()]))
    }
    fn visit_unit<E>(self) -> Result<CredentialValue, E> {
        Ok(CredentialValue(Vec::new()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CredentialValue, A::Error> {
        if self.nested {
            return Err(de::Error::custom("nested array"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(NestedSeed)? {
            out.extend(v.0);
        }
        Ok(CredentialValue(out))
    }
}

struct NestedSeed;

impl<'de> DeserializeSeed<'de> for NestedSeed {
    type Value = CredentialValue;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<CredentialValue, D::Error> {
        d.deserialize_any(CredentialVisitor { nested: true })
    }
}

/// Where a [`JsonScanner`] is in the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JsonState {
    /// Before the top-level value.
    Start,
    /// The top-level value is not an object: it carries no parameters (Grape merges only a
    /// Hash), and the forge rejects it if it is not valid JSON.
    NotObject,
    /// In the top-level object, before a key (`first`: or its closing `}`).
    Key { first: bool },
    /// Inside a top-level key string.
    KeyString { escaped: bool },
    /// After a key, before `:`.
    Colon,
    /// Before a member's value.
    Value,
    /// Inside a member's value, `depth` brackets deep (0: a scalar at the top level).
    InValue {
        depth: usize,
        in_string: bool,
        escaped: bool,
    },
    /// After a member's value, before `,` or `}`.
    AfterValue,
    /// After the top-level object: only whitespace may follow.
    End,
}

/// An incremental scanner for the top-level members of a JSON object: it follows strings,
/// escapes and nesting exactly (so on valid JSON it finds exactly the top-level keys a JSON
/// parser finds), captures the keys and the values of credential members (bounded by the
/// cap), and hands each completed credential member to [`json_fields`] to be read like a
/// small body. What Ruby's parser might accept and a strict one would not (comments) is
/// refused.
pub(crate) struct JsonScanner {
    state: JsonState,
    cap: usize,
    key: Vec<u8>,
    /// The current member's raw value, when its key is a credential parameter.
    value: Option<Vec<u8>>,
    bom: LeadingBom,
}

impl JsonScanner {
    pub(crate) fn new(cap: usize) -> Self {
        JsonScanner {
            state: JsonState::Start,
            cap,
            key: Vec::new(),
            value: None,
            bom: LeadingBom::default(),
        }
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<Fields, BodyError> {
        let mut fields = Vec::new();
        // A BOM at the very start is skipped, wherever the chunks cut it.
        let (partial_bom, chunk) = self.bom.skip(chunk);
        self.scan(partial_bom, &mut fields)?;
        self.scan(chunk, &mut fields)?;
        Ok(fields)
    }

    fn scan(&mut self, bytes: &[u8], fields: &mut Fields) -> Result<(), BodyError> {
        const BAD: BodyError = BodyError::Malformed("invalid JSON");
        for &b in bytes {
            let ws = matches!(b, b' ' | b'\t' | b'\r' | b'\n');
            self.state = match self.state {
                JsonState::NotObject => JsonState::NotObject,
                _ if b == b'/' && !self.in_string() => return Err(BAD),
                JsonState::Start if ws => JsonState::Start,
                JsonState::Start if b == b'{' => JsonState::Key { first: true },
                JsonState::Start => JsonState::NotObject,
                JsonState::Key { .. }
                | JsonState::Colon
                | JsonState::Value
                | JsonState::AfterValue
                | JsonState::End
                    if ws =>
                {
                    self.state
                }
                JsonState::Key { first } => match b {
                    b'"' => {
                        self.key.clear();
                        self.key.push(b);
                        JsonState::KeyString { escaped: false }
                    }
                    b'}' if first => JsonState::End,
                    _ => return Err(BAD),
                },
                JsonState::KeyString { escaped } => {
                    if self.key.len() >= self.cap {
                        return Err(BAD);
                    }
                    self.key.push(b);
                    match b {
                        _ if escaped => JsonState::KeyString { escaped: false },
                        b'\\' => JsonState::KeyString { escaped: true },
                        b'"' => JsonState::Colon,
                        _ => JsonState::KeyString { escaped: false },
                    }
                }
                JsonState::Colon if b == b':' => {
                    let key: String = serde_json::from_slice(&self.key).map_err(|_| BAD)?;
                    self.value = credentials::is_credential_param(key.as_bytes()).then(Vec::new);
                    JsonState::Value
                }
                JsonState::Colon => return Err(BAD),
                JsonState::Value => {
                    self.capture(b)?;
                    let (depth, in_string) = match b {
                        b'{' | b'[' => (1, false),
                        b'"' => (0, true),
                        b',' | b'}' | b']' | b':' => return Err(BAD),
                        _ => (0, false),
                    };
                    JsonState::InValue {
                        depth,
                        in_string,
                        escaped: false,
                    }
                }
                JsonState::InValue {
                    depth,
                    in_string: true,
                    escaped,
                } => {
                    self.capture(b)?;
                    let (in_string, escaped) = match b {
                        _ if escaped => (true, false),
                        b'\\' => (true, true),
                        b'"' => (false, false),
                        _ => (true, false),
                    };
                    JsonState::InValue {
                        depth,
                        in_string,
                        escaped,
                    }
                }
                JsonState::InValue { depth: 0, .. } if ws || b == b',' || b == b'}' => {
                    // The member's value ended: read a credential member like a small body.
                    if let Some(value) = self.value.take() {
                        let mut doc = b"{".to_vec();
                        doc.extend_from_slice(&self.key);
                        doc.push(b':');
                        doc.extend_from_slice(&value);
                        doc.push(b'}');
                        fields.extend(json_fields(&doc)?);
                    }
                    match b {
                        b',' => JsonState::Key { first: false },
                        b'}' => JsonState::End,
                        _ => JsonState::AfterValue,
                    }
                }
                JsonState::InValue { depth, .. } => {
                    self.capture(b)?;
                    let depth = match b {
                        b'{' | b'[' if depth >= MAX_JSON_DEPTH => {
                            return Err(BodyError::Malformed("JSON nested too deeply"))
                        }
                        b'{' | b'[' => depth + 1,
                        b'}' | b']' if depth == 0 => return Err(BAD),
                        b'}' | b']' => depth - 1,
                        _ => depth,
                    };
                    JsonState::InValue {
                        depth,
                        in_string: b == b'"',
                        escaped: false,
                    }
                }
                JsonState::AfterValue => match b {
                    b',' => JsonState::Key { first: false },
                    b'}' => JsonState::End,
                    _ => return Err(BAD),
                },
                JsonState::End => return Err(BAD),
            };
        }
        Ok(())
    }

    fn in_string(&self) -> bool {
        matches!(
            self.state,
            JsonState::KeyString { .. }
                | JsonState::InValue {
                    in_string: true,
                    ..
                }
        )
    }

    fn capture(&mut self, b: u8) -> Result<(), BodyError> {
        if let Some(value) = self.value.as_mut() {
            if value.len() >= self.cap {
                return Err(BodyError::Malformed("a credential value is too large"));
            }
            value.push(b);
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self) -> Result<Fields, BodyError> {
        // The body ended inside what could have begun a BOM: those bytes were content.
        let partial_bom = self.bom.finish();
        self.scan(partial_bom, &mut Vec::new())?;
        match self.state {
            JsonState::End | JsonState::NotObject => Ok(Vec::new()),
            JsonState::Start if !self.bom.seen_content() => Ok(Vec::new()),
            _ => Err(BodyError::Malformed("invalid JSON: the body ended early")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use super::super::field_names as names;

    #[test]
    fn the_scanner_skips_a_bom_however_it_is_cut() {
        let scan = |chunks: &[&[u8]]| {
            let mut scanner = JsonScanner::new(1 << 20);
            let mut fields = Vec::new();
            for chunk in chunks {
                fields.extend(scanner.feed(chunk)?);
            }
            fields.extend(scanner.finish()?);
            Ok::<_, BodyError>(names(&fields))
        };
        let doc = b"\xEF\xBB\xBF{\"job_token\":\"glcbt-x\"}";
        let whole = scan(&[doc]).unwrap();
        assert_eq!(whole, vec![("job_token".into(), "glcbt-x".into())]);
        for cut in 0..=doc.len() {
            assert_eq!(
                scan(&[&doc[..cut], &doc[cut..]]).unwrap(),
                whole,
                "cut at {cut}"
            );
        }
        // An empty body, or a BOM alone, has no parameters and is no error; whitespace alone
        // is invalid JSON; a partial BOM is content (not an object).
        assert!(scan(&[]).unwrap().is_empty());
        assert!(scan(&[b""]).unwrap().is_empty());
        assert!(scan(&[b"\xEF", b"\xBB\xBF"]).unwrap().is_empty());
        assert!(scan(&[b" "]).is_err());
        assert!(scan(&[b"\xEF", b"\xBB"]).unwrap().is_empty());
    }

    #[test]
    fn json_top_level_credentials() {
        let f = json_fields(br#"{"ref":"main","token":"glcbt-a","job_token":null}"#).unwrap();
        assert_eq!(names(&f), vec![("token".into(), "glcbt-a".into())]);
        // Duplicates all count; escapes are decoded in keys and values.
        let f = json_fields(br#"{"job_token":"a","job\u005ftoken":"b"}"#).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].1, b"b");
        // Arrays of strings: every element.
        let f = json_fields(br#"{"private_token":["x",null,"y"]}"#).unwrap();
        assert_eq!(f.len(), 2);
        // Bracketed keys are read as Rack would read them in a form.
        assert_eq!(json_fields(br#"{"job_token[]":"a"}"#).unwrap().len(), 1);
        // Nested objects are not top-level parameters.
        assert!(json_fields(br#"{"a":{"job_token":"x"}}"#)
            .unwrap()
            .is_empty());
        // Non-object bodies have no parameters.
        for ok in [&b"[1,2]"[..], b"\"x\"", b"3", b"null", b" {} ", b""] {
            assert!(json_fields(ok).unwrap().is_empty());
        }
        for bad in [
            &br#"{"job_token":5}"#[..],
            br#"{"token":true}"#,
            br#"{"token":{"a":"b"}}"#,
            br#"{"token":[["x"]]}"#,
            br#"{"token":[1]}"#,
            br#"{"a":1"#,
            br#"{"a":1}x"#,
            b"/* c */ {\"job_token\":\"x\"}",
            b" ",
            b"{\"a\":\"\xff\"}",
        ] {
            assert!(
                json_fields(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn json_depth_is_bounded() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            json_fields(deep.as_bytes()),
            Err(BodyError::Malformed("JSON nested too deeply"))
        );
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(90), "]".repeat(90));
        assert!(json_fields(ok.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let s = format!("{{\"a\":\"{}\"}}", "[".repeat(1000));
        assert!(json_fields(s.as_bytes()).is_ok());
    }

    /// The streaming scanner fed in pieces finds what the buffered parser finds, wherever the
    /// body is split, and refuses what it refuses (it may refuse more, never less).
    #[test]
    fn json_scanner_agrees_with_the_buffered_parser() {
        let docs: &[&[u8]] = &[
            br#"{"job_token":"a"}"#,
            br#" { "ref" : "main" , "token" : [ "b" , null ] , "x" : { "job_token" : "no" } } "#,
            br#"{"a":"}\"{","job\u005ftoken":"c","n":[1,[2,{"token":"d"}]],"t":true}"#,
            br#"{"private_token":null,"bearer_token":"e","e":-1.5e3}"#,
            br#"{}"#,
            br#"[{"job_token":"x"}]"#,
            br#""job_token""#,
            br#"{"job_token":5}"#,
            br#"{"job_token":{"a":"b"}}"#,
            br#"{"a":1,}"#,
            br#"{"a" 1}"#,
            br#"{"a":1}x"#,
            br#"{"a":1 /* c */}"#,
            br#"{'job_token':'x'}"#,
            br#"{"a":1"#,
        ];
        for doc in docs {
            let whole = json_fields(doc);
            for split in 0..=doc.len() {
                let mut scanner = JsonScanner::new(1 << 20);
                let got = scanner.feed(&doc[..split]).and_then(|mut a| {
                    a.extend(scanner.feed(&doc[split..])?);
                    a.extend(scanner.finish()?);
                    Ok(a)
                });
                let text = String::from_utf8_lossy(doc);
                match (&whole, &got) {
                    (Ok(w), Ok(g)) => assert_eq!(names(w), names(g), "{text} split {split}"),
                    (Err(_), Err(_)) => {}
                    // Non-object documents are not validated by the scanner (the forge refuses
                    // invalid ones; none carries parameters).
                    (Err(_), Ok(g)) if !doc.trim_ascii_start().starts_with(b"{") => {
                        assert!(g.is_empty())
                    }
                    _ => panic!("{text} split {split}: buffered {whole:?}, scanner {got:?}"),
                }
            }
        }
        // Depth and size are bounded.
        let deep = format!("{{\"a\":{}", "[".repeat(200));
        assert!(JsonScanner::new(1 << 20).feed(deep.as_bytes()).is_err());
        let long = format!("{{\"token\":\"{}\"}}", "x".repeat(100));
        assert!(JsonScanner::new(50).feed(long.as_bytes()).is_err());
    }

    fn feed_in_pieces(doc: &[u8], cuts: &[usize]) -> Result<Fields, BodyError> {
        let mut scanner = JsonScanner::new(1 << 20);
        let mut out = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (doc.len() + 1)).collect();
        cuts.sort_unstable();
        for cut in cuts.into_iter().chain([doc.len()]) {
            out.extend(scanner.feed(&doc[at..cut])?);
            at = cut;
        }
        out.extend(scanner.finish()?);
        Ok(out)
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i32>().prop_map(|n| serde_json::json!(n)),
            "[ -~\\n\"\\\\{}\\[\\]é]{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::vec(
                    ("(job_token|token|a|b\\[\\]|private_token)", inner),
                    0..4
                )
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        #[test]
        fn scanner_matches_the_parser_on_json_objects(
            members in proptest::collection::vec(("(job_token|token|access_token|ref|a\\\"b|job\\\\u005ftoken)", json_value()), 0..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            pretty in any::<bool>(),
        ) {
            // Written by hand so that duplicate keys survive.
            let sep = if pretty { " ,\n  " } else { "," };
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\":{}", if pretty { serde_json::to_string_pretty(v).unwrap() } else { v.to_string() }))
                .collect();
            let doc = format!("{{{}}}", body.join(sep));
            let whole = json_fields(doc.as_bytes());
            let pieces = feed_in_pieces(doc.as_bytes(), &cuts);
            match (&whole, &pieces) {
                (Ok(w), Ok(p)) => prop_assert_eq!(names(w), names(p)),
                (Err(_), Err(_)) => {}
                _ => prop_assert!(false, "{doc}: {whole:?} vs {pieces:?}"),
            }
        }

        #[test]
        fn scanner_never_panics(doc in proptest::collection::vec(any::<u8>(), 0..200), cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
            let _ = feed_in_pieces(&doc, &cuts);
        }

    }
}
