//! The OData `$filter` subset of storage-semantics.md §3: `eq ne gt ge lt le`, `and or not`,
//! parentheses, and typed literals (`'str'`, `123`, `123L`, `1.5`, `true`, `datetime'…'`,
//! `guid'…'`, `X'0a'`/`binary'…'`). At most 15 comparisons. No functions.
//!
//! Besides evaluating a filter, [`Filter::key_range`] derives the PartitionKey/RowKey range a
//! query must scan, so `PartitionKey eq 'p' and RowKey ge 'a'` reads one key range, not the table.

use std::cmp::Ordering;
use std::ops::Bound;

use super::datetime::parse_rfc3339;
use super::entity::{EdmValue, StoredEntity, is_guid};
use crate::error::TableError;

/// Most comparisons one filter may hold.
pub const MAX_COMPARISONS: usize = 15;
/// Longest filter accepted, in bytes (bounds parsing work on hostile input).
pub const MAX_FILTER_BYTES: usize = 32 * 1024;

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `gt`
    Gt,
    /// `ge`
    Ge,
    /// `lt`
    Lt,
    /// `le`
    Le,
}

impl CmpOp {
    fn flip(self) -> Self {
        match self {
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            other => other,
        }
    }

    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
        }
    }
}

/// A parsed filter expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    /// Both hold.
    And(Box<Filter>, Box<Filter>),
    /// Either holds.
    Or(Box<Filter>, Box<Filter>),
    /// Does not hold.
    Not(Box<Filter>),
    /// `property op literal`. False when the property is missing or of an incomparable type.
    Cmp {
        /// The property name.
        property: String,
        /// The operator.
        op: CmpOp,
        /// The literal.
        value: EdmValue,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Lit(EdmValue),
    LParen,
    RParen,
}

fn err(msg: impl Into<String>) -> TableError {
    TableError::InvalidQuery(msg.into())
}

fn lex(input: &str) -> Result<Vec<Token>, TableError> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    let quoted = |i: &mut usize| -> Result<String, TableError> {
        // chars[*i] is the opening quote; '' inside is a literal quote.
        let mut s = String::new();
        *i += 1;
        loop {
            match chars.get(*i) {
                None => return Err(err("unterminated string literal")),
                Some('\'') if chars.get(*i + 1) == Some(&'\'') => {
                    s.push('\'');
                    *i += 2;
                }
                Some('\'') => {
                    *i += 1;
                    return Ok(s);
                }
                Some(c) => {
                    s.push(*c);
                    *i += 1;
                }
            }
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::LParen);
                i += 1;
            }
            ')' => {
                tokens.push(Token::RParen);
                i += 1;
            }
            '\'' => tokens.push(Token::Lit(EdmValue::String(quoted(&mut i)?))),
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                let start = i;
                i += 1;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
                {
                    // A sign only continues a number right after an exponent marker.
                    if matches!(chars[i], '+' | '-') && !matches!(chars[i - 1], 'e' | 'E') {
                        break;
                    }
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let value = match chars.get(i) {
                    Some('L') | Some('l') => {
                        i += 1;
                        EdmValue::Int64(
                            text.parse()
                                .map_err(|_| err(format!("bad Int64 literal {text}L")))?,
                        )
                    }
                    Some('d') | Some('D') | Some('m') | Some('M') | Some('f') | Some('F') => {
                        i += 1;
                        EdmValue::Double(
                            text.parse()
                                .map_err(|_| err(format!("bad Double literal {text}")))?,
                        )
                    }
                    _ if text.contains(['.', 'e', 'E']) => EdmValue::Double(
                        text.parse()
                            .map_err(|_| err(format!("bad Double literal {text}")))?,
                    ),
                    _ => match text.parse::<i32>() {
                        Ok(v) => EdmValue::Int32(v),
                        Err(_) => EdmValue::Int64(
                            text.parse()
                                .map_err(|_| err(format!("bad number {text}")))?,
                        ),
                    },
                };
                if chars.get(i).is_some_and(|c| c.is_alphanumeric()) {
                    return Err(err(format!("unexpected character after number {text}")));
                }
                tokens.push(Token::Lit(value));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if chars.get(i) == Some(&'\'') {
                    let text = quoted(&mut i)?;
                    let value = match word.to_ascii_lowercase().as_str() {
                        "datetime" => EdmValue::DateTime(
                            parse_rfc3339(&text)
                                .ok_or_else(|| err(format!("bad datetime literal {text:?}")))?,
                        ),
                        "guid" if is_guid(&text) => EdmValue::Guid(text.to_ascii_lowercase()),
                        "guid" => return Err(err(format!("bad guid literal {text:?}"))),
                        "x" | "binary" => EdmValue::Binary(parse_hex(&text)?),
                        _ => return Err(err(format!("unknown literal type {word}"))),
                    };
                    tokens.push(Token::Lit(value));
                } else if word == "true" || word == "false" {
                    tokens.push(Token::Lit(EdmValue::Boolean(word == "true")));
                } else {
                    tokens.push(Token::Ident(word));
                }
            }
            other => return Err(err(format!("unexpected character {other:?}"))),
        }
    }
    Ok(tokens)
}

