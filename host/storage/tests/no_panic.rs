//! No parser of untrusted input panics: the OData `$filter` (lexer, parser, evaluator and
//! key-range planner), datetimes, and the naming rules, over thousands of generated inputs
//! each. Inputs are built from the grammar's own pieces as well as from arbitrary text, so
//! the generator reaches deep into the parser rather than failing at the first character.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rolehost_storage::Timestamp;
use rolehost_storage::names;
use rolehost_storage::table::datetime::parse_rfc3339;
use rolehost_storage::table::{EdmValue, Filter, StoredEntity};

/// Pieces of filters: keywords, operators, literals of every type, broken literals, and
/// characters that sit badly in byte slicing (multi-byte UTF-8).
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("PartitionKey".to_string()),
        Just("RowKey".to_string()),
        Just("Timestamp".to_string()),
        Just("n".to_string()),
        Just(" eq ".to_string()),
        Just(" ne ".to_string()),
        Just(" gt ".to_string()),
        Just(" ge ".to_string()),
        Just(" lt ".to_string()),
        Just(" le ".to_string()),
        Just(" and ".to_string()),
        Just(" or ".to_string()),
        Just("not ".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just("'".to_string()),
        Just("''".to_string()),
        Just("X'".to_string()),
        Just("binary'".to_string()),
        Just("guid'".to_string()),
        Just("datetime'".to_string()),
        Just("é".to_string()),
        Just("😀".to_string()),
        Just("-".to_string()),
        Just("e".to_string()),
        Just("L".to_string()),
        Just("true".to_string()),
        "[0-9a-fA-F]{0,5}".prop_map(|s| s),
        "-?[0-9]{1,25}(\\.[0-9]{0,5})?([eE][+-]?[0-9]{0,4})?[LdDmMfF]?".prop_map(|s| s),
        "'[^']{0,8}'".prop_map(|s| s),
        "X'[0-9a-fé]{0,6}'".prop_map(|s| s),
        "datetime'[0-9T:.Z+-]{0,30}'".prop_map(|s| s),
        "guid'[0-9a-f-]{0,40}'".prop_map(|s| s),
        any::<char>().prop_map(|c| c.to_string()),
    ]
}

fn entity() -> StoredEntity {
    let mut properties = BTreeMap::new();
    properties.insert("n".to_string(), EdmValue::Int32(5));
    properties.insert("s".to_string(), EdmValue::String("é".into()));
    properties.insert("b".to_string(), EdmValue::Binary(vec![0, 0xff]));
    StoredEntity {
        partition_key: "p".into(),
        row_key: "r".into(),
        timestamp: Timestamp(1),
        etag: "e".into(),
        properties,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn a_filter_made_of_grammar_pieces_never_panics(pieces in proptest::collection::vec(piece(), 0..24)) {
        let text: String = pieces.concat();
        if let Ok(f) = Filter::parse(&text) {
            let _ = f.matches(&entity());
            let _ = f.key_range();
        }
    }

    #[test]
    fn a_filter_of_arbitrary_text_never_panics(text in any::<String>()) {
        if let Ok(f) = Filter::parse(&text) {
            let _ = f.matches(&entity());
            let _ = f.key_range();
        }
    }

    #[test]
    fn datetimes_and_names_never_panic(text in any::<String>()) {
        let _ = parse_rfc3339(&text);
        let _ = names::check_account(&text);
        let _ = names::check_container(&text);
        let _ = names::check_queue(&text);
        let _ = names::check_blob(&text);
    }
}

/// The input that panicked the parser before (a multi-byte character inside a binary
/// literal whose byte length is even) is refused with a message.
#[test]
fn a_binary_literal_with_a_multibyte_character_is_refused() {
    let e = Filter::parse("b eq X'0é0'").unwrap_err();
    assert!(e.to_string().contains("bad binary literal"), "{e}");
}
