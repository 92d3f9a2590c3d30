//! Tests of the parent module.

use super::*;

fn check(query: &str) -> Result<SearchRequest, QueryError> {
    let pairs: Vec<(String, String)> = form_pairs(query);
    parse(
        Registry::r4(),
        ResourceType::parse("Observation").ok(),
        &pairs,
        Strictness::Strict,
    )
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (p.to_owned(), String::new()),
        })
        .collect()
}

#[test]
fn parses_tokens_dates_numbers_and_quantities() {
    let r = check("code=http://loinc.org|8480-6,|x,sys|&date=ge2020-01&value-quantity=lt5.40|http://unitsofmeasure.org|mmol/L").unwrap();
    assert_eq!(r.criteria.len(), 3);
    let Criterion::Param { values, .. } = &r.criteria[0] else {
        panic!()
    };
    assert_eq!(
        values[0],
        SearchValue::Token {
            system: TokenSystem::Is("http://loinc.org".into()),
            code: Some("8480-6".into())
        }
    );
    assert_eq!(
        values[1],
        SearchValue::Token {
            system: TokenSystem::None,
            code: Some("x".into())
        }
    );
    assert_eq!(
        values[2],
        SearchValue::Token {
            system: TokenSystem::Is("sys".into()),
            code: None
        }
    );
    let Criterion::Param { values, .. } = &r.criteria[2] else {
        panic!()
    };
    let SearchValue::Number {
        prefix,
        lo,
        hi,
        code,
        ..
    } = &values[0]
    else {
        panic!()
    };
    assert_eq!(*prefix, Prefix::Lt);
    assert!((lo - 5.395).abs() < 1e-9 && (hi - 5.405).abs() < 1e-9 && *hi < 5.405);
    assert_eq!(code.as_deref(), Some("mmol/L"));
}

#[test]
fn refuses_malformed_values_of_known_parameters() {
    for bad in [
        "date=2020-13-45",
        "date=gt",
        "value-quantity=big",
        "_count=-1",
        "code=a|b|c",
        "code:in=http://vs",
        "subject:Nope=1",
        "_summary=maybe",
        "code=",
    ] {
        assert!(
            matches!(check(bad), Err(QueryError::Invalid(_))),
            "{bad}: {:?}",
            check(bad)
        );
    }
}

#[test]
fn unknown_parameters_depend_on_the_handling() {
    assert!(matches!(
        check("nonsense=1"),
        Err(QueryError::Unsupported(_))
    ));
    let lenient = parse(
        Registry::r4(),
        ResourceType::parse("Observation").ok(),
        &form_pairs("nonsense=1&_totalMethod=count&code=x&_format=json"),
        Strictness::Lenient,
    )
    .unwrap();
    assert_eq!(lenient.ignored.len(), 2);
    assert_eq!(lenient.criteria.len(), 1);
    assert_eq!(lenient.accepted, [("code".to_owned(), "x".to_owned())]);
}

#[test]
fn parses_chains_and_has() {
    let r = check("subject:Patient.name=peter&_has:DiagnosticReport:result:code=x").unwrap();
    assert!(matches!(
        &r.criteria[0],
        Criterion::Chain { reference, targets, .. } if reference == "subject" && targets == &["Patient"]
    ));
    assert!(
        matches!(&r.criteria[1], Criterion::Has { source, .. } if source == "DiagnosticReport")
    );
    assert!(matches!(
        check("subject.subject.subject.subject.subject.name=x"),
        Err(QueryError::TooCostly(_)) | Err(QueryError::Unsupported(_))
    ));
}

#[test]
fn escapes_and_precision() {
    assert_eq!(split_escaped(r"a\,b,c", ','), ["a,b", "c"]);
    assert_eq!(split_escaped(r"a\|b|c", '|'), ["a|b", "c"]);
    let (_, lo, hi) = decimal_range("100").unwrap();
    assert_eq!((lo, hi), (99.5, 100.5f64.next_down()));
    let (_, lo, hi) = decimal_range("1e2").unwrap();
    assert_eq!(
        (lo, hi),
        (50.0, 150f64.next_down()),
        "one significant figure"
    );
    assert!(decimal_range("1x").is_none() && decimal_range("").is_none());
    let (lo, hi) = date_period("2020-01-01T10:00").unwrap();
    assert_eq!(hi - lo, 59_999.0);
    let many = vec!["x"; MAX_VALUES + 1].join(",");
    assert!(matches!(
        check(&format!("code={many}")),
        Err(QueryError::TooCostly(_))
    ));
}