fn parse_hex(s: &str) -> Result<Vec<u8>, TableError> {
    // Bytes, not chars: `X'0é0'` has an even byte length and a `é` across a pair, which a
    // `&s[i..i + 2]` slice would panic on.
    let digit = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(err("binary literal needs an even number of hex digits"));
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => Ok((hi * 16 + lo) as u8),
            _ => Err(err(format!("bad binary literal {s:?}"))),
        })
        .collect()
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    comparisons: usize,
    depth: usize,
}

/// Deepest nesting of parentheses and `not` (bounds recursion on hostile input).
const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Token::Ident(x)) if x == w)
    }

    fn or(&mut self) -> Result<Filter, TableError> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, TableError> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, TableError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(err("filter nested too deeply"));
        }
        let r = if self.peek_word("not") {
            self.pos += 1;
            Ok(Filter::Not(Box::new(self.unary()?)))
        } else if self.tokens.get(self.pos) == Some(&Token::LParen) {
            self.pos += 1;
            let inner = self.or()?;
            if self.tokens.get(self.pos) != Some(&Token::RParen) {
                return Err(err("expected ')'"));
            }
            self.pos += 1;
            Ok(inner)
        } else {
            self.comparison()
        };
        self.depth -= 1;
        r
    }

    fn comparison(&mut self) -> Result<Filter, TableError> {
        let lhs = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or_else(|| err("expected a comparison"))?;
        let op = match self.tokens.get(self.pos + 1) {
            Some(Token::Ident(w)) => match w.as_str() {
                "eq" => CmpOp::Eq,
                "ne" => CmpOp::Ne,
                "gt" => CmpOp::Gt,
                "ge" => CmpOp::Ge,
                "lt" => CmpOp::Lt,
                "le" => CmpOp::Le,
                other => return Err(err(format!("unknown operator {other:?}"))),
            },
            _ => return Err(err("expected a comparison operator")),
        };
        let rhs = self
            .tokens
            .get(self.pos + 2)
            .cloned()
            .ok_or_else(|| err("expected a value"))?;
        self.pos += 3;
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            return Err(err(format!(
                "at most {MAX_COMPARISONS} comparisons are allowed"
            )));
        }
        match (lhs, rhs) {
            (Token::Ident(property), Token::Lit(value)) => Ok(Filter::Cmp {
                property,
                op,
                value,
            }),
            (Token::Lit(value), Token::Ident(property)) => Ok(Filter::Cmp {
                property,
                op: op.flip(),
                value,
            }),
            _ => Err(err("a comparison needs one property and one literal")),
        }
    }
}

/// A key range to scan: bounds on PartitionKey, and on RowKey when the PartitionKey is fixed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound on PartitionKey.
    pub pk_lo: Bound<String>,
    /// Upper bound on PartitionKey.
    pub pk_hi: Bound<String>,
    /// Lower bound on RowKey (meaningful only when the PartitionKey is fixed).
    pub rk_lo: Bound<String>,
    /// Upper bound on RowKey (meaningful only when the PartitionKey is fixed).
    pub rk_hi: Bound<String>,
}

impl Default for KeyRange {
    fn default() -> Self {
        KeyRange {
            pk_lo: Bound::Unbounded,
            pk_hi: Bound::Unbounded,
            rk_lo: Bound::Unbounded,
            rk_hi: Bound::Unbounded,
        }
    }
}

