//! The IndexStore contract: the same cases against the embedded store (redb) and the MongoDB
//! store, then a differential run: the same script of commits applied to both, every query
//! answered identically.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use intellihealth::index::embedded::EmbeddedIndex;
use intellihealth::index::mongo::MongoIndex;
use intellihealth::index::{
    CandidateQuery, Commit, HistoryCursor, HistoryQuery, HistoryScope, IndexError, IndexStore,
    Method, Record, Searchable, VersionRecord, equality_range,
};

fn record(rt: &str, id: &str, version: u64, last_updated: i64) -> VersionRecord {
    VersionRecord {
        resource_type: rt.into(),
        id: id.into(),
        version,
        last_updated,
        superseded_at: None,
        method: if version == 1 {
            Method::Create
        } else {
            Method::Update
        },
        cid: Some(format!("bafkreicid{id}v{version}")),
        digest: Some(format!("digest{version}")),
        key_owner: Some("Patient/p".into()),
        patients: vec!["p".into()],
        batch_entry: None,
    }
}

fn commit(record: VersionRecord, replaces: Option<u64>) -> Commit {
    Commit {
        searchable: Searchable {
            keys: vec![format!("family\u{1}n\u{1}v{}", record.version)],
            entries: format!("[\"v{}\"]", record.version).into_bytes(),
            registry: 7,
        },
        record,
        replaces,
    }
}

fn instance(rt: &str, id: &str) -> HistoryQuery {
    HistoryQuery {
        scope: HistoryScope::Instance {
            resource_type: rt.into(),
            id: id.into(),
        },
        since: None,
        at: None,
        after: None,
        patient: None,
        limit: 100,
    }
}

fn versions_of(records: &[VersionRecord]) -> Vec<u64> {
    records.iter().map(|r| r.version).collect()
}

