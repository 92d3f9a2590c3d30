//! The subset of FHIRPath the search-parameter expressions use for extraction: paths (with
//! choice elements: `Observation.value` finds `valueQuantity`), unions (`|`), grouping,
//! `as T` / `.as(T)` / `.ofType(T)`, `.where(resolve() is T)` on references,
//! `.where(child = 'literal')`, indexing (`entry[0]`), `.extension('url')`, `.exists()`,
//! `=` / `!=` against a literal, `and`, `%resource`, and paths relative to a focus (the
//! components of a composite parameter). Every one of the 1,372 official R4 expressions, and
//! the composite components, compiles.
//!
//! An expression outside the subset fails to compile, so a parameter is either extracted
//! correctly or not offered at all, never half-evaluated.
//!
//! Must not know about indexes or storage: it maps a resource to the nodes an expression selects.

use crate::fhir::definitions::Definitions;
use crate::fhir::json::Json;

/// A compiled expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Navigation from a starting point.
    Path {
        root: Root,
        steps: Vec<Step>,
    },
    Union(Vec<Expr>),
    /// `a and b`: true when both are true, false when either is false, else empty.
    And(Box<Expr>, Box<Expr>),
    /// `x.exists()`: true when `x` selects anything.
    Exists(Box<Expr>),
    /// `x = literal` (`equal`) or `x != literal`, on a single node.
    Compare {
        left: Box<Expr>,
        equal: bool,
        literal: Literal,
    },
}

/// Where a path starts.
#[derive(Clone, Debug, PartialEq)]
pub enum Root {
    /// A type name: the resource itself when it is of that type (or `Resource` /
    /// `DomainResource`), nothing otherwise.
    Type(String),
    /// `%resource`: the resource, whatever the focus.
    Resource,
    /// A path without a root (a composite's component): the focus.
    Focus,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Child(String),
    /// Keeps nodes of a FHIR type (`as`, `ofType`): decided by the choice key it came from.
    OfType(String),
    /// `where(resolve() is T)`: references whose target type is T.
    ResolvesTo(String),
    /// `where(child = 'literal')`.
    WhereEquals(String, String),
    /// `[n]`: the n-th node.
    Index(usize),
    /// `.extension('url')`: extensions with that url.
    Extension(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    String(String),
    Bool(bool),
}

/// One node an expression selected, with the FHIR type its JSON key revealed (choice elements).
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    pub value: &'a Json,
    pub type_hint: Option<&'a str>,
}

static TRUE: Json = Json::Bool(true);
static FALSE: Json = Json::Bool(false);

fn boolean(value: bool) -> Node<'static> {
    Node {
        value: if value { &TRUE } else { &FALSE },
        type_hint: Some("boolean"),
    }
}

/// Compiles an expression rooted at a type (or `%resource`).
pub fn compile(text: &str) -> Result<Expr, String> {
    compile_with(text, false)
}

/// Compiles an expression relative to a focus (a composite parameter's component).
pub fn compile_relative(text: &str) -> Result<Expr, String> {
    compile_with(text, true)
}

fn compile_with(text: &str, relative: bool) -> Result<Expr, String> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        relative,
        depth: 0,
    };
    let expr = parser.and()?;
    if parser.pos != parser.tokens.len() {
        return Err(format!("unsupported FHIRPath near token {}", parser.pos));
    }
    Ok(expr)
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Number(usize),
    Dot,
    Pipe,
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Equals,
    NotEquals,
    Percent,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let single = match c {
            '.' => Some(Token::Dot),
            '|' => Some(Token::Pipe),
            '(' => Some(Token::Open),
            ')' => Some(Token::Close),
            '[' => Some(Token::OpenBracket),
            ']' => Some(Token::CloseBracket),
            '=' => Some(Token::Equals),
            '%' => Some(Token::Percent),
            _ => None,
        };
        if let Some(token) = single {
            tokens.push(token);
            i += 1;
            continue;
        }
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '!' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(Token::NotEquals);
                i += 2;
            }
            '\'' => {
                let start = i + 1;
                let end = chars[start..]
                    .iter()
                    .position(|&c| c == '\'')
                    .ok_or("unterminated string")?;
                tokens.push(Token::Str(chars[start..start + end].iter().collect()));
                i = start + end + 1;
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let digits: String = chars[start..i].iter().collect();
                let number = digits.parse().map_err(|_| "a number too large")?;
                tokens.push(Token::Number(number));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unsupported FHIRPath character '{other}'")),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    relative: bool,
    /// Parentheses open at `pos`.
    depth: usize,
}

