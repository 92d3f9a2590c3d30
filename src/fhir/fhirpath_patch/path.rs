//! The paths of a FHIRPath Patch, compiled and evaluated as *locations*: where in the resource's
//! JSON each selected node is (members and array positions), so the patch can change it.
//!
//! The search room's FHIRPath (`search::fhirpath`) answers borrowed nodes, which cannot be
//! changed, and evaluates more than a patch may act on (unions, `resolve()`, `%resource`). So
//! this is a small locator of its own, for the forms FHIRPath Patch uses in practice:
//! `Type.elem.elem`, `elem[n]`, `.where(a = 'x' and b.c = true)`, `.first()`, `.last()`.
//! Anything else fails to compile, with the reason, before anything is changed.
//!
//! Nodes follow FHIRPath: an element that repeats contributes one node per item; a choice
//! element is found by its name (`Observation.value` finds `valueQuantity`); the type of each
//! node is known from R4's definitions, so a value given as parts can be shaped (`given` is an
//! array) and a choice can be re-keyed when its type changes.

use crate::fhir::definitions::{Definitions, ElementType, Owner};
use crate::fhir::json::Json;

/// A compiled path: a resource type, then steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Path {
    pub root: String,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Child(String),
    /// `[n]`: the n-th node so far (from 0).
    Index(usize),
    /// `.where(a = 'x' and b.c = 'y')`: the nodes whose relative paths each select exactly
    /// one value equal to the literal.
    Where(Vec<(Vec<String>, Literal)>),
    First,
    Last,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    String(String),
    Bool(bool),
    /// A number literal as written (compared by value).
    Number(String),
}

/// One move from a JSON value to one inside it.
#[derive(Clone, Debug, PartialEq)]
pub enum Seg {
    Key(String),
    Item(usize),
}

/// A node a path selected.
#[derive(Clone, Debug)]
pub struct Located {
    /// Where its value is, from the resource.
    pub at: Vec<Seg>,
    /// The element name FHIRPath reached it by (`value` for the key `valueQuantity`); `None`
    /// for the resource itself.
    pub name: Option<String>,
    /// Its R4 type, when the definitions know it.
    pub ty: Option<ElementType>,
}

impl Located {
    /// The JSON key the node is under (`valueQuantity`), and its array position if it is an
    /// item; `None` for the resource itself.
    pub fn key(&self) -> Option<(&str, Option<usize>)> {
        match self.at.as_slice() {
            [.., Seg::Key(key), Seg::Item(i)] => Some((key, Some(*i))),
            [.., Seg::Key(key)] => Some((key, None)),
            _ => None,
        }
    }

    /// Where the object holding the node's key is.
    pub fn parent(&self) -> &[Seg] {
        let drop = match self.at.last() {
            Some(Seg::Item(_)) => 2,
            Some(Seg::Key(_)) => 1,
            None => 0,
        };
        &self.at[..self.at.len().saturating_sub(drop)]
    }
}

/// Compiles a patch path.
pub fn compile(text: &str) -> Result<Path, String> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        pos: 0,
    };
    let root = parser.name()?;
    if !root.starts_with(|c: char| c.is_ascii_uppercase()) {
        return Err(format!(
            "the path must start with the resource type (Patient.{root}), not an element"
        ));
    }
    let mut steps = Vec::new();
    while let Some(token) = parser.next() {
        match token {
            Token::Dot => {
                let name = parser.name()?;
                if parser.peek() == Some(&Token::Open) {
                    parser.pos += 1;
                    steps.push(parser.function(&name)?);
                } else {
                    steps.push(Step::Child(name));
                }
            }
            Token::OpenBracket => {
                let Some(Token::Number(n)) = parser.next() else {
                    return Err("an index is [n], n a whole number".into());
                };
                let n = n
                    .parse()
                    .map_err(|_| "an index is [n], n a whole number".to_owned())?;
                parser.expect(&Token::CloseBracket)?;
                steps.push(Step::Index(n));
            }
            other => return Err(format!("unexpected {} in the path", other.describe())),
        }
    }
    Ok(Path { root, steps })
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Name(String),
    Str(String),
    Number(String),
    Dot,
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Equals,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Name(n) => format!("'{}'", preview(n)),
            Token::Str(_) => "a string".into(),
            Token::Number(n) => preview(n),
            Token::Dot => "'.'".into(),
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::OpenBracket => "'['".into(),
            Token::CloseBracket => "']'".into(),
            Token::Equals => "'='".into(),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        let token = match c {
            ' ' | '\t' | '\r' | '\n' => continue,
            '.' => Token::Dot,
            '(' => Token::Open,
            ')' => Token::Close,
            '[' => Token::OpenBracket,
            ']' => Token::CloseBracket,
            '=' => Token::Equals,
            '\'' => Token::Str(quoted(&chars, &mut i, '\'')?),
            '`' => Token::Name(quoted(&chars, &mut i, '`')?),
            c if c.is_ascii_digit() || c == '-' => {
                let start = i - 1;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_digit() || *c == '.')
                {
                    i += 1;
                }
                Token::Number(chars[start..i].iter().collect())
            }
            c if c.is_ascii_alphabetic() => {
                let start = i - 1;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
                Token::Name(chars[start..i].iter().collect())
            }
            other => {
                return Err(format!(
                    "'{other}' is not supported in a patch path (paths, [n], where(a = 'x'), \
                     first() and last() are)"
                ));
            }
        };
        tokens.push(token);
    }
    Ok(tokens)
}