async fn contract(store: Arc<dyn IndexStore>) {
    let s = store.as_ref();
    // Commit and locate.
    s.commit(commit(record("Patient", "a", 1, 1_000), None))
        .await
        .unwrap();
    let current = s.current("Patient", "a").await.unwrap().unwrap();
    assert_eq!((current.version, current.last_updated), (1, 1_000));
    assert!(s.current("Patient", "missing").await.unwrap().is_none());
    assert!(s.version("Patient", "a", 2).await.unwrap().is_none());

    // Uniqueness: a second version 1, or a stale `replaces`, is a conflict naming the current.
    let again = s
        .commit(commit(record("Patient", "a", 1, 1_001), None))
        .await;
    assert!(
        matches!(again, Err(IndexError::Conflict { current: Some(1) })),
        "{again:?}"
    );
    s.commit(commit(record("Patient", "a", 2, 2_000), Some(1)))
        .await
        .unwrap();
    let stale = s
        .commit(commit(record("Patient", "a", 2, 2_001), Some(1)))
        .await;
    assert!(
        matches!(stale, Err(IndexError::Conflict { current: Some(2) })),
        "{stale:?}"
    );
    let superseded = s.version("Patient", "a", 1).await.unwrap().unwrap();
    assert_eq!(superseded.superseded_at, Some(2_000));

    // Concurrent writers of the same next version: exactly one wins.
    let racers = (0..8).map(|n| {
        let store = store.clone();
        async move {
            store
                .commit(commit(record("Patient", "a", 3, 3_000 + n), Some(2)))
                .await
        }
    });
    let results = join_all(racers).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(IndexError::Conflict { .. })))
    );

    // A delete is a content-less version.
    let mut deleted = record("Patient", "a", 4, 4_000);
    deleted.method = Method::Delete;
    deleted.cid = None;
    s.commit(commit(deleted, Some(3))).await.unwrap();
    assert!(s.current("Patient", "a").await.unwrap().unwrap().deleted());

    // History: newest first, pages, _since, _at.
    let all = s.history(&instance("Patient", "a")).await.unwrap();
    assert_eq!(versions_of(&all), [4, 3, 2, 1]);
    let first_page = s
        .history(&HistoryQuery {
            limit: 2,
            ..instance("Patient", "a")
        })
        .await
        .unwrap();
    assert_eq!(versions_of(&first_page), [4, 3]);
    let second_page = s
        .history(&HistoryQuery {
            limit: 2,
            after: Some(HistoryCursor::after(&first_page[1])),
            ..instance("Patient", "a")
        })
        .await
        .unwrap();
    assert_eq!(versions_of(&second_page), [2, 1]);
    let since = s
        .history(&HistoryQuery {
            since: Some(2_000),
            ..instance("Patient", "a")
        })
        .await
        .unwrap();
    assert_eq!(versions_of(&since), [4, 3, 2]);
    let at = s
        .history(&HistoryQuery {
            at: Some((2_500, 2_500)),
            ..instance("Patient", "a")
        })
        .await
        .unwrap();
    assert_eq!(versions_of(&at), [2], "version 2 was current at 2,500");

    // Type and system history order by lastUpdated across resources.
    s.commit(commit(record("Patient", "b", 1, 2_500), None))
        .await
        .unwrap();
    s.commit(commit(record("Observation", "o", 1, 2_600), None))
        .await
        .unwrap();
    let patients = s
        .history(&HistoryQuery {
            scope: HistoryScope::Type("Patient".into()),
            ..instance("", "")
        })
        .await
        .unwrap();
    let order: Vec<(String, u64)> = patients.iter().map(|r| (r.id.clone(), r.version)).collect();
    assert_eq!(
        order,
        [
            ("a".into(), 4),
            ("a".into(), 3),
            ("b".into(), 1),
            ("a".into(), 2),
            ("a".into(), 1)
        ]
    );
    let system = s
        .history(&HistoryQuery {
            scope: HistoryScope::System,
            ..instance("", "")
        })
        .await
        .unwrap();
    assert_eq!(system.len(), 6);
    assert_eq!(system[2].resource_type, "Observation");
    let mut elsewhere = record("Observation", "q", 1, 2_700);
    elsewhere.patients = vec!["someone-else".into()];
    s.commit(commit(elsewhere, None)).await.unwrap();
    let narrowed = s
        .history(&HistoryQuery {
            scope: HistoryScope::System,
            patient: Some("p".into()),
            ..instance("", "")
        })
        .await
        .unwrap();
    assert_eq!(
        narrowed.len(),
        6,
        "a patient-narrowed listing leaves other compartments out"
    );

    // Data keys: the first one stored holds.
    assert!(s.data_key("Patient/p").await.unwrap().is_none());
    assert_eq!(
        s.insert_data_key("Patient/p", vec![1, 2]).await.unwrap(),
        [1, 2]
    );
    assert_eq!(
        s.insert_data_key("Patient/p", vec![3, 4]).await.unwrap(),
        [1, 2]
    );
    assert_eq!(s.data_key("Patient/p").await.unwrap().unwrap(), [1, 2]);

    // The sweeper's questions.
    assert!(s.references("bafkreicidav2").await.unwrap());
    assert!(!s.references("bafkreinothere").await.unwrap());
    assert_eq!(s.note_unreferenced("bafkreix", 10).await.unwrap(), 10);
    assert_eq!(
        s.note_unreferenced("bafkreix", 20).await.unwrap(),
        10,
        "the first sighting holds"
    );
    s.forget_unreferenced("bafkreix").await.unwrap();
    assert_eq!(s.note_unreferenced("bafkreix", 30).await.unwrap(), 30);
    assert!(s.health().await.is_ok());

    // Records: put/get, insert-if-absent, expiry, single-use take, listing by kind.
    let rec = |kind: &str, key: &str, value: &[u8], expires_at: Option<i64>| Record {
        kind: kind.into(),
        key: key.into(),
        value: value.to_vec(),
        expires_at,
    };
    s.put_record(rec("client", "app", b"v1", None))
        .await
        .unwrap();
    assert_eq!(
        s.get_record("client", "app").await.unwrap().unwrap().value,
        b"v1"
    );
    assert!(
        s.get_record("user", "app").await.unwrap().is_none(),
        "kinds are separate"
    );
    s.put_record(rec("client", "app", b"v2", None))
        .await
        .unwrap();
    assert_eq!(
        s.get_record("client", "app").await.unwrap().unwrap().value,
        b"v2"
    );
    assert!(
        !s.insert_record(rec("client", "app", b"v3", None))
            .await
            .unwrap(),
        "taken"
    );
    assert!(
        s.insert_record(rec("jti", "a", b"", Some(i64::MAX)))
            .await
            .unwrap()
    );
    assert!(
        !s.insert_record(rec("jti", "a", b"", Some(i64::MAX)))
            .await
            .unwrap(),
        "a replay"
    );
    s.put_record(rec("code", "old", b"x", Some(1)))
        .await
        .unwrap();
    assert!(
        s.get_record("code", "old").await.unwrap().is_none(),
        "expired reads as absent"
    );
    assert!(
        s.insert_record(rec("code", "old", b"y", None))
            .await
            .unwrap(),
        "an expired slot is free"
    );
    s.put_record(rec("client", "other", b"o", None))
        .await
        .unwrap();
    s.put_record(rec("client", "gone", b"g", Some(1)))
        .await
        .unwrap();
    let mut listed: Vec<String> = s
        .list_records("client")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    listed.sort();
    assert_eq!(listed, ["app", "other"]);
    s.put_record(rec("code", "once", b"c", None)).await.unwrap();
    let takers = (0..6).map(|_| {
        let store = store.clone();
        async move { store.take_record("code", "once").await.unwrap() }
    });
    let taken = join_all(takers).await;
    assert_eq!(
        taken.iter().filter(|t| t.is_some()).count(),
        1,
        "a code is used once"
    );
    assert!(s.get_record("code", "once").await.unwrap().is_none());

    // Expired records are deleted, not only hidden: a purge removes exactly those ("client
    // gone" and "code stale"), and nothing is left for a second one.
    s.put_record(rec("code", "stale", b"s", Some(2)))
        .await
        .unwrap();
    let now = intellihealth::fhir::instant::now_millis();
    assert_eq!(s.purge_expired(now).await.unwrap(), 2);
    assert_eq!(s.purge_expired(now).await.unwrap(), 0);
    assert!(s.get_record("client", "app").await.unwrap().is_some());
    assert!(s.get_record("jti", "a").await.unwrap().is_some());

    commit_all_contract(s).await;
    erase_contract(s).await;
}

