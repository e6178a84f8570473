//! The rule condition language: a small, total, side-effect-free expression language over
//! check results, type-checked when the policy is compiled.
//!
//! Why not a general-purpose language (CEL and friends): conditions must be rejected at load
//! time with the column of the mistake when they name a check the policy does not have, and
//! evaluating one must cost well under a microsecond on the gateway's hot path. A compiled
//! tree over indexed check slots gives both.
//!
//! Grammar (lowest precedence first):
//! ```text
//! expr    := or
//! or      := and (("||" | "or") and)*
//! and     := not (("&&" | "and") not)*
//! not     := ("!" | "not") not | cmp
//! cmp     := primary (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in") primary)?
//! primary := number | string | "true" | "false" | list | "(" expr ")"
//!          | ident "(" args ")" | ident ("." ident)?
//! list    := "[" (expr ("," expr)*)? "]"
//! ```
//! Names: `CHECK` (same as `CHECK.hit`), `CHECK.score`, `CHECK.hit`, `CHECK.count`,
//! `CHECK.kinds`, `CHECK.error`, and the context strings `phase`, `app`, `model`.
//! Functions: `has_any(list, list)`, `len(list)`.

use std::fmt;

/// A parse or type error with the byte offset in the expression where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Byte offset into the expression source.
    pub offset: usize,
    /// What is wrong, in the policy author's terms.
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at column {} of the condition)", self.message, self.offset + 1)
    }
}

impl std::error::Error for ExprError {}

/// The static type of a sub-expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// `true` / `false`.
    Bool,
    /// A 64-bit float.
    Num,
    /// A string.
    Str,
    /// A list of strings.
    List,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Bool => "boolean",
            Type::Num => "number",
            Type::Str => "string",
            Type::List => "list",
        })
    }
}

/// A check's field that a condition can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// Score in [0, 1].
    Score,
    /// Whether the check hit.
    Hit,
    /// Number of findings.
    Count,
    /// Distinct finding kinds.
    Kinds,
    /// Whether the check failed to run.
    Error,
}

impl Field {
    fn parse(name: &str) -> Option<Field> {
        Some(match name {
            "score" => Field::Score,
            "hit" => Field::Hit,
            "count" => Field::Count,
            "kinds" => Field::Kinds,
            "error" => Field::Error,
            _ => return None,
        })
    }

    fn ty(self) -> Type {
        match self {
            Field::Score | Field::Count => Type::Num,
            Field::Hit | Field::Error => Type::Bool,
            Field::Kinds => Type::List,
        }
    }
}

/// A context value that is not a check result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextVar {
    /// `"input"` or `"output"`.
    Phase,
    /// The app of the client key.
    App,
    /// The requested model.
    Model,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A compiled, type-checked condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal boolean.
    Bool(bool),
    /// A literal number.
    Num(f64),
    /// A literal string.
    Str(String),
    /// A literal list of strings.
    List(Vec<String>),
    /// A check field, by the check's slot index in the policy.
    CheckField(usize, Field),
    /// A context variable.
    Context(ContextVar),
    /// Logical negation.
    Not(Box<Expr>),
    /// Short-circuit conjunction.
    And(Box<Expr>, Box<Expr>),
    /// Short-circuit disjunction.
    Or(Box<Expr>, Box<Expr>),
    /// Comparison of two values of the same type.
    Cmp(Box<Expr>, CmpOp, Box<Expr>),
    /// String membership in a list.
    In(Box<Expr>, Box<Expr>),
    /// True when the two lists share an element.
    HasAny(Box<Expr>, Box<Expr>),
    /// Length of a list.
    Len(Box<Expr>),
}

/// What a condition reads when it is evaluated: check values by slot, and the context.
pub trait Env {
    /// The value of `field` of the check in `slot`.
    fn check_num(&self, slot: usize, field: Field) -> f64;
    /// The boolean value of `field` of the check in `slot`.
    fn check_bool(&self, slot: usize, field: Field) -> bool;
    /// The kinds found by the check in `slot`.
    fn check_kinds(&self, slot: usize) -> &[String];
    /// A context variable.
    fn context(&self, var: ContextVar) -> &str;
}

