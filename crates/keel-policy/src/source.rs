//! Error locations in TOML files people write (policies, `keel.toml`): every error names the
//! file, the line and column, and the field, so the author can go straight to the mistake.

use std::fmt;
use std::ops::Range;

use serde::de::DeserializeOwned;
use toml_edit::{ImDocument, Item, Value};

/// One step of a path into a TOML document: a key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    /// A table key.
    Key(String),
    /// An array (or array of tables) index.
    Index(usize),
}

/// A path such as `checks[2].patterns[0].pattern`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<PathSegment>);

impl FieldPath {
    /// A path starting at a top-level key.
    pub fn key(name: &str) -> Self {
        FieldPath(vec![PathSegment::Key(name.to_string())])
    }

    /// This path extended by a key.
    pub fn field(&self, name: &str) -> Self {
        let mut path = self.clone();
        path.0.push(PathSegment::Key(name.to_string()));
        path
    }

    /// This path extended by an index.
    pub fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(PathSegment::Index(index));
        path
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                PathSegment::Key(key) if i == 0 => write!(f, "{key}")?,
                PathSegment::Key(key) => write!(f, ".{key}")?,
                PathSegment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// An error located in a source file: `file:line:column: field: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The field, when known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for SourceError {}

/// A parsed TOML source that can locate fields for error messages.
pub struct TomlSource<'a> {
    file: String,
    text: &'a str,
    document: Option<ImDocument<&'a str>>,
}

impl<'a> TomlSource<'a> {
    /// Wraps `text`, read from `file`.
    pub fn new(file: impl Into<String>, text: &'a str) -> Self {
        TomlSource { file: file.into(), text, document: ImDocument::parse(text).ok() }
    }

    /// The file name given at construction.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Deserializes the whole file, turning syntax and type errors into located errors.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, SourceError> {
        toml::from_str(self.text).map_err(|err| {
            let (line, column) = match err.span() {
                Some(span) => {
                    let (l, c) = self.line_column(span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            SourceError {
                file: self.file.clone(),
                line,
                column,
                field: None,
                message: err.message().trim().to_string(),
            }
        })
    }

    /// An error about `path`, located at that field (or the nearest enclosing one found).
    pub fn error_at(&self, path: &FieldPath, message: impl Into<String>) -> SourceError {
        self.error_at_offset(path, 0, message)
    }

    /// Like [`Self::error_at`], `offset` bytes into the field's string value (for conditions).
    pub fn error_at_offset(&self, path: &FieldPath, offset: usize, message: impl Into<String>) -> SourceError {
        let (line, column) = match self.span_of(path) {
            Some(span) => {
                // Point inside a basic/literal string value: skip the opening quote.
                let inner = if self.text[span.clone()].starts_with(['"', '\'']) { 1 } else { 0 };
                let at = if offset > 0 { span.start + inner + offset } else { span.start };
                let (l, c) = self.line_column(at.min(self.text.len()));
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        SourceError { file: self.file.clone(), line, column, field: Some(path.to_string()), message: message.into() }
    }

    fn line_column(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// The byte span of the deepest part of `path` that exists in the document.
    fn span_of(&self, path: &FieldPath) -> Option<Range<usize>> {
        let document = self.document.as_ref()?;
        let mut node = Node::Item(document.as_item());
        let mut best = None;
        for segment in &path.0 {
            let Some(next) = node.step(segment) else { break };
            if let Some(span) = next.span() {
                best = Some(span);
            }
            node = next;
        }
        best
    }
}

/// A position in a TOML document while following a path.
#[derive(Clone, Copy)]
enum Node<'n> {
    Item(&'n Item),
    Table(&'n toml_edit::Table),
    Value(&'n Value),
}

impl<'n> Node<'n> {
    fn step(self, segment: &PathSegment) -> Option<Node<'n>> {
        match (self, segment) {
            (Node::Item(Item::ArrayOfTables(tables)), PathSegment::Index(i)) => tables.get(*i).map(Node::Table),
            (Node::Item(Item::Value(value)), _) => Node::Value(value).step(segment),
            (Node::Item(item), PathSegment::Key(key)) => item.as_table_like().and_then(|t| t.get(key)).map(Node::Item),
            (Node::Table(table), PathSegment::Key(key)) => table.get(key).map(Node::Item),
            (Node::Value(Value::InlineTable(table)), PathSegment::Key(key)) => table.get(key).map(Node::Value),
            (Node::Value(Value::Array(array)), PathSegment::Index(i)) => array.get(*i).map(Node::Value),
            _ => None,
        }
    }

    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(item) => item.span(),
            Node::Table(table) => table.span(),
            Node::Value(value) => value.span(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "name = \"x\"\n\n[[checks]]\nname = \"a\"\n\n[[checks]]\nname = \"b\"\npatterns = [{ kind = \"k\", pattern = \"(\" }]\n";

    #[test]
    fn locates_fields_inside_arrays_of_tables() {
        let source = TomlSource::new("p.toml", SRC);
        let path = FieldPath::key("checks").index(1).field("patterns").index(0).field("pattern");
        let err = source.error_at(&path, "bad regex");
        assert_eq!(err.line, Some(8));
        assert_eq!(
            err.to_string(),
            format!(
                "p.toml:8:{}: checks[1].patterns[0].pattern: bad regex",
                SRC.lines().nth(7).unwrap().find("\"(\"").unwrap() + 1
            )
        );
        let err = source.error_at(&FieldPath::key("checks").index(0).field("name"), "dup");
        assert_eq!(err.line, Some(4));
        let err = source.error_at(&FieldPath::key("name"), "empty");
        assert_eq!((err.line, err.column), (Some(1), Some(8)));
    }

    #[test]
    fn falls_back_to_the_enclosing_table() {
        let source = TomlSource::new("p.toml", SRC);
        let err = source.error_at(&FieldPath::key("checks").index(1).field("missing"), "m");
        assert_eq!(err.line, Some(6));
    }

    #[test]
    fn offsets_point_into_string_values() {
        let source = TomlSource::new("p.toml", "when = \"pii && nope\"\n");
        let err = source.error_at_offset(&FieldPath::key("when"), 7, "unknown check");
        assert_eq!((err.line, err.column), (Some(1), Some(16)));
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Root {
            name: String,
        }
        let source = TomlSource::new("p.toml", "\nname = 3\n");
        let err = source.deserialize::<Root>().unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("invalid type"), "{err}");
    }
}