/// Deepest nesting of parentheses accepted (the official expressions nest two deep).
const MAX_NESTING: usize = 32;

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, token: &Token) -> Result<(), String> {
        match self.next() {
            Some(ref t) if t == token => Ok(()),
            other => Err(format!("expected {token:?}, found {other:?}")),
        }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(name)) => Ok(name),
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    /// `a and b and …`
    fn and(&mut self) -> Result<Expr, String> {
        let mut expr = self.equality()?;
        while matches!(self.peek(), Some(Token::Ident(word)) if word == "and") {
            self.pos += 1;
            let right = self.equality()?;
            expr = Expr::And(Box::new(expr), Box::new(right));
        }
        Ok(expr)
    }

    /// `union (= | !=) literal`
    fn equality(&mut self) -> Result<Expr, String> {
        let left = self.union()?;
        let equal = match self.peek() {
            Some(Token::Equals) => true,
            Some(Token::NotEquals) => false,
            _ => return Ok(left),
        };
        self.pos += 1;
        let literal = match self.next() {
            Some(Token::Str(text)) => Literal::String(text),
            Some(Token::Ident(word)) if word == "true" => Literal::Bool(true),
            Some(Token::Ident(word)) if word == "false" => Literal::Bool(false),
            other => return Err(format!("unsupported comparison with {other:?}")),
        };
        Ok(Expr::Compare {
            left: Box::new(left),
            equal,
            literal,
        })
    }

    fn union(&mut self) -> Result<Expr, String> {
        let mut branches = vec![self.term()?];
        while self.peek() == Some(&Token::Pipe) {
            self.pos += 1;
            branches.push(self.term()?);
        }
        Ok(if branches.len() == 1 {
            branches.pop().unwrap_or(Expr::Union(Vec::new()))
        } else {
            Expr::Union(branches)
        })
    }

    /// A path, a parenthesised expression, either possibly followed by `as T`, `[n]` or more
    /// steps.
    fn term(&mut self) -> Result<Expr, String> {
        let mut expr = match self.peek() {
            Some(Token::Open) => {
                if self.depth >= MAX_NESTING {
                    return Err("FHIRPath nested too deeply".into());
                }
                self.pos += 1;
                self.depth += 1;
                let inner = self.and()?;
                self.expect(&Token::Close)?;
                self.depth -= 1;
                inner
            }
            Some(Token::Percent) => {
                self.pos += 1;
                match self.ident()?.as_str() {
                    "resource" => Expr::Path {
                        root: Root::Resource,
                        steps: Vec::new(),
                    },
                    other => return Err(format!("unsupported FHIRPath variable %{other}")),
                }
            }
            _ => {
                let first = self.ident()?;
                if self.relative {
                    let step = self.function_or_child(first)?;
                    Expr::Path {
                        root: Root::Focus,
                        steps: vec![step],
                    }
                } else if first.starts_with(|c: char| c.is_ascii_lowercase()) {
                    // Type names start upper-case; anything else is an element of the resource.
                    let step = self.function_or_child(first)?;
                    Expr::Path {
                        root: Root::Resource,
                        steps: vec![step],
                    }
                } else {
                    Expr::Path {
                        root: Root::Type(first),
                        steps: Vec::new(),
                    }
                }
            }
        };
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.pos += 1;
                    let name = self.ident()?;
                    if name == "exists" && self.peek() == Some(&Token::Open) {
                        self.pos += 1;
                        self.expect(&Token::Close)?;
                        expr = Expr::Exists(Box::new(expr));
                        continue;
                    }
                    let step = self.function_or_child(name)?;
                    expr = append(expr, step)?;
                }
                Some(Token::OpenBracket) => {
                    self.pos += 1;
                    let index = match self.next() {
                        Some(Token::Number(n)) => n,
                        other => return Err(format!("expected an index, found {other:?}")),
                    };
                    self.expect(&Token::CloseBracket)?;
                    expr = append(expr, Step::Index(index))?;
                }
                Some(Token::Ident(word)) if word == "as" => {
                    self.pos += 1;
                    let ty = self.ident()?;
                    expr = append(expr, Step::OfType(ty))?;
                }
                _ => return Ok(expr),
            }
        }
    }

    fn function_or_child(&mut self, name: String) -> Result<Step, String> {
        if self.peek() != Some(&Token::Open) {
            return Ok(Step::Child(name));
        }
        self.pos += 1;
        let step = match name.as_str() {
            "ofType" | "as" => Step::OfType(self.ident()?),
            "where" => self.where_criteria()?,
            "extension" => match self.next() {
                Some(Token::Str(url)) => Step::Extension(url),
                other => return Err(format!("extension() takes a url, not {other:?}")),
            },
            other => return Err(format!("unsupported FHIRPath function {other}()")),
        };
        self.expect(&Token::Close)?;
        Ok(step)
    }

    fn where_criteria(&mut self) -> Result<Step, String> {
        let first = self.ident()?;
        if first == "resolve" {
            self.expect(&Token::Open)?;
            self.expect(&Token::Close)?;
            match self.ident()?.as_str() {
                "is" => Ok(Step::ResolvesTo(self.ident()?)),
                other => Err(format!("unsupported resolve() {other}")),
            }
        } else {
            self.expect(&Token::Equals)?;
            match self.next() {
                Some(Token::Str(literal)) => Ok(Step::WhereEquals(first, literal)),
                other => Err(format!("unsupported where() comparison with {other:?}")),
            }
        }
    }
}

