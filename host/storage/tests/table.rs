//! Table service: every operation and error case.

mod common;

use common::{Engine, code, on_every_engine};
use rolehost_storage::ListOptions;
use rolehost_storage::table::*;

fn e(pk: &str, rk: &str, n: i32) -> Entity {
    Entity::new(pk, rk)
        .with("N", EdmValue::Int32(n))
        .with("Tag", EdmValue::String(format!("t{n}")))
}

fn setup(engine: Engine) -> common::Fixture<dyn common::Store> {
    let f = engine.fixture();
    f.store.create_table(&f.acct, "Orders").unwrap();
    f
}

fn tables(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    assert_eq!(code(s.create_table(a, "orders")), "TableAlreadyExists");
    assert_eq!(code(s.create_table(a, "tables")), "InvalidResourceName");
    s.create_table(a, "Alpha").unwrap();
    let page = s.list_tables(a, &ListOptions::default()).unwrap();
    assert_eq!(page.items, ["Alpha", "Orders"]);
    let p1 = s
        .list_tables(
            a,
            &ListOptions {
                max_results: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(p1.next_marker.as_deref(), Some("Orders"));
    s.execute(a, "ORDERS", TableOp::Insert(e("p", "r", 1)))
        .unwrap();
    s.delete_table(a, "orders").unwrap();
    assert_eq!(code(s.delete_table(a, "Orders")), "TableNotFound");
    s.create_table(a, "Orders").unwrap();
    assert_eq!(
        code(s.get_entity(a, "Orders", "p", "r", None)),
        "ResourceNotFound",
        "delete removed the entities"
    );
    assert_eq!(
        code(s.execute(a, "Nope", TableOp::Insert(e("p", "r", 1)))),
        "TableNotFound"
    );
}

fn insert_update_merge_upsert_delete_with_etags(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    let t1 = s
        .execute(a, "Orders", TableOp::Insert(e("p", "r", 1)))
        .unwrap()
        .unwrap();
    assert!(t1.starts_with("W/\""));
    assert_eq!(
        code(s.execute(a, "Orders", TableOp::Insert(e("p", "r", 2)))),
        "EntityAlreadyExists"
    );
    let got = s.get_entity(a, "Orders", "p", "r", None).unwrap();
    assert_eq!(
        (got.etag.as_str(), got.properties.get("N")),
        (t1.as_str(), Some(&EdmValue::Int32(1)))
    );
    // Replace with the right ETag wins; the stale one loses.
    let replace = |n, m: &str| TableOp::Update {
        entity: Entity::new("p", "r").with("N", EdmValue::Int32(n)),
        mode: UpdateMode::Replace,
        if_match: IfMatch::ETag(m.into()),
    };
    let t2 = s.execute(a, "Orders", replace(2, &t1)).unwrap().unwrap();
    assert_eq!(
        code(s.execute(a, "Orders", replace(3, &t1))),
        "UpdateConditionNotSatisfied"
    );
    let got = s.get_entity(a, "Orders", "p", "r", None).unwrap();
    assert_eq!(got.properties.len(), 1, "replace dropped Tag");
    // Merge keeps other properties.
    let merge = TableOp::Update {
        entity: Entity::new("p", "r").with("M", EdmValue::Boolean(true)),
        mode: UpdateMode::Merge,
        if_match: IfMatch::Any,
    };
    s.execute(a, "Orders", merge).unwrap();
    let got = s.get_entity(a, "Orders", "p", "r", None).unwrap();
    assert_eq!(got.properties.keys().collect::<Vec<_>>(), ["M", "N"]);
    assert_ne!(got.etag, t2);
    // Update of a missing entity, upserts.
    let missing = TableOp::Update {
        entity: e("p", "none", 0),
        mode: UpdateMode::Merge,
        if_match: IfMatch::Any,
    };
    assert_eq!(code(s.execute(a, "Orders", missing)), "ResourceNotFound");
    s.execute(
        a,
        "Orders",
        TableOp::Upsert {
            entity: e("p", "u", 5),
            mode: UpdateMode::Merge,
        },
    )
    .unwrap();
    s.execute(
        a,
        "Orders",
        TableOp::Upsert {
            entity: Entity::new("p", "u").with("X", EdmValue::Int64(9)),
            mode: UpdateMode::Merge,
        },
    )
    .unwrap();
    assert_eq!(
        s.get_entity(a, "Orders", "p", "u", None)
            .unwrap()
            .properties
            .len(),
        3
    );
    s.execute(
        a,
        "Orders",
        TableOp::Upsert {
            entity: Entity::new("p", "u"),
            mode: UpdateMode::Replace,
        },
    )
    .unwrap();
    assert!(
        s.get_entity(a, "Orders", "p", "u", None)
            .unwrap()
            .properties
            .is_empty()
    );
    // Delete: ETag or *.
    let del = |m: IfMatch| TableOp::Delete {
        partition_key: "p".into(),
        row_key: "r".into(),
        if_match: m,
    };
    assert_eq!(
        code(s.execute(a, "Orders", del(IfMatch::ETag(t2)))),
        "UpdateConditionNotSatisfied"
    );
    s.execute(a, "Orders", del(IfMatch::Any)).unwrap();
    assert_eq!(
        code(s.execute(a, "Orders", del(IfMatch::Any))),
        "ResourceNotFound"
    );
    // Bad entities are refused before anything happens.
    assert_eq!(
        code(s.execute(a, "Orders", TableOp::Insert(Entity::new("a#b", "r")))),
        "InvalidResourceName"
    );
    let sel = s
        .get_entity(a, "Orders", "p", "u", Some(&["Nope".to_string()]))
        .unwrap();
    assert!(sel.properties.is_empty());
}

fn queries_filters_select_top_and_continuation(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    for p in 0..3 {
        for r in 0..10 {
            s.execute(
                a,
                "Orders",
                TableOp::Insert(e(&format!("p{p}"), &format!("r{r:02}"), p * 10 + r)),
            )
            .unwrap();
        }
    }
    let q = |filter: &str| Query {
        filter: Some(filter.into()),
        ..Default::default()
    };
    let keys = |page: &QueryPage| {
        page.entities
            .iter()
            .map(|e| format!("{}/{}", e.partition_key, e.row_key))
            .collect::<Vec<_>>()
    };
    let page = s
        .query_entities(
            a,
            "Orders",
            &q("PartitionKey eq 'p1' and RowKey ge 'r05' and RowKey lt 'r08'"),
        )
        .unwrap();
    assert_eq!(keys(&page), ["p1/r05", "p1/r06", "p1/r07"]);
    let page = s
        .query_entities(a, "Orders", &q("N gt 25 and N le 28 or Tag eq 't3'"))
        .unwrap();
    assert_eq!(keys(&page), ["p0/r03", "p2/r06", "p2/r07", "p2/r08"]);
    let page = s
        .query_entities(
            a,
            "Orders",
            &q("PartitionKey ge 'p1' and PartitionKey lt 'p2' and not (N lt 18)"),
        )
        .unwrap();
    assert_eq!(keys(&page), ["p1/r08", "p1/r09"]);
    // $select and $top with continuation, looping until done.
    let mut all = Vec::new();
    let mut cont = None;
    let mut pages = 0;
    loop {
        let page = s
            .query_entities(
                a,
                "Orders",
                &Query {
                    filter: Some("N ge 5".into()),
                    select: Some(vec!["N".into()]),
                    top: Some(7),
                    continuation: cont,
                },
            )
            .unwrap();
        assert!(page.entities.iter().all(|e| e.properties.keys().eq(["N"])));
        all.extend(keys(&page));
        pages += 1;
        cont = page.continuation;
        if cont.is_none() {
            break;
        }
    }
    assert_eq!(all.len(), 25);
    assert_eq!(pages, 4);
    assert_eq!(
        code(s.query_entities(a, "Orders", &q("N eq"))),
        "InvalidInput"
    );
    assert_eq!(
        code(s.query_entities(
            a,
            "Orders",
            &Query {
                top: Some(1001),
                ..Default::default()
            }
        )),
        "InvalidInput"
    );
    assert_eq!(
        code(s.query_entities(a, "Nope", &Query::default())),
        "TableNotFound"
    );
}

fn entity_group_transactions_are_all_or_nothing(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    s.execute(a, "Orders", TableOp::Insert(e("p", "exists", 0)))
        .unwrap();
    let ok = vec![
        TableOp::Insert(e("p", "a", 1)),
        TableOp::Upsert {
            entity: e("p", "b", 2),
            mode: UpdateMode::Replace,
        },
        TableOp::Delete {
            partition_key: "p".into(),
            row_key: "exists".into(),
            if_match: IfMatch::Any,
        },
    ];
    let etags = s.submit_transaction(a, "Orders", ok).unwrap();
    assert_eq!(etags.len(), 3);
    assert!(etags[2].is_none());
    // One failing operation: nothing applied, the index is reported.
    let bad = vec![
        TableOp::Insert(e("p", "c", 3)),
        TableOp::Insert(e("p", "a", 9)),
    ];
    let err = s.submit_transaction(a, "Orders", bad).unwrap_err();
    assert_eq!(err.code(), "EntityAlreadyExists");
    assert!(err.to_string().starts_with("1:"), "{err}");
    assert_eq!(
        code(s.get_entity(a, "Orders", "p", "c", None)),
        "ResourceNotFound"
    );
    assert_eq!(
        code(s.submit_transaction(
            a,
            "Orders",
            vec![
                TableOp::Insert(e("p", "x", 1)),
                TableOp::Insert(e("q", "y", 1))
            ]
        )),
        "CommandsInBatchActOnDifferentPartitions"
    );
    assert_eq!(
        code(s.submit_transaction(
            a,
            "Orders",
            vec![
                TableOp::Insert(e("p", "x", 1)),
                TableOp::Insert(e("p", "x", 2))
            ]
        )),
        "InvalidDuplicateRow"
    );
    assert_eq!(
        code(s.submit_transaction(a, "Orders", vec![])),
        "InvalidInput"
    );
    let too_many: Vec<_> = (0..101)
        .map(|i| TableOp::Insert(e("p", &format!("k{i}"), i)))
        .collect();
    assert_eq!(
        code(s.submit_transaction(a, "Orders", too_many)),
        "InvalidInput"
    );
    let hundred: Vec<_> = (0..100)
        .map(|i| TableOp::Insert(e("p", &format!("k{i:03}"), i)))
        .collect();
    assert_eq!(
        s.submit_transaction(a, "Orders", hundred).unwrap().len(),
        100
    );
    let invalid = s
        .submit_transaction(
            a,
            "Orders",
            vec![
                TableOp::Insert(e("p", "ok", 1)),
                TableOp::Insert(Entity::new("p", "bad").with("Timestamp", EdmValue::Int32(1))),
            ],
        )
        .unwrap_err();
    assert!(invalid.to_string().starts_with("1:"), "{invalid}");
}

/// Large entities end a page by its size: one query page (one host call for a guest) stays
/// near `MAX_PAGE_BYTES` however large the entities, and the continuation reaches them all.
fn a_page_of_large_entities_is_bounded_in_bytes(engine: Engine) {
    let f = setup(engine);
    let (s, a) = (&f.store, &f.acct);
    // 20 entities of 480 KiB stored (15 properties of 32 Ki ASCII characters, 64 KiB each
    // as UTF-16, the limit).
    let big = "x".repeat(32 * 1024);
    for i in 0..20 {
        let mut entity = Entity::new("p", format!("r{i:02}"));
        for j in 0..15 {
            entity = entity.with(format!("P{j}"), EdmValue::String(big.clone()));
        }
        s.execute(a, "Orders", TableOp::Insert(entity)).unwrap();
    }
    let mut query = Query::default();
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page = s.query_entities(a, "Orders", &query).unwrap();
        let bytes: usize = page
            .entities
            .iter()
            .flat_map(|e| e.properties.values())
            .map(|v| match v {
                EdmValue::String(s) => s.len(),
                _ => 0,
            })
            .sum();
        assert!(
            bytes <= MAX_PAGE_BYTES + (1 << 20),
            "a page of {bytes} bytes"
        );
        seen += page.entities.len();
        pages += 1;
        match page.continuation {
            Some(c) => query.continuation = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, 20);
    assert!(pages >= 3, "{pages} pages");
}

fn table_access_policies_are_checked_kept_and_die_with_their_table(engine: Engine) {
    use rolehost_storage::blob::AccessPolicy;
    let f = engine.fixture();
    let (s, a) = (&f.store, &f.acct);
    let policy = |id: &str, perms: &str| AccessPolicy {
        id: id.into(),
        start: None,
        expiry: None,
        permissions: perms.into(),
    };
    assert_eq!(code(s.get_table_acl(a, "Nope")), "TableNotFound");
    s.create_table(a, "People").unwrap();
    s.set_table_acl(a, "people", vec![policy("readers", "r")])
        .unwrap();
    assert_eq!(
        s.get_table_acl(a, "PEOPLE").unwrap(),
        vec![policy("readers", "r")],
        "names compare ignoring case"
    );
    assert_eq!(
        code(s.set_table_acl(a, "People", vec![policy("x", "p")])),
        "InvalidXmlDocument"
    );
    s.delete_table(a, "People").unwrap();
    s.create_table(a, "People").unwrap();
    assert!(s.get_table_acl(a, "People").unwrap().is_empty());
}

on_every_engine!(
    tables,
    insert_update_merge_upsert_delete_with_etags,
    queries_filters_select_top_and_continuation,
    entity_group_transactions_are_all_or_nothing,
    a_page_of_large_entities_is_bounded_in_bytes,
    table_access_policies_are_checked_kept_and_die_with_their_table,
);