/// A runtime value; only lists and strings borrow from the environment.
enum Value<'a> {
    Bool(bool),
    Num(f64),
    Str(&'a str),
    List(&'a [String]),
}

impl Expr {
    /// Evaluates the condition; type checking at compile time guarantees a boolean.
    pub fn eval_bool(&self, env: &dyn Env) -> bool {
        matches!(self.eval(env), Value::Bool(true))
    }

    fn eval<'a>(&'a self, env: &'a dyn Env) -> Value<'a> {
        match self {
            Expr::Bool(b) => Value::Bool(*b),
            Expr::Num(n) => Value::Num(*n),
            Expr::Str(s) => Value::Str(s),
            Expr::List(items) => Value::List(items),
            Expr::CheckField(slot, field) => match field.ty() {
                Type::Num => Value::Num(env.check_num(*slot, *field)),
                Type::Bool => Value::Bool(env.check_bool(*slot, *field)),
                Type::List | Type::Str => Value::List(env.check_kinds(*slot)),
            },
            Expr::Context(var) => Value::Str(env.context(*var)),
            Expr::Not(inner) => Value::Bool(!inner.eval_bool(env)),
            Expr::And(a, b) => Value::Bool(a.eval_bool(env) && b.eval_bool(env)),
            Expr::Or(a, b) => Value::Bool(a.eval_bool(env) || b.eval_bool(env)),
            Expr::Cmp(a, op, b) => Value::Bool(compare(a.eval(env), *op, b.eval(env))),
            Expr::In(needle, list) => match (needle.eval(env), list.eval(env)) {
                (Value::Str(s), Value::List(items)) => Value::Bool(items.iter().any(|item| item == s)),
                _ => Value::Bool(false),
            },
            Expr::HasAny(a, b) => match (a.eval(env), b.eval(env)) {
                (Value::List(a), Value::List(b)) => Value::Bool(a.iter().any(|x| b.contains(x))),
                _ => Value::Bool(false),
            },
            Expr::Len(list) => match list.eval(env) {
                Value::List(items) => Value::Num(items.len() as f64),
                _ => Value::Num(0.0),
            },
        }
    }

    /// Slots of every check the condition reads, in order of first appearance.
    pub fn referenced_checks(&self) -> Vec<usize> {
        let mut slots = Vec::new();
        self.collect_checks(&mut slots);
        slots
    }

    fn collect_checks(&self, out: &mut Vec<usize>) {
        match self {
            Expr::CheckField(slot, _) => {
                if !out.contains(slot) {
                    out.push(*slot);
                }
            }
            Expr::Not(a) | Expr::Len(a) => a.collect_checks(out),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(a, _, b) | Expr::In(a, b) | Expr::HasAny(a, b) => {
                a.collect_checks(out);
                b.collect_checks(out);
            }
            Expr::Bool(_) | Expr::Num(_) | Expr::Str(_) | Expr::List(_) | Expr::Context(_) => {}
        }
    }
}

fn compare(a: Value<'_>, op: CmpOp, b: Value<'_>) -> bool {
    match (a, b) {
        (Value::Num(a), Value::Num(b)) => match op {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        },
        (Value::Str(a), Value::Str(b)) => match op {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        },
        (Value::Bool(a), Value::Bool(b)) => match op {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            _ => false,
        },
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Num(f64),
    Str(String),
    Ident(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Not,
    And,
    Or,
    Cmp(CmpOp),
    In,
}

fn tokenize(src: &str) -> Result<Vec<(usize, Token)>, ExprError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let err = |offset: usize, message: String| ExprError { offset, message };
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let two = if i + 1 < bytes.len() { Some(bytes[i + 1]) } else { None };
        let token = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => Token::LParen,
            b')' => Token::RParen,
            b'[' => Token::LBracket,
            b']' => Token::RBracket,
            b',' => Token::Comma,
            b'.' if !two.is_some_and(|d| d.is_ascii_digit()) => Token::Dot,
            b'&' if two == Some(b'&') => {
                i += 1;
                Token::And
            }
            b'|' if two == Some(b'|') => {
                i += 1;
                Token::Or
            }
            b'=' if two == Some(b'=') => {
                i += 1;
                Token::Cmp(CmpOp::Eq)
            }
            b'!' if two == Some(b'=') => {
                i += 1;
                Token::Cmp(CmpOp::Ne)
            }
            b'!' => Token::Not,
            b'<' if two == Some(b'=') => {
                i += 1;
                Token::Cmp(CmpOp::Le)
            }
            b'<' => Token::Cmp(CmpOp::Lt),
            b'>' if two == Some(b'=') => {
                i += 1;
                Token::Cmp(CmpOp::Ge)
            }
            b'>' => Token::Cmp(CmpOp::Gt),
            b'\'' | b'"' => {
                let quote = c;
                let mut value = String::new();
                i += 1;
                loop {
                    let Some(ch) = src[i..].chars().next() else {
                        return Err(err(start, "unterminated string".into()));
                    };
                    if ch as u32 == quote as u32 {
                        break;
                    }
                    if ch == '\\' {
                        let escaped = src[i + 1..].chars().next();
                        match escaped {
                            Some(e @ ('\\' | '\'' | '"')) => {
                                value.push(e);
                                i += 2;
                                continue;
                            }
                            _ => return Err(err(i, "unknown escape (use \\\\, \\' or \\\")".into())),
                        }
                    }
                    value.push(ch);
                    i += ch.len_utf8();
                }
                Token::Str(value)
            }
            b'0'..=b'9' | b'.' => {
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
                    i += 1;
                }
                let text = &src[start..i];
                let value: f64 = text.parse().map_err(|_| err(start, format!("`{text}` is not a number")))?;
                tokens.push((start, Token::Num(value)));
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                let word = &src[start..i];
                let token = match word {
                    "and" => Token::And,
                    "or" => Token::Or,
                    "not" => Token::Not,
                    "in" => Token::In,
                    _ => Token::Ident(word.to_string()),
                };
                tokens.push((start, token));
                continue;
            }
            _ => {
                let ch = src[i..].chars().next().unwrap_or('?');
                return Err(err(start, format!("unexpected character `{ch}`")));
            }
        };
        i += 1;
        tokens.push((start, token));
    }
    Ok(tokens)
}

