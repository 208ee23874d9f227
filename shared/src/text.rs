//! Text that came from outside, made safe to store and to hand to browsers.
//!
//! - [`clean_external`]: what every string from Daraja (ResultDesc and the like) goes
//!   through before it is stored: controls, bidirectional overrides and isolates,
//!   zero-width characters and non-characters are removed, and the result is cut to
//!   [`MAX_EXTERNAL_CHARS`] characters at a character boundary.
//! - [`escape_json_for_html`]: JSON sent to browsers (WebSocket, SSE, GET) carries `<`,
//!   `>` and `&` as `\u003c`, `\u003e` and `\u0026`, so a shop that drops a value into
//!   its page cannot be handed markup by us.

use std::borrow::Cow;

/// Longest external string kept, in characters.
pub const MAX_EXTERNAL_CHARS: usize = 256;

/// Whether `c` is removed from external text.
pub fn is_forbidden(c: char) -> bool {
    let u = c as u32;
    c.is_control() // C0, DEL and C1
        || matches!(u,
            0x200B..=0x200F   // zero-width space/non-joiner/joiner, LRM, RLM
            | 0x202A..=0x202E // LRE, RLE, PDF, LRO, RLO
            | 0x2060..=0x2064 // word joiner, invisible operators
            | 0x2066..=0x2069 // LRI, RLI, FSI, PDI
            | 0x061C          // Arabic letter mark
            | 0xFEFF          // zero-width no-break space (BOM)
            | 0x180E          // Mongolian vowel separator
            | 0x034F          // combining grapheme joiner
            | 0xFDD0..=0xFDEF // non-characters
        )
        || (u & 0xFFFE) == 0xFFFE // U+xxFFFE and U+xxFFFF in every plane: non-characters
}

/// Removes forbidden characters and cuts to [`MAX_EXTERNAL_CHARS`] characters.
/// Surrounding whitespace is trimmed. Borrows when nothing changes.
pub fn clean_external(s: &str) -> Cow<'_, str> {
    let needs_work = s.trim().len() != s.len()
        || s.chars().any(is_forbidden)
        || s.chars().nth(MAX_EXTERNAL_CHARS).is_some();
    if !needs_work {
        return Cow::Borrowed(s);
    }
    let kept: String = s.chars().filter(|c| !is_forbidden(*c)).collect();
    let cut: String = kept.trim().chars().take(MAX_EXTERNAL_CHARS).collect();
    Cow::Owned(cut.trim_end().to_owned())
}

/// Rewrites `<`, `>` and `&` in a JSON text as `\u003c`, `\u003e` and `\u0026`. These
/// characters are never structural in JSON, so they can only occur inside strings, where
/// the escape means the same character: the result is the same JSON value. Borrows when
/// none occur (the usual case).
pub fn escape_json_for_html(json: &str) -> Cow<'_, str> {
    if !json.bytes().any(|b| matches!(b, b'<' | b'>' | b'&')) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_controls_bidi_and_zero_width() {
        assert_eq!(
            clean_external("Request\u{0} cancelled\u{202E} by\u{200B} user\u{85}\u{7f}\n"),
            "Request cancelled by user"
        );
        assert_eq!(clean_external("a\u{2066}b\u{2069}c\u{FEFF}\u{FFFF}"), "abc");
        assert!(matches!(
            clean_external("The service request is processed successfully."),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn cuts_at_a_character_boundary() {
        let long = "é".repeat(300);
        let c = clean_external(&long);
        assert_eq!(c.chars().count(), MAX_EXTERNAL_CHARS);
        assert!(c.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn escapes_markup_in_json() {
        let v = serde_json::json!({"resultDesc": "<script>alert(1)</script> & more"});
        let json = serde_json::to_string(&v).unwrap();
        let esc = escape_json_for_html(&json);
        assert!(!esc.contains('<') && !esc.contains('>') && !esc.contains('&'));
        let back: serde_json::Value = serde_json::from_str(&esc).unwrap();
        assert_eq!(back, v);
        assert!(matches!(
            escape_json_for_html("{\"a\":1}"),
            Cow::Borrowed(_)
        ));
    }
}
