//! Model-based tests: random operation sequences run against the engine and against a simple
//! in-memory model; every answer must agree. Time is virtual (ManualClock), so visibility
//! timeouts are part of what is explored.

mod common;

use common::Engine;

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use rolehost_storage::blob::{Conditions, GetBlobOptions, PutBlobOptions};
use rolehost_storage::queue::PutMessageOptions;

#[derive(Debug, Clone)]
enum QOp {
    Put(u8),
    Get { n: u32, vt: u64 },
    Delete(usize),
    Update { pick: usize, vt: u64 },
    Peek,
    Advance(u64),
    Clear,
}

fn qop() -> impl Strategy<Value = QOp> {
    prop_oneof![
        3 => any::<u8>().prop_map(QOp::Put),
        3 => (1u32..4, 1u64..5).prop_map(|(n, vt)| QOp::Get { n, vt }),
        2 => any::<usize>().prop_map(QOp::Delete),
        1 => (any::<usize>(), 0u64..5).prop_map(|(pick, vt)| QOp::Update { pick, vt }),
        1 => Just(QOp::Peek),
        2 => (0u64..6).prop_map(QOp::Advance),
        1 => Just(QOp::Clear),
    ]
}

#[derive(Debug, Clone)]
struct ModelMsg {
    id: String,
    seq: u64,
    body: Vec<u8>,
    visible_at: u64,
    dequeue: u32,
    receipt: String,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_model(ops in proptest::collection::vec(qop(), 1..60)) {
        check_queue_model(Engine::Redb, ops)?;
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_model_on_postgres(ops in proptest::collection::vec(qop(), 1..60)) {
        check_queue_model(Engine::Postgres, ops)?;
    }
}

fn check_queue_model(engine: Engine, ops: Vec<QOp>) -> Result<(), TestCaseError> {
    let f = engine.fixture();
    let (s, a) = (&f.store, &f.acct);
    s.create_queue(a, "model", vec![]).unwrap();
    let mut now: u64 = 0; // seconds since the fixture's start
    let mut model: Vec<ModelMsg> = Vec::new();
    let mut receipts: Vec<(String, String)> = Vec::new(); // every (id, receipt) ever seen
    let mut seq = 0;
    for op in ops {
        match op {
            QOp::Put(b) => {
                let r = s
                    .put_message(a, "model", &[b], PutMessageOptions::default())
                    .unwrap();
                receipts.push((r.id.clone(), r.pop_receipt.clone()));
                model.push(ModelMsg {
                    id: r.id,
                    seq,
                    body: vec![b],
                    visible_at: now,
                    dequeue: 0,
                    receipt: r.pop_receipt,
                });
                seq += 1;
            }
            QOp::Get { n, vt } => {
                let got = s
                    .get_messages(a, "model", n, Duration::from_secs(vt))
                    .unwrap();
                let mut visible: Vec<&mut ModelMsg> =
                    model.iter_mut().filter(|m| m.visible_at <= now).collect();
                visible.sort_by_key(|m| (m.visible_at, m.seq));
                prop_assert_eq!(got.len(), visible.len().min(n as usize));
                for (g, m) in got.iter().zip(visible) {
                    prop_assert_eq!(&g.id, &m.id);
                    prop_assert_eq!(&g.body, &m.body);
                    m.dequeue += 1;
                    prop_assert_eq!(g.dequeue_count, m.dequeue);
                    m.visible_at = now + vt;
                    m.receipt = g.pop_receipt.clone();
                    receipts.push((g.id.clone(), g.pop_receipt.clone()));
                }
            }
            QOp::Delete(pick) if !receipts.is_empty() => {
                let (id, receipt) = receipts[pick % receipts.len()].clone();
                let expect_ok = model.iter().any(|m| m.id == id && m.receipt == receipt);
                let r = s.delete_message(a, "model", &id, &receipt);
                prop_assert_eq!(r.is_ok(), expect_ok, "{:?}", r);
                if let Err(e) = r {
                    prop_assert_eq!(e.code(), "MessageNotFound");
                } else {
                    model.retain(|m| m.id != id);
                }
            }
            QOp::Update { pick, vt } if !receipts.is_empty() => {
                let (id, receipt) = receipts[pick % receipts.len()].clone();
                let expect_ok = model.iter().any(|m| m.id == id && m.receipt == receipt);
                let r = s.update_message(a, "model", &id, &receipt, Duration::from_secs(vt), None);
                prop_assert_eq!(r.is_ok(), expect_ok, "{:?}", r);
                if let Ok(u) = r {
                    let m = model.iter_mut().find(|m| m.id == id).unwrap();
                    m.visible_at = now + vt;
                    m.receipt = u.pop_receipt.clone();
                    receipts.push((id, u.pop_receipt));
                }
            }
            QOp::Delete(_) | QOp::Update { .. } => {}
            QOp::Peek => {
                let peeked = s.peek_messages(a, "model", 32).unwrap();
                let mut visible: Vec<&ModelMsg> =
                    model.iter().filter(|m| m.visible_at <= now).collect();
                visible.sort_by_key(|m| (m.visible_at, m.seq));
                let want: Vec<(&str, u32)> = visible
                    .iter()
                    .take(32)
                    .map(|m| (m.id.as_str(), m.dequeue))
                    .collect();
                let have: Vec<(&str, u32)> = peeked
                    .iter()
                    .map(|m| (m.id.as_str(), m.dequeue_count))
                    .collect();
                prop_assert_eq!(have, want);
            }
            QOp::Advance(secs) => {
                f.clock.advance(Duration::from_secs(secs));
                now += secs;
            }
            QOp::Clear => {
                s.clear_messages(a, "model").unwrap();
                model.clear();
            }
        }
        let count = s
            .get_queue_properties(a, "model")
            .unwrap()
            .approximate_message_count;
        prop_assert_eq!(count, model.len() as u64);
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum BOp {
    Put {
        name: u8,
        body: u8,
        cond: u8,
        pick: usize,
    },
    Delete {
        name: u8,
        cond: u8,
        pick: usize,
    },
    Get {
        name: u8,
    },
}

fn bop() -> impl Strategy<Value = BOp> {
    prop_oneof![
        3 => (0u8..3, any::<u8>(), 0u8..3, any::<usize>()).prop_map(|(name, body, cond, pick)| BOp::Put { name, body, cond, pick }),
        1 => (0u8..3, 0u8..2, any::<usize>()).prop_map(|(name, cond, pick)| BOp::Delete { name, cond, pick }),
        2 => (0u8..3).prop_map(|name| BOp::Get { name }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Conditional writes: cond 0 = none, 1 = If-Match (an ETag ever seen), 2 = create-only.
    #[test]
    fn blob_conditions_match_model(ops in proptest::collection::vec(bop(), 1..40)) {
        check_blob_model(Engine::Redb, ops)?;
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn blob_conditions_match_model_on_postgres(ops in proptest::collection::vec(bop(), 1..40)) {
        check_blob_model(Engine::Postgres, ops)?;
    }
}

fn check_blob_model(engine: Engine, ops: Vec<BOp>) -> Result<(), TestCaseError> {
    let f = engine.fixture();
    let (s, a) = (&f.store, &f.acct);
    s.create_container(a, "model", vec![]).unwrap();
    let mut model: BTreeMap<String, (Vec<u8>, String)> = BTreeMap::new();
    let mut etags: Vec<String> = vec!["\"0x8D0\"".into()];
    for op in ops {
        match op {
            BOp::Put {
                name,
                body,
                cond,
                pick,
            } => {
                let name = format!("b{name}");
                let etag = etags[pick % etags.len()].clone();
                let current = model.get(&name);
                let (conditions, expect) = match cond {
                    0 => (Conditions::none(), Ok(())),
                    1 => (
                        Conditions::if_match(&etag),
                        if current.is_some_and(|c| c.1 == etag) {
                            Ok(())
                        } else {
                            Err("ConditionNotMet")
                        },
                    ),
                    _ => (
                        Conditions::create_only(),
                        if current.is_none() {
                            Ok(())
                        } else {
                            Err("BlobAlreadyExists")
                        },
                    ),
                };
                let r = s.put_blob(
                    a,
                    "model",
                    &name,
                    &mut &[body][..],
                    PutBlobOptions {
                        conditions,
                        ..Default::default()
                    },
                );
                match (r, expect) {
                    (Ok(p), Ok(())) => {
                        etags.push(p.etag.clone());
                        model.insert(name, (vec![body], p.etag));
                    }
                    (Err(e), Err(code)) => prop_assert_eq!(e.code(), code),
                    (r, expect) => prop_assert!(false, "{:?} vs {:?}", r.map(|p| p.etag), expect),
                }
            }
            BOp::Delete { name, cond, pick } => {
                let name = format!("b{name}");
                let etag = etags[pick % etags.len()].clone();
                let conditions = if cond == 0 {
                    Conditions::none()
                } else {
                    Conditions::if_match(&etag)
                };
                let expect = match model.get(&name) {
                    None => Err("BlobNotFound"),
                    Some(c) if cond == 1 && c.1 != etag => Err("ConditionNotMet"),
                    Some(_) => Ok(()),
                };
                let r = s.delete_blob(a, "model", &name, &conditions, None);
                match (&r, expect) {
                    (Ok(()), Ok(())) => {
                        model.remove(&name);
                    }
                    (Err(e), Err(code)) => prop_assert_eq!(e.code(), code),
                    _ => prop_assert!(false, "{:?} vs {:?}", r, expect),
                }
            }
            BOp::Get { name } => {
                let name = format!("b{name}");
                match (
                    s.get_blob(a, "model", &name, &GetBlobOptions::default()),
                    model.get(&name),
                ) {
                    (Ok(mut r), Some((body, etag))) => {
                        let mut out = Vec::new();
                        std::io::Read::read_to_end(&mut r.reader, &mut out).unwrap();
                        prop_assert_eq!(&out, body);
                        prop_assert_eq!(&r.properties.etag, etag);
                    }
                    (Err(e), None) => prop_assert_eq!(e.code(), "BlobNotFound"),
                    (r, m) => prop_assert!(false, "{:?} vs {:?}", r.map(|r| r.properties.etag), m),
                }
            }
        }
    }
    Ok(())
}