/// Resolves check names to slots while compiling.
pub trait Names {
    /// The slot of the check called `name`, if the policy has one.
    fn check_slot(&self, name: &str) -> Option<usize>;
    /// All check names, for "did you mean" messages.
    fn check_names(&self) -> Vec<String>;
}

struct Parser<'n> {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
    names: &'n dyn Names,
}

/// Parses and type-checks a condition; the result is always a boolean expression.
pub fn compile(src: &str, names: &dyn Names) -> Result<Expr, ExprError> {
    let tokens = tokenize(src)?;
    if tokens.is_empty() {
        return Err(ExprError { offset: 0, message: "the condition is empty".into() });
    }
    let mut parser = Parser { tokens, pos: 0, end: src.len(), names };
    let (expr, ty, offset) = parser.or()?;
    if let Some((at, token)) = parser.tokens.get(parser.pos) {
        return Err(ExprError { offset: *at, message: format!("unexpected {} after the condition", describe(token)) });
    }
    if ty != Type::Bool {
        return Err(ExprError { offset, message: format!("the condition must be a boolean, found a {ty}") });
    }
    Ok(expr)
}

fn describe(token: &Token) -> String {
    match token {
        Token::Num(n) => format!("number `{n}`"),
        Token::Str(s) => format!("string '{s}'"),
        Token::Ident(name) => format!("name `{name}`"),
        Token::LParen => "`(`".into(),
        Token::RParen => "`)`".into(),
        Token::LBracket => "`[`".into(),
        Token::RBracket => "`]`".into(),
        Token::Comma => "`,`".into(),
        Token::Dot => "`.`".into(),
        Token::Not => "`!`".into(),
        Token::And => "`&&`".into(),
        Token::Or => "`||`".into(),
        Token::Cmp(_) => "comparison".into(),
        Token::In => "`in`".into(),
    }
}

