//! The check: rendered XML is parsed back with quick-xml before anyone uses it.

use quick_xml::events::Event;
use quick_xml::Reader;

/// Parses a whole document: well-formed, one root element named `domain`.
pub fn check_document(xml: &str) -> Result<(), String> {
    let roots = parse(xml)?;
    match roots.as_slice() {
        [r] if r == "domain" => Ok(()),
        [r] => Err(format!("the root element is <{r}>, not <domain>")),
        [] => Err("there is no root element".into()),
        more => Err(format!(
            "{} root elements ({})",
            more.len(),
            more.join(", ")
        )),
    }
}

/// Parses a fragment (any number of elements and text), e.g. one included template's output.
pub fn check_fragment(xml: &str) -> Result<(), String> {
    // The fragment may use namespace prefixes declared on the root.
    let wrapped = format!(
        "<fragment xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>{xml}</fragment>"
    );
    parse(&wrapped).map(|_| ())
}

/// Returns the names of the top-level elements.
fn parse(xml: &str) -> Result<Vec<String>, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut roots = Vec::new();
    loop {
        let pos = reader.buffer_position();
        let ev = reader
            .read_event()
            .map_err(|e| at(xml, pos, &e.to_string()))?;
        match ev {
            Event::Start(s) => {
                if depth == 0 {
                    roots.push(String::from_utf8_lossy(s.name().as_ref()).into_owned());
                }
                check_attrs(&s, xml, pos)?;
                depth += 1;
            }
            Event::Empty(s) => {
                if depth == 0 {
                    roots.push(String::from_utf8_lossy(s.name().as_ref()).into_owned());
                }
                check_attrs(&s, xml, pos)?;
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) => {
                t.unescape().map_err(|e| at(xml, pos, &e.to_string()))?;
                if depth == 0 && !t.iter().all(|b| b.is_ascii_whitespace()) {
                    return Err(at(xml, pos, "text outside the root element"));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{depth} element(s) are not closed"));
    }
    Ok(roots)
}

fn check_attrs(s: &quick_xml::events::BytesStart, xml: &str, pos: u64) -> Result<(), String> {
    for a in s.attributes() {
        let a = a.map_err(|e| at(xml, pos, &e.to_string()))?;
        if a.value.contains(&b'<') {
            return Err(at(xml, pos, "a raw '<' in an attribute value"));
        }
        a.unescape_value()
            .map_err(|e| at(xml, pos, &e.to_string()))?;
    }
    Ok(())
}

fn at(xml: &str, pos: u64, msg: &str) -> String {
    let pos = usize::try_from(pos).unwrap_or(0).min(xml.len());
    let line = xml[..pos].matches('\n').count() + 1;
    let snippet: String = xml[pos..].chars().take(60).collect();
    format!("line {line}: {msg} (near {snippet:?})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_fragments() {
        assert!(check_document("<domain type='kvm'><name>a&amp;b</name></domain>").is_ok());
        assert!(check_document("<domain><name>a&b</name></domain>").is_err());
        assert!(check_document("<domain><name>a</nam></domain>").is_err());
        assert!(check_document("<other/>").is_err());
        assert!(check_fragment("<a/><b x='1'/>").is_ok());
        assert!(check_fragment("<a x='<'/>").is_err());
        assert!(check_fragment("<a>").is_err());
    }
}