/// Erasing a patient's record: their key destroyed for good, every version sealed under it
/// gone, each resource whose current version was one of them ended by an erasure version;
/// what another patient's key seals stays. Twice is the same as once.
async fn erase_contract(s: &dyn IndexStore) {
    let owned = |rt: &str, id: &str, version: u64, owner: &str, patients: &[&str]| {
        let mut r = record(rt, id, version, 40_000 + version as i64);
        r.key_owner = Some(format!("Patient/{owner}"));
        r.patients = patients.iter().map(|p| p.to_string()).collect();
        r
    };
    s.commit(commit(owned("Patient", "x", 1, "x", &["x"]), None))
        .await
        .unwrap();
    s.commit(commit(owned("Patient", "x", 2, "x", &["x"]), Some(1)))
        .await
        .unwrap();
    s.commit(commit(owned("Observation", "o1", 1, "x", &["x"]), None))
        .await
        .unwrap();
    // In x's compartment but sealed under y's key: y's data, it stays.
    s.commit(commit(
        owned("Observation", "o2", 1, "y", &["y", "x"]),
        None,
    ))
    .await
    .unwrap();
    // Moved from x to y: its first version goes, its current one stays.
    s.commit(commit(owned("Observation", "o3", 1, "x", &["x"]), None))
        .await
        .unwrap();
    s.commit(commit(owned("Observation", "o3", 2, "y", &["y"]), Some(1)))
        .await
        .unwrap();
    s.insert_data_key("Patient/x", b"wrapped-x".to_vec())
        .await
        .unwrap();
    s.insert_data_key("Patient/y", b"wrapped-y".to_vec())
        .await
        .unwrap();
    let x1_cid = "bafkreicidxv1";
    assert!(s.references(x1_cid).await.unwrap());

    let erased = s.erase_patient("x", 50_000).await.unwrap();
    let mut resources = erased.resources.clone();
    resources.sort();
    assert_eq!(
        resources,
        vec![
            ("Observation".to_owned(), "o1".to_owned()),
            ("Patient".to_owned(), "x".to_owned())
        ]
    );
    assert_eq!(erased.versions, 4);
    let mut cids = erased.cids.clone();
    cids.sort();
    assert_eq!(
        cids,
        vec![
            "bafkreicido1v1",
            "bafkreicido3v1",
            "bafkreicidxv1",
            "bafkreicidxv2"
        ]
    );

    let end = s.current("Patient", "x").await.unwrap().unwrap();
    assert_eq!((end.version, end.method), (3, Method::Erase));
    assert!(end.deleted() && end.cid.is_none() && end.key_owner.is_none());
    assert!(end.patients == vec!["x".to_owned()] && end.last_updated >= 50_000);
    for version in [1, 2] {
        assert!(s.version("Patient", "x", version).await.unwrap().is_none());
    }
    assert_eq!(
        versions_of(&s.history(&instance("Patient", "x")).await.unwrap()),
        vec![3]
    );
    assert!(s.version("Observation", "o3", 1).await.unwrap().is_none());
    assert_eq!(
        s.current("Observation", "o3")
            .await
            .unwrap()
            .unwrap()
            .version,
        2
    );
    assert!(!s.references(x1_cid).await.unwrap());
    // Nothing of x's is found by search any more; y's is.
    let found = |key: &str| CandidateQuery {
        resource_types: vec!["Observation".into(), "Patient".into()],
        key_ranges: Some(vec![equality_range(key)]),
        patient: None,
        after: None,
        limit: 50,
    };
    let ids: Vec<String> = s
        .candidates(&found("family\u{1}n\u{1}v1"))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.record.id)
        .collect();
    assert!(ids.contains(&"o2".to_owned()), "{ids:?}");
    assert!(!ids.contains(&"o1".to_owned()), "{ids:?}");
    let ids: Vec<String> = s
        .candidates(&found("family\u{1}n\u{1}v2"))
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.record.id)
        .collect();
    assert!(!ids.contains(&"x".to_owned()), "{ids:?}");

    // The key is destroyed, and a new one can never take its place.
    assert_eq!(s.data_key("Patient/x").await.unwrap(), Some(Vec::new()));
    assert_eq!(
        s.insert_data_key("Patient/x", b"fresh".to_vec())
            .await
            .unwrap(),
        Vec::<u8>::new()
    );
    assert_eq!(
        s.data_key("Patient/y").await.unwrap(),
        Some(b"wrapped-y".to_vec())
    );

    // Again: nothing left to do.
    let again = s.erase_patient("x", 60_000).await.unwrap();
    assert!(again.resources.is_empty() && again.versions == 0 && again.cids.is_empty());
    assert_eq!(s.current("Patient", "x").await.unwrap().unwrap().version, 3);
}

