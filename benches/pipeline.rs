//! Where a request's CPU time goes, step by step, on a realistic Observation (about 1 KB):
//! strict JSON parsing, R4 validation (both passes), compartment extraction, sealing and
//! opening, and CID computation. Run with `cargo bench --bench pipeline`.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};

use intellihealth::fhir::json;
use intellihealth::fhir::validate::{Handling, validate};
use intellihealth::index::embedded::EmbeddedIndex;
use intellihealth::search::compartment::patient_compartment;
use intellihealth::vault::cid::cid_of;
use intellihealth::vault::{MasterKey, Vault, aad_for};

const OBSERVATION: &str = r#"{"resourceType":"Observation","id":"bench","meta":{"versionId":"1","lastUpdated":"2024-01-01T00:00:00.000Z"},"status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"Vital Signs"}]}],"code":{"coding":[{"system":"http://loinc.org","code":"85354-9","display":"Blood pressure panel with all children optional"}],"text":"Blood pressure"},"subject":{"reference":"Patient/p1"},"encounter":{"reference":"Encounter/e1"},"effectiveDateTime":"2024-01-01T09:30:00+01:00","issued":"2024-01-01T09:35:00.000+01:00","performer":[{"reference":"Practitioner/d1"}],"component":[{"code":{"coding":[{"system":"http://loinc.org","code":"8480-6","display":"Systolic blood pressure"}]},"valueQuantity":{"value":120.0,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},{"code":{"coding":[{"system":"http://loinc.org","code":"8462-4","display":"Diastolic blood pressure"}]},"valueQuantity":{"value":80.0,"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}]}"#;

fn pipeline(c: &mut Criterion) {
    let resource = json::parse(OBSERVATION.as_bytes()).unwrap();
    let bytes = resource.to_bytes();
    c.bench_function("parse strict JSON", |b| {
        b.iter(|| json::parse(OBSERVATION.as_bytes()).unwrap())
    });
    c.bench_function("serialise compact JSON", |b| b.iter(|| resource.to_bytes()));
    c.bench_function("validate (R4 structure + R4B typed pass)", |b| {
        b.iter(|| validate(&resource, Handling::Strict).unwrap())
    });
    c.bench_function("patient compartment", |b| {
        b.iter(|| patient_compartment("Observation", "bench", &resource))
    });
    c.bench_function("CID of the sealed blob", |b| b.iter(|| cid_of(&bytes)));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(
        EmbeddedIndex::open(
            dir.path(),
            intellihealth::index::embedded::AtRestKey::from_bytes([5; 32]),
        )
        .unwrap(),
    );
    let vault = Vault::new(MasterKey::from_bytes([1; 32]), index);
    let aad = aad_for("Observation", "bench", 1);
    let sealed = runtime
        .block_on(vault.seal("Patient/p1", &aad, Arc::new(bytes.clone())))
        .unwrap();
    c.bench_function("seal (XChaCha20-Poly1305 + HMAC digest)", |b| {
        b.iter(|| {
            runtime
                .block_on(vault.seal("Patient/p1", &aad, Arc::new(bytes.clone())))
                .unwrap()
        })
    });
    c.bench_function("open (AEAD + digest check)", |b| {
        b.iter(|| {
            runtime
                .block_on(vault.open(
                    "Patient/p1",
                    &aad,
                    sealed.envelope.clone(),
                    Some(&sealed.digest),
                ))
                .unwrap()
        })
    });
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
