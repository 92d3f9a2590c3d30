//! The subset of FHIRPath the official search-parameter expressions use for extraction:
//! paths (with choice elements: `Observation.value` finds `valueQuantity`), unions (`|`),
//! grouping, `as T` / `.as(T)` / `.ofType(T)`, `.where(resolve() is T)` on references, and
//! `.where(X = 'literal')`. An expression outside the subset fails to compile, so a parameter
//! is either extracted correctly or not offered at all, never half-evaluated.
//!
//! Must not know about indexes or storage: it maps a resource to the nodes an expression selects.

use crate::fhir::json::Json;

/// A compiled expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Navigates from the resource root; a leading type name must match the resource type.
    Path(Vec<Step>),
    Union(Vec<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The resource type at the start of a path.
    Root(String),
    Child(String),
    /// Keeps nodes of a FHIR type (`as`, `ofType`): decided by the choice key it came from.
    OfType(String),
    /// `where(resolve() is T)`: references whose target type is T.
    ResolvesTo(String),
    /// `where(child = 'literal')`.
    WhereEquals(String, String),
}

/// One node an expression selected, with the FHIR type its JSON key revealed (choice elements).
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    pub value: &'a Json,
    pub type_hint: Option<&'a str>,
}

pub fn compile(text: &str) -> Result<Expr, String> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, pos: 0 };
    let expr = parser.union()?;
    if parser.pos != parser.tokens.len() {
        return Err(format!("unsupported FHIRPath near token {}", parser.pos));
    }
    Ok(expr)
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Dot,
    Pipe,
    Open,
    Close,
    Equals,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '.' => {
                tokens.push(Token::Dot);
                i += 1;
            }
            '|' => {
                tokens.push(Token::Pipe);
                i += 1;
            }
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            '=' => {
                tokens.push(Token::Equals);
                i += 1;
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
}

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

    /// A path, a parenthesised union, either possibly followed by `as T` or more steps.
    fn term(&mut self) -> Result<Expr, String> {
        let mut expr = if self.peek() == Some(&Token::Open) {
            self.pos += 1;
            let inner = self.union()?;
            self.expect(&Token::Close)?;
            inner
        } else {
            let root = self.ident()?;
            Expr::Path(vec![Step::Root(root)])
        };
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.pos += 1;
                    let name = self.ident()?;
                    let step = self.function_or_child(name)?;
                    expr = append(expr, step)?;
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
        Expr::Path(mut steps) => {
            steps.push(step);
            Expr::Path(steps)
        }
        Expr::Union(branches) => Expr::Union(
            branches
                .into_iter()
                .map(|b| append(b, step.clone()))
                .collect::<Result<_, _>>()?,
        ),
    })
}

impl Expr {
    /// The nodes this expression selects in `resource`.
    pub fn evaluate<'a>(&self, resource: &'a Json) -> Vec<Node<'a>> {
        let mut out = Vec::new();
        self.evaluate_into(resource, &mut out);
        out
    }

    fn evaluate_into<'a>(&self, resource: &'a Json, out: &mut Vec<Node<'a>>) {
        match self {
            Expr::Union(branches) => {
                for branch in branches {
                    branch.evaluate_into(resource, out);
                }
            }
            Expr::Path(steps) => {
                let mut nodes = vec![Node {
                    value: resource,
                    type_hint: None,
                }];
                for step in steps {
                    nodes = apply(step, nodes, resource);
                    if nodes.is_empty() {
                        return;
                    }
                }
                out.extend(nodes);
            }
        }
    }
}

fn apply<'a>(step: &Step, nodes: Vec<Node<'a>>, resource: &'a Json) -> Vec<Node<'a>> {
    let mut out = Vec::new();
    match step {
        Step::Root(name) => {
            let root_type = resource.get("resourceType").and_then(Json::as_str);
            if root_type == Some(name.as_str()) || name == "Resource" || name == "DomainResource" {
                return nodes;
            }
        }
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
                .filter(|n| n.type_hint.is_none_or(|hint| hint.eq_ignore_ascii_case(ty))),
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
        let obs = r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Practitioner/d"},{"reference":"Patient/p2"}],"valueQuantity":{"value":1},"code":{"coding":[{"system":"s","code":"c"}]}}"#;
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
        check("Patient.name", obs, &[]);
    }

    #[test]
    fn refuses_what_it_cannot_evaluate_faithfully() {
        assert!(compile("Observation.component.exists()").is_err());
        assert!(compile("Patient.deceased.exists() and Patient.deceased != false").is_err());
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