/// Many versions in one commit: all become current, with their batch positions, or (one
/// conflict) none does.
async fn commit_all_contract(s: &dyn IndexStore) {
    let batch = |ids: &[&str], created: i64| -> Vec<Commit> {
        ids.iter()
            .enumerate()
            .map(|(n, id)| {
                let mut r = record("AuditEvent", id, 1, created);
                r.cid = Some("bafkreibatch".into());
                r.batch_entry = Some(n as u32);
                commit(r, None)
            })
            .collect()
    };
    s.commit_all(batch(&["e1", "e2", "e3"], 10_000), Vec::new())
        .await
        .unwrap();
    for (n, id) in ["e1", "e2", "e3"].iter().enumerate() {
        let current = s.current("AuditEvent", id).await.unwrap().unwrap();
        assert_eq!(current.batch_entry, Some(n as u32), "{id}");
        assert_eq!(
            s.version("AuditEvent", id, 1).await.unwrap().unwrap(),
            current
        );
    }
    assert!(s.references("bafkreibatch").await.unwrap());
    // e2 exists: the batch conflicts as a whole, and e4 and e5 are not made.
    let conflicting = s
        .commit_all(batch(&["e4", "e2", "e5"], 11_000), Vec::new())
        .await;
    assert!(
        matches!(conflicting, Err(IndexError::Conflict { .. })),
        "{conflicting:?}"
    );
    for id in ["e4", "e5"] {
        assert!(s.current("AuditEvent", id).await.unwrap().is_none(), "{id}");
    }
    // The same resource twice in one batch is a conflict too.
    let twice = s.commit_all(batch(&["e6", "e6"], 12_000), Vec::new()).await;
    assert!(
        matches!(twice, Err(IndexError::Conflict { .. })),
        "{twice:?}"
    );
    assert!(s.current("AuditEvent", "e6").await.unwrap().is_none());
    // Records go with the versions, or not at all; alone, they are simply put.
    s.commit_all(Vec::new(), Vec::new()).await.unwrap();
    let note = |key: &str| Record {
        kind: "trail".into(),
        key: key.into(),
        value: key.as_bytes().to_vec(),
        expires_at: None,
    };
    s.commit_all(batch(&["e7"], 13_000), vec![note("with-e7")])
        .await
        .unwrap();
    assert!(s.get_record("trail", "with-e7").await.unwrap().is_some());
    let lost = s
        .commit_all(batch(&["e8", "e7"], 14_000), vec![note("with-e8")])
        .await;
    assert!(matches!(lost, Err(IndexError::Conflict { .. })), "{lost:?}");
    assert!(s.get_record("trail", "with-e8").await.unwrap().is_none());
    s.commit_all(Vec::new(), vec![note("alone")]).await.unwrap();
    assert!(s.get_record("trail", "alone").await.unwrap().is_some());
}

