//! Maps a key path (`gateway.routes[2].to`) to the line it stands on in the TOML text, so a
//! validation error can point at the line an operator has to edit.

use std::fmt;

use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

use crate::load::line_at;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(&'static str),
    Index(usize),
}

/// A key path built while validating; displays as `gateway.routes[2].to`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyPath(Vec<Seg>);

impl KeyPath {
    pub(crate) fn key(&self, k: &'static str) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Seg::Key(k));
        next
    }
    pub(crate) fn index(&self, i: usize) -> KeyPath {
        let mut next = self.clone();
        next.0.push(Seg::Index(i));
        next
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The line of the deepest part of `path` found in the document (a missing key points at its
/// parent table, which is where it would have to be added).
pub(crate) fn line_of(text: &str, path: &KeyPath) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Item(doc.as_item());
    let mut best = None;
    for seg in &path.0 {
        let Some((next, span)) = child(node, seg) else {
            break;
        };
        best = span.or(best);
        node = next;
    }
    best.map(|s| line_at(text, s.start))
}

/// A position in the parsed document: tables of `[[array]]` entries are not `Item`s.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a Table),
}

fn child<'a>(node: Node<'a>, seg: &Seg) -> Option<(Node<'a>, Option<Range<usize>>)> {
    match (node, seg) {
        (Node::Table(t), Seg::Key(k)) => t
            .get_key_value(k)
            .map(|(key, it)| (Node::Item(it), key.span())),
        (Node::Item(it), Seg::Key(k)) => it
            .as_table_like()?
            .get_key_value(k)
            .map(|(key, it)| (Node::Item(it), key.span())),
        (Node::Value(v), Seg::Key(k)) => v
            .as_inline_table()?
            .get_key_value(k)
            .map(|(key, it)| (Node::Item(it), key.span())),
        (Node::Item(it), Seg::Index(n)) => match it.as_array_of_tables() {
            Some(tables) => tables.get(*n).map(|t| (Node::Table(t), t.span())),
            None => it.as_array()?.get(*n).map(|v| (Node::Value(v), v.span())),
        },
        (Node::Value(v), Seg::Index(n)) => {
            v.as_array()?.get(*n).map(|v| (Node::Value(v), v.span()))
        }
        (Node::Table(_), Seg::Index(_)) => None,
    }
}