fn tighter_lo(a: Bound<String>, b: Bound<String>) -> Bound<String> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            match x.cmp(y) {
                Ordering::Less => b,
                Ordering::Greater => a,
                Ordering::Equal => {
                    if matches!(a, Bound::Excluded(_)) {
                        a
                    } else {
                        b
                    }
                }
            }
        }
    }
}

fn tighter_hi(a: Bound<String>, b: Bound<String>) -> Bound<String> {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            match x.cmp(y) {
                Ordering::Less => a,
                Ordering::Greater => b,
                Ordering::Equal => {
                    if matches!(a, Bound::Excluded(_)) {
                        a
                    } else {
                        b
                    }
                }
            }
        }
    }
}

impl KeyRange {
    /// The PartitionKey, if the range holds exactly one.
    pub fn fixed_partition(&self) -> Option<&str> {
        match (&self.pk_lo, &self.pk_hi) {
            (Bound::Included(a), Bound::Included(b)) if a == b => Some(a),
            _ => None,
        }
    }
}

impl Filter {
    /// Parses a `$filter` expression.
    pub fn parse(input: &str) -> Result<Filter, TableError> {
        if input.len() > MAX_FILTER_BYTES {
            return Err(err(format!("filter longer than {MAX_FILTER_BYTES} bytes")));
        }
        let tokens = lex(input)?;
        if tokens.is_empty() {
            return Err(err("empty filter"));
        }
        let mut p = Parser {
            tokens,
            pos: 0,
            comparisons: 0,
            depth: 0,
        };
        let f = p.or()?;
        if p.pos != p.tokens.len() {
            return Err(err(format!(
                "unexpected input after position {} of the filter",
                p.pos
            )));
        }
        Ok(f)
    }

    /// Does `entity` satisfy the filter?
    pub fn matches(&self, entity: &StoredEntity) -> bool {
        match self {
            Filter::And(a, b) => a.matches(entity) && b.matches(entity),
            Filter::Or(a, b) => a.matches(entity) || b.matches(entity),
            Filter::Not(a) => !a.matches(entity),
            Filter::Cmp {
                property,
                op,
                value,
            } => entity
                .get(property)
                .and_then(|v| v.compare(value))
                .is_some_and(|o| op.holds(o)),
        }
    }

    /// The key range that contains every matching entity, from the comparisons on PartitionKey
    /// and RowKey joined by `and` at the top level. Anything else (an `or`, a `not`) leaves the
    /// range open on that side: the filter is still applied to every entity scanned.
    pub fn key_range(&self) -> KeyRange {
        let mut r = KeyRange::default();
        let mut rk = KeyRange::default();
        self.collect_bounds(&mut r, &mut rk);
        if r.fixed_partition().is_some() {
            r.rk_lo = rk.pk_lo;
            r.rk_hi = rk.pk_hi;
        }
        r
    }