/// A `'string'` or `` `name` `` with FHIRPath's escapes; `i` is just past the opening quote.
fn quoted(chars: &[char], i: &mut usize, quote: char) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let Some(&c) = chars.get(*i) else {
            return Err("an unterminated string in the path".into());
        };
        *i += 1;
        if c == quote {
            return Ok(out);
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let escaped = chars.get(*i).copied().unwrap_or(' ');
        *i += 1;
        out.push(match escaped {
            '\'' | '"' | '`' | '\\' | '/' => escaped,
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'f' => '\u{c}',
            'u' => {
                let hex: String = chars.iter().skip(*i).take(4).collect();
                *i += 4;
                u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or("an invalid \\u escape in the path")?
            }
            _ => return Err("an invalid escape in a string of the path".into()),
        });
    }
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
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn expect(&mut self, wanted: &Token) -> Result<(), String> {
        match self.next() {
            Some(ref token) if token == wanted => Ok(()),
            Some(other) => Err(format!(
                "expected {} but found {}",
                wanted.describe(),
                other.describe()
            )),
            None => Err(format!("the path ends where {} is due", wanted.describe())),
        }
    }

    fn name(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Name(name)) => Ok(name),
            Some(other) => Err(format!("expected a name but found {}", other.describe())),
            None => Err("the path ends where a name is due".into()),
        }
    }

    /// The function after `name(`.
    fn function(&mut self, name: &str) -> Result<Step, String> {
        let step = match name {
            "first" => Step::First,
            "last" => Step::Last,
            "where" => {
                let mut criteria = vec![self.criterion()?];
                while matches!(self.peek(), Some(Token::Name(word)) if word == "and") {
                    self.pos += 1;
                    criteria.push(self.criterion()?);
                }
                Step::Where(criteria)
            }
            other => {
                return Err(format!(
                    "{}() is not supported in a patch path (where(a = 'x'), first() and \
                     last() are)",
                    preview(other)
                ));
            }
        };
        self.expect(&Token::Close)?;
        Ok(step)
    }

    /// `a.b = literal`
    fn criterion(&mut self) -> Result<(Vec<String>, Literal), String> {
        let mut path = vec![self.name()?];
        while self.peek() == Some(&Token::Dot) {
            self.pos += 1;
            path.push(self.name()?);
        }
        self.expect(&Token::Equals)?;
        let literal = match self.next() {
            Some(Token::Str(text)) => Literal::String(text),
            Some(Token::Name(word)) if word == "true" => Literal::Bool(true),
            Some(Token::Name(word)) if word == "false" => Literal::Bool(false),
            Some(Token::Number(n)) if n.parse::<f64>().is_ok() => Literal::Number(n),
            _ => {
                return Err(
                    "where() compares an element with a literal: 'text', true, false or a \
                     number"
                        .into(),
                );
            }
        };
        Ok((path, literal))
    }
}

impl Path {
    /// The nodes the whole path selects in `resource`.
    pub fn select(&self, resource: &Json) -> Result<Vec<Located>, String> {
        self.select_through(resource, &self.steps)
    }

    /// For insert and move, whose path names a list: the path of the one element holding it,
    /// and the list's element name.
    pub fn list(&self) -> Result<(Path, &str), String> {
        match self.steps.split_last() {
            Some((Step::Child(name), before)) => Ok((
                Path {
                    root: self.root.clone(),
                    steps: before.to_vec(),
                },
                name,
            )),
            _ => {
                Err("the path must name a list: end in an element name (Patient.identifier)".into())
            }
        }
    }