type Typed = (Expr, Type, usize);

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn offset(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(o, _)| *o)
    }

    fn error<T>(&self, message: String) -> Result<T, ExprError> {
        Err(ExprError { offset: self.offset(), message })
    }

    fn expect(&mut self, want: &Token, what: &str) -> Result<(), ExprError> {
        if self.peek() == Some(want) {
            self.pos += 1;
            Ok(())
        } else {
            let found = self.peek().map_or("the end of the condition".to_string(), describe);
            self.error(format!("expected {what}, found {found}"))
        }
    }

    fn require(ty: Type, want: Type, offset: usize, role: &str) -> Result<(), ExprError> {
        if ty == want {
            Ok(())
        } else {
            Err(ExprError { offset, message: format!("{role} must be a {want}, found a {ty}") })
        }
    }

    fn or(&mut self) -> Result<Typed, ExprError> {
        let (mut left, ty, offset) = self.and()?;
        if self.peek() != Some(&Token::Or) {
            return Ok((left, ty, offset));
        }
        Self::require(ty, Type::Bool, offset, "each side of `||`")?;
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            let (right, rty, roffset) = self.and()?;
            Self::require(rty, Type::Bool, roffset, "each side of `||`")?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok((left, Type::Bool, offset))
    }

    fn and(&mut self) -> Result<Typed, ExprError> {
        let (mut left, ty, offset) = self.not()?;
        if self.peek() != Some(&Token::And) {
            return Ok((left, ty, offset));
        }
        Self::require(ty, Type::Bool, offset, "each side of `&&`")?;
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            let (right, rty, roffset) = self.not()?;
            Self::require(rty, Type::Bool, roffset, "each side of `&&`")?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok((left, Type::Bool, offset))
    }

    fn not(&mut self) -> Result<Typed, ExprError> {
        if self.peek() == Some(&Token::Not) {
            let offset = self.offset();
            self.pos += 1;
            let (inner, ty, inner_offset) = self.not()?;
            Self::require(ty, Type::Bool, inner_offset, "the operand of `!`")?;
            return Ok((Expr::Not(Box::new(inner)), Type::Bool, offset));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Typed, ExprError> {
        let (left, lty, offset) = self.primary()?;
        match self.peek().cloned() {
            Some(Token::Cmp(op)) => {
                self.pos += 1;
                let (right, rty, roffset) = self.primary()?;
                if lty != rty {
                    return Err(ExprError { offset: roffset, message: format!("cannot compare a {lty} with a {rty}") });
                }
                if lty == Type::List {
                    return Err(ExprError {
                        offset,
                        message: "lists cannot be compared; use `in` or has_any()".into(),
                    });
                }
                if lty == Type::Bool && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                    return Err(ExprError { offset, message: "booleans can only be compared with == or !=".into() });
                }
                Ok((Expr::Cmp(Box::new(left), op, Box::new(right)), Type::Bool, offset))
            }
            Some(Token::In) => {
                self.pos += 1;
                let (right, rty, roffset) = self.primary()?;
                Self::require(lty, Type::Str, offset, "the left side of `in`")?;
                Self::require(rty, Type::List, roffset, "the right side of `in`")?;
                Ok((Expr::In(Box::new(left), Box::new(right)), Type::Bool, offset))
            }
            _ => Ok((left, lty, offset)),
        }
    }

    fn primary(&mut self) -> Result<Typed, ExprError> {
        let offset = self.offset();
        let Some(token) = self.peek().cloned() else {
            return self.error("the condition ends too early".into());
        };
        self.pos += 1;
        match token {
            Token::Num(n) => Ok((Expr::Num(n), Type::Num, offset)),
            Token::Str(s) => Ok((Expr::Str(s), Type::Str, offset)),
            Token::LParen => {
                let inner = self.or()?;
                self.expect(&Token::RParen, "`)`")?;
                Ok((inner.0, inner.1, offset))
            }
            Token::LBracket => {
                let mut items = Vec::new();
                if self.peek() != Some(&Token::RBracket) {
                    loop {
                        let item_offset = self.offset();
                        match self.peek().cloned() {
                            Some(Token::Str(s)) => {
                                self.pos += 1;
                                items.push(s);
                            }
                            _ => {
                                return Err(ExprError {
                                    offset: item_offset,
                                    message: "list items must be string literals".into(),
                                })
                            }
                        }
                        if self.peek() == Some(&Token::Comma) {
                            self.pos += 1;
                        } else {
                            break;
                        }
                    }
                }
                self.expect(&Token::RBracket, "`]`")?;
                Ok((Expr::List(items), Type::List, offset))
            }
            Token::Ident(name) => self.name(name, offset),
            other => Err(ExprError { offset, message: format!("unexpected {}", describe(&other)) }),
        }
    }

    fn name(&mut self, name: String, offset: usize) -> Result<Typed, ExprError> {
        match name.as_str() {
            "true" => return Ok((Expr::Bool(true), Type::Bool, offset)),
            "false" => return Ok((Expr::Bool(false), Type::Bool, offset)),
            "phase" => return Ok((Expr::Context(ContextVar::Phase), Type::Str, offset)),
            "app" => return Ok((Expr::Context(ContextVar::App), Type::Str, offset)),
            "model" => return Ok((Expr::Context(ContextVar::Model), Type::Str, offset)),
            _ => {}
        }
        if self.peek() == Some(&Token::LParen) {
            return self.call(&name, offset);
        }
        let Some(slot) = self.names.check_slot(&name) else {
            let known = self.names.check_names().join(", ");
            return Err(ExprError {
                offset,
                message: format!("unknown check `{name}` (this policy's checks: {known})"),
            });
        };
        if self.peek() != Some(&Token::Dot) {
            return Ok((Expr::CheckField(slot, Field::Hit), Type::Bool, offset));
        }
        self.pos += 1;
        let field_offset = self.offset();
        match self.peek().cloned() {
            Some(Token::Ident(field)) => {
                self.pos += 1;
                let Some(field) = Field::parse(&field) else {
                    return Err(ExprError {
                        offset: field_offset,
                        message: format!("unknown field `{field}` (use score, hit, count, kinds or error)"),
                    });
                };
                Ok((Expr::CheckField(slot, field), field.ty(), offset))
            }
            _ => self.error("expected a field name after `.`".into()),
        }
    }

    fn call(&mut self, name: &str, offset: usize) -> Result<Typed, ExprError> {
        self.expect(&Token::LParen, "`(`")?;
        let mut args = Vec::new();
        if self.peek() != Some(&Token::RParen) {
            loop {
                args.push(self.or()?);
                if self.peek() == Some(&Token::Comma) {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }
        self.expect(&Token::RParen, "`)`")?;
        let arity = |n: usize| -> Result<(), ExprError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(ExprError { offset, message: format!("{name}() takes {n} argument(s), found {}", args.len()) })
            }
        };
        match name {
            "has_any" => {
                arity(2)?;
                let mut it = args.into_iter();
                let (a, aty, aoff) =
                    it.next().ok_or_else(|| ExprError { offset, message: "missing argument".into() })?;
                let (b, bty, boff) =
                    it.next().ok_or_else(|| ExprError { offset, message: "missing argument".into() })?;
                Self::require(aty, Type::List, aoff, "the first argument of has_any()")?;
                Self::require(bty, Type::List, boff, "the second argument of has_any()")?;
                Ok((Expr::HasAny(Box::new(a), Box::new(b)), Type::Bool, offset))
            }
            "len" => {
                arity(1)?;
                let (a, aty, aoff) =
                    args.into_iter().next().ok_or_else(|| ExprError { offset, message: "missing argument".into() })?;
                Self::require(aty, Type::List, aoff, "the argument of len()")?;
                Ok((Expr::Len(Box::new(a)), Type::Num, offset))
            }
            other => Err(ExprError { offset, message: format!("unknown function `{other}` (use has_any or len)") }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct TestNames;
    impl Names for TestNames {
        fn check_slot(&self, name: &str) -> Option<usize> {
            ["pii", "injection", "length"].iter().position(|n| *n == name)
        }
        fn check_names(&self) -> Vec<String> {
            vec!["pii".into(), "injection".into(), "length".into()]
        }
    }

    struct TestEnv {
        scores: [f64; 3],
        kinds: [Vec<String>; 3],
        phase: &'static str,
    }
    impl Env for TestEnv {
        fn check_num(&self, slot: usize, field: Field) -> f64 {
            match field {
                Field::Score => self.scores[slot],
                Field::Count => self.kinds[slot].len() as f64,
                _ => 0.0,
            }
        }
        fn check_bool(&self, slot: usize, field: Field) -> bool {
            match field {
                Field::Hit => self.scores[slot] >= 0.5,
                _ => false,
            }
        }
        fn check_kinds(&self, slot: usize) -> &[String] {
            &self.kinds[slot]
        }
        fn context(&self, var: ContextVar) -> &str {
            match var {
                ContextVar::Phase => self.phase,
                ContextVar::App => "support",
                ContextVar::Model => "gpt",
            }
        }
    }

    fn env() -> TestEnv {
        TestEnv {
            scores: [1.0, 0.3, 0.0],
            kinds: [vec!["email".into(), "credit_card".into()], vec![], vec![]],
            phase: "input",
        }
    }

    fn eval(src: &str) -> bool {
        compile(src, &TestNames).unwrap().eval_bool(&env())
    }

    #[test]
    fn evaluates_fields_operators_and_functions() {
        assert!(eval("pii"));
        assert!(eval("pii.hit && !injection"));
        assert!(eval("injection.score >= 0.3 and injection.score < 0.31"));
        assert!(!eval("injection.score > 0.3"));
        assert!(eval("'credit_card' in pii.kinds"));
        assert!(!eval("'iban' in pii.kinds"));
        assert!(eval("has_any(pii.kinds, ['iban', 'email'])"));
        assert!(!eval("has_any(pii.kinds, ['iban'])"));
        assert!(eval("len(pii.kinds) == 2 && pii.count == 2"));
        assert!(eval("phase == 'input' && app == \"support\""));
        assert!(eval("injection || (pii && phase != 'output')"));
        assert!(eval("not injection or false"));
        assert!(eval("pii.hit == true"));
        assert!(!eval("length.error"));
    }

    #[test]
    fn precedence_of_and_over_or() {
        // false || (true && true) is true; (false || true) && false would be false.
        assert!(eval("injection || pii && pii"));
        assert!(!eval("(injection || pii) && injection"));
    }

    #[test]
    fn reports_errors_with_offsets() {
        let err = compile("pii.hit && secrets.hit", &TestNames).unwrap_err();
        assert_eq!(err.offset, 11);
        assert!(err.message.contains("unknown check `secrets`"), "{err}");
        let err = compile("pii.scor > 1", &TestNames).unwrap_err();
        assert_eq!(err.offset, 4);
        let err = compile("pii.score", &TestNames).unwrap_err();
        assert!(err.message.contains("must be a boolean"), "{err}");
        let err = compile("pii.score > 'x'", &TestNames).unwrap_err();
        assert!(err.message.contains("cannot compare a number with a string"), "{err}");
        let err = compile("pii &&", &TestNames).unwrap_err();
        assert_eq!(err.offset, 6);
        let err = compile("(pii", &TestNames).unwrap_err();
        assert!(err.message.contains("expected `)`"), "{err}");
        let err = compile("pii # x", &TestNames).unwrap_err();
        assert_eq!(err.offset, 4);
        let err = compile("'abc", &TestNames).unwrap_err();
        assert!(err.message.contains("unterminated"));
        assert!(compile("", &TestNames).is_err());
        assert!(compile("frob(pii)", &TestNames).is_err());
        assert!(compile("len(pii.kinds, pii.kinds) > 1", &TestNames).is_err());
        assert!(compile("pii pii", &TestNames).is_err());
    }

    #[test]
    fn lists_referenced_checks_once() {
        let expr = compile("pii && injection.score > 0.1 || pii.count > 2", &TestNames).unwrap();
        assert_eq!(expr.referenced_checks(), vec![0, 1]);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(src in ".{0,64}") {
            if let Ok(expr) = compile(&src, &TestNames) {
                let _ = expr.eval_bool(&env());
            }
        }

        #[test]
        fn error_offsets_stay_inside_the_source(src in "[a-z .()!&|<>=0-9'\\[\\],]{0,40}") {
            if let Err(err) = compile(&src, &TestNames) {
                prop_assert!(err.offset <= src.len());
            }
        }

        #[test]
        fn numeric_comparisons_agree_with_rust(a in 0.0f64..1.0, b in 0.0f64..1.0) {
            let src = format!("injection.score < {b}");
            let expr = compile(&src, &TestNames).unwrap();
            let mut e = env();
            e.scores[1] = a;
            let parsed: f64 = format!("{b}").parse().unwrap();
            prop_assert_eq!(expr.eval_bool(&e), a < parsed);
        }
    }
}
