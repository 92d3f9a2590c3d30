//! History at instance, type and system level: order, entries of deletes, paging by `next`
//! links, `_count`, `_since`, `_at`.

use serde_json::{Value, json};

use super::{SuiteContext, bundle_link, patient};
use crate::client::Client;
use crate::report::Report;

const SUITE: &str = "history";

pub async fn run(ctx: &SuiteContext, report: &mut Report) {
    let c = &ctx.client;
    // Five versions: create, three updates, delete.
    let created = c.post_json("Patient", &patient("History")).send().await;
    let Some(first) = created.json() else {
        report.check(SUITE, "set-up: create a patient", false, created.summary());
        return;
    };
    let id = first["id"].as_str().unwrap_or_default().to_owned();
    let mut stamps = vec![
        first["meta"]["lastUpdated"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ];
    for n in 2..=4 {
        let mut body = first.clone();
        body["name"][0]["given"] = json!([format!("Version{n}")]);
        let reply = c.put_json(&format!("Patient/{id}"), &body).send().await;
        stamps.push(
            reply
                .json()
                .and_then(|v| v["meta"]["lastUpdated"].as_str().map(str::to_owned))
                .unwrap_or_default(),
        );
    }
    c.delete(&format!("Patient/{id}")).send().await;

    let instance = c.get(&format!("Patient/{id}/_history")).send().await;
    let bundle = instance.json().unwrap_or_default();
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    report.check(
        SUITE,
        "instance history is a history Bundle of 5 entries",
        instance.status == 200
            && bundle["resourceType"] == "Bundle"
            && bundle["type"] == "history"
            && entries.len() == 5,
        format!("status {}, {} entries", instance.status, entries.len()),
    );
    let versions: Vec<String> = entries.iter().map(entry_version).collect();
    report.check(
        SUITE,
        "instance history is newest first",
        versions == ["5", "4", "3", "2", "1"],
        format!("{versions:?}"),
    );
    let delete = entries.first().cloned().unwrap_or_default();
    report.check(
        SUITE,
        "the delete appears as a DELETE entry without a resource",
        delete["request"]["method"] == "DELETE" && delete.get("resource").is_none(),
        format!("{delete}"),
    );
    report.check(
        SUITE,
        "entries carry fullUrl, request and response",
        entries.iter().all(|e| {
            e["fullUrl"]
                .as_str()
                .is_some_and(|u| u.ends_with(&format!("Patient/{id}")))
                && e["request"]["method"].is_string()
                && e["response"]["status"].is_string()
        }),
        String::new(),
    );

    // Paging.
    let paged = follow_pages(c, &format!("Patient/{id}/_history?_count=2")).await;
    let paged_versions: Vec<String> = paged.iter().map(entry_version).collect();
    report.check(
        SUITE,
        "_count=2 pages through all versions by next links",
        paged_versions == versions,
        format!("{paged_versions:?}"),
    );
    let first_page = c
        .get(&format!("Patient/{id}/_history?_count=2"))
        .send()
        .await
        .json()
        .unwrap_or_default();
    report.check(
        SUITE,
        "a page of _count=2 has 2 entries and a next link",
        first_page["entry"].as_array().map(Vec::len) == Some(2)
            && bundle_link(&first_page, "next").is_some(),
        String::new(),
    );
    report.check(
        SUITE,
        "a history Bundle's total counts the whole history, not the page",
        bundle["total"] == 5 && first_page["total"] == 5,
        format!("{} and {}", bundle["total"], first_page["total"]),
    );
    let second_page = match bundle_link(&first_page, "next") {
        Some(next) => c.get(&next).send().await.json().unwrap_or_default(),
        None => Value::Null,
    };
    report.check(
        SUITE,
        "a later page carries the total the first page counted",
        second_page["total"] == 5,
        format!("{}", second_page["total"]),
    );

    // _since and _at.
    let since = &stamps[2];
    let since_versions = versions_at(
        c,
        &format!("Patient/{id}/_history?_since={}", encode(since)),
    )
    .await;
    report.check(
        SUITE,
        "_since keeps versions updated at or after the instant",
        since_versions == ["5", "4", "3"],
        format!("_since={since}: {since_versions:?}"),
    );
    let at = &stamps[1];
    let at_versions = versions_at(c, &format!("Patient/{id}/_history?_at={}", encode(at))).await;
    report.check(
        SUITE,
        "_at keeps the version current at that instant",
        at_versions == ["2"],
        format!("_at={at}: {at_versions:?}"),
    );
    let bad_since = c
        .get(&format!("Patient/{id}/_history?_since=yesterday"))
        .send()
        .await;
    report.check(
        SUITE,
        "an invalid _since is 400 OperationOutcome",
        bad_since.status == 400 && bad_since.is_outcome(),
        bad_since.summary(),
    );
    let multibyte_since = c
        .get(&format!(
            "Patient/{id}/_history?_since=2020-01-01T00%3A00%3A0%C3%A9Z"
        ))
        .send()
        .await;
    report.check(
        SUITE,
        "a _since with a multi-byte character among its seconds is 400 OperationOutcome",
        multibyte_since.status == 400 && multibyte_since.is_outcome(),
        multibyte_since.summary(),
    );
    let first_link = bundle_link(&first_page, "first");
    let back_to_first = match &first_link {
        Some(url) => versions_at(c, url).await,
        None => Vec::new(),
    };
    report.check(
        SUITE,
        "the first link leads back to the first page",
        back_to_first == ["5", "4"],
        format!("{first_link:?}: {back_to_first:?}"),
    );

    // Type and system level.
    let type_level = follow_pages(
        c,
        &format!("Patient/_history?_since={}", encode(&stamps[0])),
    )
    .await;
    report.check(
        SUITE,
        "type history holds every version of the resource",
        type_level.iter().filter(|e| entry_id(e) == id).count() == 5,
        format!("{} entries", type_level.len()),
    );
    let system = follow_pages(
        c,
        &format!("_history?_since={}&_count=100", encode(&stamps[0])),
    )
    .await;
    report.check(
        SUITE,
        "system history holds every version of the resource",
        system.iter().filter(|e| entry_id(e) == id).count() == 5,
        format!("{} entries", system.len()),
    );
    for (level, path) in [
        (
            "type",
            format!("Patient/_history?_at={}&_count=1000", encode(at)),
        ),
        ("system", format!("_history?_at={}&_count=1000", encode(at))),
    ] {
        let versions: Vec<String> = follow_pages(c, &path)
            .await
            .iter()
            .filter(|e| entry_id(e) == id)
            .map(entry_version)
            .collect();
        report.check(
            SUITE,
            format!("_at at {level} level keeps the version current at that instant"),
            versions == ["2"],
            format!("{versions:?}"),
        );
    }
    let unknown = c.get("Patient/never-created-here/_history").send().await;
    report.check(
        SUITE,
        "history of an unknown resource is 404",
        unknown.status == 404 && unknown.is_outcome(),
        unknown.summary(),
    );
}

fn encode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

/// The version ids of the entries of one history page.
async fn versions_at(c: &Client, path: &str) -> Vec<String> {
    let bundle = c.get(path).send().await.json().unwrap_or_default();
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    entries.iter().map(entry_version).collect()
}

fn entry_version(entry: &Value) -> String {
    let etag = entry["response"]["etag"].as_str().unwrap_or_default();
    etag.trim_start_matches("W/").trim_matches('"').to_owned()
}

fn entry_id(entry: &Value) -> String {
    entry["fullUrl"]
        .as_str()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// All entries reached from `path` by following `next` links (at most 100 pages).
async fn follow_pages(c: &Client, path: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    let mut next = Some(path.to_owned());
    for _ in 0..100 {
        let Some(url) = next.take() else { break };
        let bundle = c.get(&url).send().await.json().unwrap_or_default();
        entries.extend(bundle["entry"].as_array().cloned().unwrap_or_default());
        next = bundle_link(&bundle, "next");
    }
    entries
}