    fn collect_bounds(&self, pk: &mut KeyRange, rk: &mut KeyRange) {
        match self {
            Filter::And(a, b) => {
                a.collect_bounds(pk, rk);
                b.collect_bounds(pk, rk);
            }
            Filter::Cmp {
                property,
                op,
                value: EdmValue::String(v),
            } => {
                let target = match property.as_str() {
                    "PartitionKey" => pk,
                    "RowKey" => rk,
                    _ => return,
                };
                let v = v.clone();
                let (lo, hi) = match op {
                    CmpOp::Eq => (Bound::Included(v.clone()), Bound::Included(v)),
                    CmpOp::Gt => (Bound::Excluded(v), Bound::Unbounded),
                    CmpOp::Ge => (Bound::Included(v), Bound::Unbounded),
                    CmpOp::Lt => (Bound::Unbounded, Bound::Excluded(v)),
                    CmpOp::Le => (Bound::Unbounded, Bound::Included(v)),
                    CmpOp::Ne => return,
                };
                target.pk_lo =
                    tighter_lo(std::mem::replace(&mut target.pk_lo, Bound::Unbounded), lo);
                target.pk_hi =
                    tighter_hi(std::mem::replace(&mut target.pk_hi, Bound::Unbounded), hi);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entity(pk: &str, rk: &str, props: &[(&str, EdmValue)]) -> StoredEntity {
        StoredEntity {
            partition_key: pk.into(),
            row_key: rk.into(),
            timestamp: crate::Timestamp::from_secs(1_800_000_000),
            etag: String::new(),
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn check(filter: &str, e: &StoredEntity) -> bool {
        Filter::parse(filter)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .matches(e)
    }

    #[test]
    fn literals_and_operators() {
        let e = entity(
            "p1",
            "r1",
            &[
                ("Age", EdmValue::Int32(30)),
                ("Big", EdmValue::Int64(5_000_000_000)),
                ("Score", EdmValue::Double(2.5)),
                ("Name", EdmValue::String("O'Neil".into())),
                ("Ok", EdmValue::Boolean(true)),
                (
                    "When",
                    EdmValue::DateTime(parse_rfc3339("2026-01-01T00:00:00Z").unwrap()),
                ),
                (
                    "Id",
                    EdmValue::Guid("c9da6455-213d-42c9-9a79-3e9149a57833".into()),
                ),
                ("Raw", EdmValue::Binary(vec![0x0a, 0x0b])),
            ],
        );
        let yes = [
            "Age eq 30",
            "Age ge 30 and Age lt 31",
            "Big gt 4999999999L",
            "Score gt 2 and Score le 2.5",
            "Name eq 'O''Neil'",
            "Ok eq true",
            "When ge datetime'2025-12-31T23:59:59Z'",
            "Id eq guid'C9DA6455-213D-42C9-9A79-3E9149A57833'",
            "Raw eq X'0a0b'",
            "Raw eq binary'0A0B'",
            "PartitionKey eq 'p1' and RowKey eq 'r1'",
            "not (Age eq 31)",
            "Age eq 1 or (Age eq 30 and Name ne 'x')",
            "30 eq Age",
            "31 gt Age",
            "Timestamp gt datetime'2020-01-01T00:00:00Z'",
            "Age eq -5 or Age eq 30",
        ];
        for f in yes {
            assert!(check(f, &e), "should match: {f}");
        }
        let no = [
            "Age ne 30",
            "Missing eq 1",
            "Missing ne 1",
            "Name eq 1",
            "Age gt 30",
            "Ok eq false",
            "not Age eq 30",
        ];
        for f in no {
            assert!(!check(f, &e), "should not match: {f}");
        }
    }

    #[test]
    fn syntax_errors_are_invalid_input() {
        let too_many = vec!["A eq 1"; 16].join(" and ");
        for bad in [
            "",
            "Age",
            "Age eq",
            "Age eqq 1",
            "(Age eq 1",
            "Age eq 1)",
            "Age eq 'x",
            "startswith(Name, 'a')",
            "A eq B",
            "1 eq 2",
            "d eq datetime'nope'",
            "g eq guid'123'",
            "b eq X'abc'",
            &too_many,
            "A eq 1x",
        ] {
            let e = Filter::parse(bad).unwrap_err();
            assert_eq!(e.code(), "InvalidInput", "{bad:?}");
        }
        let deep = format!("{}A eq 1{}", "(".repeat(100), ")".repeat(100));
        assert_eq!(Filter::parse(&deep).unwrap_err().code(), "InvalidInput");
    }

    #[test]
    fn key_ranges() {
        let r = Filter::parse("PartitionKey eq 'p' and RowKey ge 'a' and RowKey lt 'm' and X eq 1")
            .unwrap()
            .key_range();
        assert_eq!(r.fixed_partition(), Some("p"));
        assert_eq!(r.rk_lo, Bound::Included("a".into()));
        assert_eq!(r.rk_hi, Bound::Excluded("m".into()));
        let r = Filter::parse("PartitionKey ge 'b' and PartitionKey lt 'd'")
            .unwrap()
            .key_range();
        assert_eq!(
            (r.pk_lo, r.pk_hi),
            (Bound::Included("b".into()), Bound::Excluded("d".into()))
        );
        let r = Filter::parse("PartitionKey eq 'a' or PartitionKey eq 'b'")
            .unwrap()
            .key_range();
        assert_eq!(r, KeyRange::default());
        // RowKey bounds alone do not narrow a scan across partitions.
        let r = Filter::parse("RowKey eq 'x'").unwrap().key_range();
        assert_eq!(r, KeyRange::default());
        let r = Filter::parse("PartitionKey gt 'a' and PartitionKey ge 'a'")
            .unwrap()
            .key_range();
        assert_eq!(r.pk_lo, Bound::Excluded("a".into()));
    }
}