async fn embedded() -> (tempfile::TempDir, Arc<dyn IndexStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        EmbeddedIndex::open(
            dir.path(),
            intellihealth::index::embedded::AtRestKey::from_bytes([5; 32]),
        )
        .unwrap(),
    );
    (dir, store)
}

async fn mongo(tag: &str) -> Arc<dyn IndexStore> {
    let uri = common::services::fresh_database_uri(tag);
    Arc::new(
        MongoIndex::connect(&uri, Duration::from_secs(10))
            .await
            .unwrap(),
    )
}

/// What search asks of a store: candidates by key equality and key range, in (type, id)
/// order, narrowed to a patient, paged; entries of a version; reindexing and what is stale.
async fn search_contract(store: Arc<dyn IndexStore>) {
    let s = store.as_ref();
    let searchable = |keys: &[&str], registry: u64| Searchable {
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        entries: format!("{keys:?}").into_bytes(),
        registry,
    };
    let put = |rt: &str, id: &str, version: u64, keys: &[&str], patient: &str| {
        let mut r = record(rt, id, version, 1_000 + version as i64);
        r.patients = vec![patient.to_owned()];
        Commit {
            record: r,
            replaces: (version > 1).then(|| version - 1),
            searchable: searchable(keys, 1),
        }
    };
    for (id, keys, patient) in [
        ("s3", &["name\u{1}n\u{1}smith", "_\u{1}_"][..], "p1"),
        ("s1", &["name\u{1}n\u{1}smythe", "_\u{1}_"][..], "p2"),
        ("s2", &["name\u{1}n\u{1}jones", "_\u{1}_"][..], "p1"),
    ] {
        s.commit(put("Patient", id, 1, keys, patient))
            .await
            .unwrap();
    }
    s.commit(put("Observation", "o1", 1, &["name\u{1}n\u{1}smith"], "p1"))
        .await
        .unwrap();
    let query = |ranges: Option<Vec<(String, String)>>| CandidateQuery {
        resource_types: vec!["Patient".into()],
        key_ranges: ranges,
        patient: None,
        after: None,
        limit: 100,
    };
    let ids = |found: Vec<intellihealth::index::Candidate>| -> Vec<String> {
        found.into_iter().map(|c| c.record.id).collect()
    };
    let exact = vec![equality_range("name\u{1}n\u{1}smith")];
    assert_eq!(
        ids(s.candidates(&query(Some(exact.clone()))).await.unwrap()),
        ["s3"]
    );
    let prefix = vec![(
        "name\u{1}n\u{1}sm".to_owned(),
        "name\u{1}n\u{1}sm\u{10ffff}".to_owned(),
    )];
    assert_eq!(
        ids(s.candidates(&query(Some(prefix.clone()))).await.unwrap()),
        ["s1", "s3"],
        "in id order"
    );
    let both = vec![equality_range("name\u{1}n\u{1}jones"), exact[0].clone()];
    assert_eq!(
        ids(s.candidates(&query(Some(both.clone()))).await.unwrap()),
        ["s2", "s3"]
    );
    let mut everything = query(None);
    assert_eq!(
        ids(s.candidates(&everything).await.unwrap()),
        ["s1", "s2", "s3"]
    );
    everything.patient = Some("p1".into());
    assert_eq!(ids(s.candidates(&everything).await.unwrap()), ["s2", "s3"]);
    everything.patient = None;
    everything.after = Some(("Patient".into(), "s1".into()));
    everything.limit = 1;
    assert_eq!(
        ids(s.candidates(&everything).await.unwrap()),
        ["s2"],
        "paged"
    );
    let mut two_types = query(Some(exact.clone()));
    two_types.resource_types = vec!["Observation".into(), "Patient".into()];
    let found = s.candidates(&two_types).await.unwrap();
    assert_eq!(
        found
            .iter()
            .map(|c| c.record.resource_type.as_str())
            .collect::<Vec<_>>(),
        ["Observation", "Patient"]
    );
    assert_eq!(
        found[1].entries,
        searchable(&["name\u{1}n\u{1}smith", "_\u{1}_"], 1).entries
    );

    // An update moves the resource's keys; a delete removes it from every search.
    s.commit(put("Patient", "s3", 2, &["name\u{1}n\u{1}brown"], "p1"))
        .await
        .unwrap();
    assert!(
        s.candidates(&query(Some(exact.clone())))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.version_entries("Patient", "s3", 1).await.unwrap(),
        Some(searchable(&["name\u{1}n\u{1}smith", "_\u{1}_"], 1).entries),
        "a version keeps its entries"
    );
    let mut deleted = record("Patient", "s2", 2, 2_000);
    deleted.method = Method::Delete;
    deleted.cid = None;
    s.commit(Commit {
        record: deleted,
        replaces: Some(1),
        searchable: Searchable::default(),
    })
    .await
    .unwrap();
    assert_eq!(ids(s.candidates(&query(None)).await.unwrap()), ["s1", "s3"]);

    // Reindexing: what another registry made is stale until reindexed, and a reindex of a
    // version no longer current changes nothing.
    let stale = s.stale(2, None, 100).await.unwrap();
    assert_eq!(
        stale
            .iter()
            .map(|r| format!("{}/{}", r.resource_type, r.id))
            .collect::<Vec<_>>(),
        ["Observation/o1", "Patient/s1", "Patient/s3"]
    );
    assert!(
        s.reindex("Patient", "s1", 1, searchable(&["name\u{1}n\u{1}new"], 2))
            .await
            .unwrap()
    );
    assert!(
        !s.reindex("Patient", "s3", 1, searchable(&["x"], 2))
            .await
            .unwrap()
    );
    let left = s
        .stale(2, Some(("Observation".into(), "o1".into())), 100)
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["s3"]
    );
    let new = vec![equality_range("name\u{1}n\u{1}new")];
    assert_eq!(ids(s.candidates(&query(Some(new))).await.unwrap()), ["s1"]);
    assert!(
        s.candidates(&query(Some(vec![equality_range("name\u{1}n\u{1}smythe")])))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_index_keeps_the_contract() {
    let (_dir, store) = embedded().await;
    contract(store).await;
    let (_dir, store) = embedded().await;
    search_contract(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mongodb_index_keeps_the_contract() {
    contract(mongo("contract").await).await;
    search_contract(mongo("search-contract").await).await;
}

/// The same script on both stores; every query must be answered identically.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_index_stores_answer_identically() {
    let (_dir, embedded) = embedded().await;
    let mongo = mongo("differential").await;
    let mut clock = 10_000;
    let mut next = std::collections::HashMap::<String, u64>::new();
    for step in 0..120u64 {
        let (rt, id) = (
            ["Patient", "Observation", "Encounter"][(step % 3) as usize],
            format!("r{}", step % 17),
        );
        let key = format!("{rt}/{id}");
        let version = next.get(&key).copied().unwrap_or(0) + 1;
        // Several versions share a millisecond, to exercise the tie-breaking order.
        clock += (step % 4) as i64;
        let mut r = record(rt, &id, version, clock);
        if step % 11 == 10 {
            r.method = Method::Delete;
            r.cid = None;
        }
        let c = commit(r, (version > 1).then(|| version - 1));
        embedded.commit(c.clone()).await.unwrap();
        mongo.commit(c).await.unwrap();
        next.insert(key, version);
    }
    let mut queries = Vec::new();
    for scope in [
        HistoryScope::System,
        HistoryScope::Type("Observation".into()),
        HistoryScope::Instance {
            resource_type: "Patient".into(),
            id: "r3".into(),
        },
    ] {
        for (since, at) in [
            (None, None),
            (Some(10_080), None),
            (None, Some((10_050, 10_090))),
        ] {
            for patient in [None, Some("p".to_owned())] {
                queries.push(HistoryQuery {
                    scope: scope.clone(),
                    since,
                    at,
                    after: None,
                    patient,
                    limit: 7,
                });
            }
        }
    }
    for query in queries {
        // Page through both to the end, comparing every page.
        let mut query = query;
        for _ in 0..100 {
            let a = embedded.history(&query).await.unwrap();
            let b = mongo.history(&query).await.unwrap();
            assert_eq!(a, b, "history differs for {query:?}");
            match a.last() {
                Some(last) if a.len() == query.limit => {
                    query.after = Some(HistoryCursor::after(last))
                }
                _ => break,
            }
        }
    }
    for id in 0..17 {
        for rt in ["Patient", "Observation", "Encounter"] {
            let id = format!("r{id}");
            assert_eq!(
                embedded.current(rt, &id).await.unwrap(),
                mongo.current(rt, &id).await.unwrap()
            );
            assert_eq!(
                embedded.version(rt, &id, 2).await.unwrap(),
                mongo.version(rt, &id, 2).await.unwrap()
            );
        }
    }
}