    fn select_through(&self, resource: &Json, steps: &[Step]) -> Result<Vec<Located>, String> {
        let actual = resource.get("resourceType").and_then(Json::as_str);
        if actual != Some(self.root.as_str()) {
            return Err(format!(
                "the path starts at {} but the resource is a {}",
                preview(&self.root),
                actual.unwrap_or("resource without a type")
            ));
        }
        let mut nodes = vec![Located {
            at: Vec::new(),
            name: None,
            ty: Some(ElementType::Complex(self.root.clone())),
        }];
        for step in steps {
            nodes = match step {
                Step::Child(name) => {
                    let mut children = Vec::new();
                    for node in &nodes {
                        children.extend(children_of(resource, node, name)?);
                    }
                    children
                }
                Step::Index(n) => nodes.into_iter().nth(*n).into_iter().collect(),
                Step::First => nodes.into_iter().take(1).collect(),
                Step::Last => nodes.pop().into_iter().collect(),
                Step::Where(criteria) => {
                    let mut kept = Vec::new();
                    for node in nodes {
                        if satisfies(resource, &node, criteria)? {
                            kept.push(node);
                        }
                    }
                    kept
                }
            };
        }
        Ok(nodes)
    }
}

/// The owner (type or inline structure) whose elements a node of type `ty` with `value` has.
pub fn owner_of(ty: Option<&ElementType>, value: &Json) -> Option<&'static Owner> {
    let defs = Definitions::r4();
    match ty? {
        ElementType::Complex(name) => defs.owner(name),
        ElementType::Resource => defs.owner(value.get("resourceType")?.as_str()?),
        ElementType::Primitive(_) => None,
    }
}

/// The nodes of element `name` of `node`.
fn children_of(resource: &Json, node: &Located, name: &str) -> Result<Vec<Located>, String> {
    let value = get(resource, &node.at).unwrap_or(&Json::Null);
    let Some(object) = value.as_object() else {
        if matches!(name, "extension" | "id") {
            return Err(format!(
                "the path goes into the {name} of a primitive value, which a patch here cannot \
                 reach"
            ));
        }
        return Ok(Vec::new());
    };
    let owner = owner_of(node.ty.as_ref(), value);
    let mut out = Vec::new();
    for (key, member) in object.iter() {
        let ty = match owner {
            Some(owner) => match owner.lookup(key) {
                Some((element, ty)) if element.name == name => Some(ty.clone()),
                _ => continue,
            },
            None if key == name || Definitions::r4().is_choice_of(key, name) => None,
            None => continue,
        };
        let mut at = node.at.clone();
        at.push(Seg::Key(key.to_owned()));
        let located = |at: Vec<Seg>| Located {
            at,
            name: Some(name.to_owned()),
            ty: ty.clone(),
        };
        match member {
            Json::Array(items) => out.extend((0..items.len()).map(|i| {
                let mut at = at.clone();
                at.push(Seg::Item(i));
                located(at)
            })),
            _ => out.push(located(at)),
        }
    }
    Ok(out)
}

/// Whether every criterion of a `where()` holds for `node`.
fn satisfies(
    resource: &Json,
    node: &Located,
    criteria: &[(Vec<String>, Literal)],
) -> Result<bool, String> {
    for (path, literal) in criteria {
        let mut reached = vec![node.clone()];
        for name in path {
            let mut next = Vec::new();
            for n in &reached {
                next.extend(children_of(resource, n, name)?);
            }
            reached = next;
        }
        // FHIRPath's `=` on anything but one value is empty, which where() treats as false.
        let [one] = reached.as_slice() else {
            return Ok(false);
        };
        let equal = match (get(resource, &one.at), literal) {
            (Some(Json::String(a)), Literal::String(b)) => a == b,
            (Some(Json::Bool(a)), Literal::Bool(b)) => a == b,
            (Some(Json::Number(a)), Literal::Number(b)) => {
                a.parse::<f64>().ok() == b.parse::<f64>().ok()
            }
            _ => false,
        };
        if !equal {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The value at `at`.
pub fn get<'a>(root: &'a Json, at: &[Seg]) -> Option<&'a Json> {
    at.iter().try_fold(root, |value, seg| match (seg, value) {
        (Seg::Key(key), Json::Object(object)) => object.get(key),
        (Seg::Item(i), Json::Array(items)) => items.get(*i),
        _ => None,
    })
}

/// The value at `at`, to change.
pub fn get_mut<'a>(root: &'a mut Json, at: &[Seg]) -> Option<&'a mut Json> {
    at.iter().try_fold(root, |value, seg| match (seg, value) {
        (Seg::Key(key), Json::Object(object)) => object.get_mut(key),
        (Seg::Item(i), Json::Array(items)) => items.get_mut(*i),
        _ => None,
    })
}

pub fn preview(text: &str) -> String {
    text.chars().take(60).collect()
}
