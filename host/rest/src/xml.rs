//! The XML of blob and queue bodies: a writer that escapes, and a small bounded parser into a
//! tree for the few bodies clients send (block lists, messages, ACLs, service properties).

use std::fmt::Write as _;

use quick_xml::events::Event;

use crate::RestError;

/// Deepest nesting a request body may have: Azure's bodies are three or four levels deep.
pub const MAX_DEPTH: usize = 16;
/// Most elements one request body may hold: a block list of 50,000 blocks is the largest.
pub const MAX_ELEMENTS: usize = 60_000;

/// Appends `s` escaped for XML text or attribute values.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// Whether `s` can be XML 1.0 text: no control characters but tab, newline and carriage return.
pub fn is_xml_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
    })
}

/// An XML document being written.
pub struct Xml(pub String);

impl Xml {
    /// A document with the XML declaration Azure sends.
    pub fn new() -> Self {
        Xml(String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>"))
    }

    /// `<tag>`.
    pub fn open(&mut self, tag: &str) -> &mut Self {
        let _ = write!(self.0, "<{tag}>");
        self
    }

    /// `<tag a="v" ...>`.
    pub fn open_attrs(&mut self, tag: &str, attrs: &[(&str, &str)]) -> &mut Self {
        self.0.push('<');
        self.0.push_str(tag);
        for (k, v) in attrs {
            let _ = write!(self.0, " {k}=\"");
            escape_into(&mut self.0, v);
            self.0.push('"');
        }
        self.0.push('>');
        self
    }

    /// `</tag>`.
    pub fn close(&mut self, tag: &str) -> &mut Self {
        let _ = write!(self.0, "</{tag}>");
        self
    }

    /// `<tag>text</tag>` (`<tag />` when empty).
    pub fn elem(&mut self, tag: &str, text: &str) -> &mut Self {
        if text.is_empty() {
            let _ = write!(self.0, "<{tag} />");
        } else {
            let _ = write!(self.0, "<{tag}>");
            escape_into(&mut self.0, text);
            let _ = write!(self.0, "</{tag}>");
        }
        self
    }

    /// `<tag>text</tag>` only when `text` is given.
    pub fn opt(&mut self, tag: &str, text: Option<&str>) -> &mut Self {
        if let Some(t) = text {
            self.elem(tag, t);
        }
        self
    }

    /// The document.
    pub fn finish(self) -> String {
        self.0
    }
}

impl Default for Xml {
    fn default() -> Self {
        Xml::new()
    }
}

/// An element of a parsed body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Node {
    /// Its name (local, without a namespace prefix).
    pub name: String,
    /// Its text (concatenated, unescaped).
    pub text: String,
    /// Its child elements in order.
    pub children: Vec<Node>,
}

impl Node {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the first child named `name`.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// Every child named `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

/// Parses a request body into its root element. Bounded by [`MAX_DEPTH`] and [`MAX_ELEMENTS`];
/// the body itself is bounded by its caller. Anything malformed is 400 `InvalidXmlDocument`.
pub fn parse(body: &[u8]) -> Result<Node, RestError> {
    let bad = |why: String| {
        RestError::bad(
            "InvalidXmlDocument",
            format!("XML specified is not syntactically valid: {why}"),
        )
    };
    let mut reader = quick_xml::Reader::from_reader(body);
    // Text is kept as sent: a message's leading and trailing spaces are part of it.
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut elements = 0usize;
    let mut buf = Vec::new();
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| bad(format!("at byte {}: {e}", reader.buffer_position())))?;
        match ev {
            Event::Start(e) | Event::Empty(e) if root.is_some() => {
                let _ = e;
                return Err(bad("content after the root element".into()));
            }
            Event::Start(e) => {
                elements += 1;
                if stack.len() >= MAX_DEPTH || elements > MAX_ELEMENTS {
                    return Err(bad("too deep or too many elements".into()));
                }
                stack.push(Node {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Node::default()
                });
            }
            Event::Empty(e) => {
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(bad("too many elements".into()));
                }
                let node = Node {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Node::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::End(_) => {
                let Some(node) = stack.pop() else {
                    return Err(bad("an end tag with no start".into()));
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(t) => {
                let text = t
                    .decode()
                    .map_err(|e| bad(format!("text is not UTF-8: {e}")))?;
                let text = quick_xml::escape::unescape(&text)
                    .map_err(|e| bad(format!("bad escape: {e}")))?;
                if let Some(n) = stack.last_mut() {
                    n.text.push_str(&text);
                } else if !text.trim().is_empty() {
                    return Err(bad("text outside the root element".into()));
                }
            }
            Event::GeneralRef(r) => {
                let Some(n) = stack.last_mut() else {
                    return Err(bad("a reference outside the root element".into()));
                };
                let name = r.decode().map_err(|e| bad(format!("bad reference: {e}")))?;
                let resolved = if let Some(num) = name.strip_prefix('#') {
                    let code = match num.strip_prefix('x') {
                        Some(hex) => u32::from_str_radix(hex, 16),
                        None => num.parse::<u32>(),
                    };
                    code.ok().and_then(char::from_u32)
                } else {
                    quick_xml::escape::resolve_predefined_entity(&name)
                        .and_then(|s| s.chars().next())
                };
                match resolved {
                    Some(c) => n.text.push(c),
                    None => return Err(bad(format!("unknown entity &{name};"))),
                }
            }
            Event::CData(t) => {
                if let Some(n) = stack.last_mut() {
                    n.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::DocType(_) => return Err(bad("a DOCTYPE is not accepted".into())),
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(bad("the document ends inside an element".into()));
    }
    root.ok_or_else(|| bad("the document is empty".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_block_list() {
        let n = parse(
            br#"<?xml version="1.0" encoding="utf-8"?><BlockList><Latest>AAA=</Latest><Committed>QkI=</Committed></BlockList>"#,
        )
        .unwrap();
        assert_eq!(n.name, "BlockList");
        assert_eq!(n.children.len(), 2);
        assert_eq!(n.children[1].name, "Committed");
        assert_eq!(n.children[1].text, "QkI=");
    }

    #[test]
    fn unescapes_text_and_refuses_garbage() {
        let n = parse(
            b"<QueueMessage><MessageText>a &amp; b &lt;c&gt; &#x41;</MessageText></QueueMessage>",
        )
        .unwrap();
        assert_eq!(n.child_text("MessageText"), Some("a & b <c> A"));
        for bad in [
            &b"<a><b></a>"[..],
            b"",
            b"<a></a><b/>",
            b"<!DOCTYPE x><a/>",
            b"<a>&bogus;</a>",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(
                e.code,
                "InvalidXmlDocument",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn writes_escaped() {
        let mut x = Xml::new();
        x.open("A")
            .elem("B", "1 < 2 & \"q\"")
            .elem("C", "")
            .close("A");
        assert!(
            x.finish()
                .ends_with("<A><B>1 &lt; 2 &amp; &quot;q&quot;</B><C /></A>")
        );
        assert!(is_xml_text("ok\ttext"));
        assert!(!is_xml_text("bell\u{7}"));
    }
}