/// Adds a step after an expression (to every branch of a union).
fn append(expr: Expr, step: Step) -> Result<Expr, String> {
    Ok(match expr {
        Expr::Path { root, mut steps } => {
            steps.push(step);
            Expr::Path { root, steps }
        }
        Expr::Union(branches) => Expr::Union(
            branches
                .into_iter()
                .map(|b| append(b, step.clone()))
                .collect::<Result<_, _>>()?,
        ),
        other => return Err(format!("a step after a boolean expression: {other:?}")),
    })
}

impl Expr {
    /// The nodes this expression selects in `resource`.
    pub fn evaluate<'a>(&self, resource: &'a Json) -> Vec<Node<'a>> {
        let root = Node {
            value: resource,
            type_hint: None,
        };
        self.evaluate_at(resource, root)
    }

    /// The nodes this expression selects from `focus` (a relative expression), within
    /// `resource` (what `%resource` and a type root refer to).
    pub fn evaluate_at<'a>(&self, resource: &'a Json, focus: Node<'a>) -> Vec<Node<'a>> {
        let mut out = Vec::new();
        self.evaluate_into(resource, focus, &mut out);
        out
    }

    fn evaluate_into<'a>(&self, resource: &'a Json, focus: Node<'a>, out: &mut Vec<Node<'a>>) {
        match self {
            // `|` is a union: a value both branches select appears once.
            Expr::Union(branches) => {
                let start = out.len();
                for branch in branches {
                    let mut selected = Vec::new();
                    branch.evaluate_into(resource, focus, &mut selected);
                    for node in selected {
                        if !out[start..].iter().any(|seen| seen.value == node.value) {
                            out.push(node);
                        }
                    }
                }
            }
            Expr::Path { root, steps } => {
                let start = match root {
                    Root::Type(name) => {
                        let root_type = resource.get("resourceType").and_then(Json::as_str);
                        let matches = root_type == Some(name.as_str())
                            || name == "Resource"
                            || name == "DomainResource";
                        if !matches {
                            return;
                        }
                        Node {
                            value: resource,
                            type_hint: None,
                        }
                    }
                    Root::Resource => Node {
                        value: resource,
                        type_hint: None,
                    },
                    Root::Focus => focus,
                };
                let mut nodes = vec![start];
                for step in steps {
                    nodes = apply(step, nodes);
                    if nodes.is_empty() {
                        return;
                    }
                }
                out.extend(nodes);
            }
            Expr::Exists(inner) => {
                let found = !inner.evaluate_at(resource, focus).is_empty();
                out.push(boolean(found));
            }
            Expr::And(left, right) => {
                let truth = |e: &Expr| match e.evaluate_at(resource, focus).as_slice() {
                    [single] => match single.value {
                        Json::Bool(b) => Some(*b),
                        _ => None,
                    },
                    _ => None,
                };
                match (truth(left), truth(right)) {
                    (Some(false), _) | (_, Some(false)) => out.push(boolean(false)),
                    (Some(true), Some(true)) => out.push(boolean(true)),
                    _ => {}
                }
            }
            Expr::Compare {
                left,
                equal,
                literal,
            } => {
                let nodes = left.evaluate_at(resource, focus);
                let [single] = nodes.as_slice() else {
                    // A comparison of an empty or multi-node collection is empty.
                    return;
                };
                let same = match (single.value, literal) {
                    (Json::String(a), Literal::String(b)) => a == b,
                    (Json::Bool(a), Literal::Bool(b)) => a == b,
                    // Values of different types are never equal.
                    _ => false,
                };
                out.push(boolean(same == *equal));
            }
        }
    }
}

/// Whether a value of type `actual` (a choice suffix) is a `wanted` (`as`/`ofType`): FHIR's
/// specialisations count, so a `canonical` is a `uri` and an `Age` is a `Quantity`.
fn is_a(actual: &str, wanted: &str) -> bool {
    if actual.eq_ignore_ascii_case(wanted) {
        return true;
    }
    let parent = match actual {
        "Canonical" | "Url" | "Oid" | "Uuid" => "uri",
        "Code" | "Id" | "Markdown" => "string",
        "PositiveInt" | "UnsignedInt" => "integer",
        "Age" | "Count" | "Distance" | "Duration" => "Quantity",
        _ => return false,
    };
    parent.eq_ignore_ascii_case(wanted)
}

fn apply<'a>(step: &Step, nodes: Vec<Node<'a>>) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    match step {
        Step::Child(name) => {
            for node in nodes {
                let Some(object) = node.value.as_object() else {
                    continue;
                };
                for (key, value) in object.iter() {
                    let type_hint = if key == name {
                        None
                    } else if let Some(suffix) = key.strip_prefix(name.as_str())
                        && suffix.starts_with(|c: char| c.is_ascii_uppercase())
                        && Definitions::r4().is_choice_of(key, name)
                    {
                        Some(suffix)
                    } else {
                        continue;
                    };
                    match value {
                        Json::Array(items) => out.extend(items.iter().map(|v| Node {
                            value: v,
                            type_hint,
                        })),
                        single => out.push(Node {
                            value: single,
                            type_hint,
                        }),
                    }
                }
            }
        }
        Step::OfType(ty) => out.extend(
            nodes
                .into_iter()
                .filter(|n| n.type_hint.is_none_or(|hint| is_a(hint, ty))),
        ),
        Step::ResolvesTo(ty) => out.extend(nodes.into_iter().filter(|n| {
            n.value
                .get("reference")
                .and_then(Json::as_str)
                .and_then(reference_type)
                .is_some_and(|t| t == ty)
        })),
        Step::WhereEquals(child, literal) => out.extend(
            nodes
                .into_iter()
                .filter(|n| n.value.get(child).and_then(Json::as_str) == Some(literal.as_str())),
        ),
        Step::Index(index) => out.extend(nodes.into_iter().nth(*index)),
        Step::Extension(url) => {
            for node in nodes {
                let extensions = node.value.get("extension").and_then(Json::as_array);
                for extension in extensions.unwrap_or_default() {
                    if extension.get("url").and_then(Json::as_str) == Some(url.as_str()) {
                        out.push(Node {
                            value: extension,
                            type_hint: Some("Extension"),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The target type of a literal reference (`Patient/1`, `http://x/fhir/Patient/1/_history/2`).
pub fn reference_type(reference: &str) -> Option<&str> {
    let (ty, _) = reference_parts(reference)?;
    Some(ty)
}

/// The (type, id) of a literal reference, ignoring a base URL and a version.
pub fn reference_parts(reference: &str) -> Option<(&str, &str)> {
    let path = reference.split(['?', '#']).next()?;
    let path = match path.find("/_history/") {
        Some(at) => &path[..at],
        None => path,
    };
    let mut parts = path.rsplit('/');
    let id = parts.next()?;
    let ty = parts.next()?;
    let looks_like_type = ty.starts_with(|c: char| c.is_ascii_uppercase())
        && ty.bytes().all(|b| b.is_ascii_alphabetic());
    (looks_like_type && !id.is_empty()).then_some((ty, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::json;

    fn check(expression: &str, resource: &str, expected: &[&str]) {
        let resource = json::parse(resource.as_bytes()).unwrap();
        let expr = compile(expression).unwrap();
        let got: Vec<String> = expr
            .evaluate(&resource)
            .iter()
            .map(|n| String::from_utf8(n.value.to_bytes()).unwrap())
            .collect();
        assert_eq!(got, expected, "{expression}");
    }

    #[test]
    fn evaluates_the_official_expression_shapes() {
        let obs = r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Practitioner/d"},{"reference":"Patient/p2"}],"valueQuantity":{"value":1},"code":{"coding":[{"system":"s","code":"c"}]},"extension":[{"url":"u","valueString":"e"}]}"#;
        check(
            "Observation.subject.where(resolve() is Patient)",
            obs,
            &[r#"{"reference":"Patient/p1"}"#],
        );
        check(
            "Observation.performer.where(resolve() is Patient) | Encounter.subject",
            obs,
            &[r#"{"reference":"Patient/p2"}"#],
        );
        check("(Observation.value as Quantity)", obs, &[r#"{"value":1}"#]);
        check("Observation.value.ofType(CodeableConcept)", obs, &[]);
        check(
            "Observation.code.coding.where(system = 's').code",
            obs,
            &[r#""c""#],
        );
        check(
            "Observation.performer[1]",
            obs,
            &[r#"{"reference":"Patient/p2"}"#],
        );
        check("Observation.extension('u').value", obs, &[r#""e""#]);
        check("Patient.name", obs, &[]);
    }

    #[test]
    fn evaluates_the_boolean_expression_of_deceased() {
        let expression = "Patient.deceased.exists() and Patient.deceased != false";
        check(
            expression,
            r#"{"resourceType":"Patient","deceasedBoolean":true}"#,
            &["true"],
        );
        check(
            expression,
            r#"{"resourceType":"Patient","deceasedBoolean":false}"#,
            &["false"],
        );
        check(
            expression,
            r#"{"resourceType":"Patient","deceasedDateTime":"2015-02-14"}"#,
            &["true"],
        );
        check(expression, r#"{"resourceType":"Patient"}"#, &["false"]);
    }

    #[test]
    fn evaluates_relative_component_paths() {
        let obs = json::parse(br#"{"resourceType":"MolecularSequence","referenceSeq":{"chromosome":{"text":"1"}},"variant":[{"start":5,"end":9}]}"#).unwrap();
        let focus = compile("MolecularSequence.variant").unwrap().evaluate(&obs)[0];
        let chromosome = compile_relative("%resource.referenceSeq.chromosome").unwrap();
        assert_eq!(chromosome.evaluate_at(&obs, focus).len(), 1);
        let start = compile_relative("start").unwrap();
        assert_eq!(
            start.evaluate_at(&obs, focus)[0].value,
            &Json::Number("5".into())
        );
        assert!(compile_relative("value.as(Quantity) | value.as(Range)").is_ok());
    }

    #[test]
    fn every_official_expression_compiles() {
        let bundle: serde_json::Value =
            serde_json::from_str(include_str!("../../fhir-profiles/search-parameters.json"))
                .unwrap();
        let mut failures = Vec::new();
        for entry in bundle["entry"].as_array().unwrap() {
            let resource = &entry["resource"];
            if let Some(expression) = resource["expression"].as_str()
                && let Err(e) = compile(expression)
            {
                failures.push(format!("{}: {e}", resource["id"]));
            }
            for component in resource["component"].as_array().into_iter().flatten() {
                if let Some(expression) = component["expression"].as_str()
                    && let Err(e) = compile_relative(expression)
                {
                    failures.push(format!("{} component {expression}: {e}", resource["id"]));
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn refuses_what_it_cannot_evaluate_faithfully() {
        assert!(compile("Observation.component.count()").is_err());
        assert!(compile("Observation.value > 5").is_err());
        assert!(compile(&format!("{}Patient.name{}", "(".repeat(40), ")".repeat(40))).is_err());
    }

    #[test]
    fn splits_literal_references() {
        assert_eq!(reference_parts("Patient/1"), Some(("Patient", "1")));
        assert_eq!(
            reference_parts("http://x/fhir/Patient/1/_history/2"),
            Some(("Patient", "1"))
        );
        assert_eq!(reference_parts("#contained"), None);
        assert_eq!(reference_parts("urn:uuid:1234"), None);
    }
}
