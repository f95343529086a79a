//! Escaping for the places a user's value can land in rendered user-data:
//! a YAML scalar, a YAML literal block, a POSIX shell word. Each function
//! returns text that reads back as exactly the input, whatever the input
//! holds (newlines, `: `, `#`, quotes, `{{ }}`, `$(...)`, non-ASCII). The
//! templates call these as filters; nothing else in the renderer escapes.

use std::fmt::Write as _;

/// `s` as a YAML double-quoted scalar. Only characters that YAML (and
/// PyYAML, which cloud-init uses) print as themselves are left raw: line
/// breaks of every kind (`\n`, `\r`, NEL, LS, PS), other control characters,
/// the byte-order mark and the non-characters U+FFFE/U+FFFF are escaped, so
/// the scalar always stays on one line and never folds.
pub fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    // Most values are plain ASCII: copy them in one go.
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push_str(s);
        out.push('"');
        return out;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            '\u{85}' => out.push_str("\\N"),
            '\u{2028}' => out.push_str("\\L"),
            '\u{2029}' => out.push_str("\\P"),
            c if needs_yaml_escape(c) => {
                let n = c as u32;
                if n <= 0xff {
                    let _ = write!(out, "\\x{n:02X}");
                } else {
                    let _ = write!(out, "\\u{n:04X}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters outside YAML's printable set, plus the BOM (which some readers
/// drop wherever it appears).
fn needs_yaml_escape(c: char) -> bool {
    let n = c as u32;
    !(n == 0x09
        || n == 0x0a
        || n == 0x0d
        || (0x20..=0x7e).contains(&n)
        || n == 0x85
        || (0xa0..=0xd7ff).contains(&n)
        || ((0xe000..=0xfffd).contains(&n) && n != 0xfeff)
        || (0x10000..=0x10ffff).contains(&n))
}

/// `s` as one POSIX shell word: single quotes, with each `'` written as
/// `'\''`. Inside single quotes the shell expands nothing. A NUL cannot be
/// carried in a shell word at all; values are checked for NUL before
/// rendering (see `values`), so it never reaches here.
pub fn shell_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// `s` as a YAML literal block scalar whose content lines are indented by
/// `indent` spaces, for a value placed after `key: `. Files written by
/// cloud-init (config, scripts) stay readable this way. Text a literal block
/// cannot hold exactly (escapes needed, a first line starting with white
/// space, white-space-only lines, several trailing newlines, empty text)
/// falls back to [`yaml_quote`].
///
/// The result never ends with a newline: the template's own line break ends
/// the last content line.
pub fn yaml_block(s: &str, indent: usize) -> String {
    if !block_safe(s) {
        return yaml_quote(s);
    }
    let (body, chomp) = match s.strip_suffix('\n') {
        Some(b) => (b, "|"),
        None => (s, "|-"),
    };
    let lines = body.bytes().filter(|&b| b == b'\n').count() + 1;
    let mut out = String::with_capacity(body.len() + 2 + lines * (indent + 1));
    out.push_str(chomp);
    for line in body.split('\n') {
        out.push('\n');
        if !line.is_empty() {
            out.extend(std::iter::repeat_n(' ', indent));
            out.push_str(line);
        }
    }
    out
}

/// Whether a literal block holds `s` exactly: one pass, ASCII bytes checked
/// directly, other characters against YAML's printable set.
fn block_safe(s: &str) -> bool {
    if s.is_empty() || s.ends_with("\n\n") || s.starts_with([' ', '\t', '\n']) {
        return false;
    }
    // Per line: has it any character, and any that is not white space?
    let mut line_len = 0usize;
    let mut line_blank = true;
    for c in s.chars() {
        match c {
            '\n' => {
                if line_len > 0 && line_blank {
                    return false;
                }
                line_len = 0;
                line_blank = true;
                continue;
            }
            ' ' | '\t' => {}
            '\x21'..='\x7e' => line_blank = false,
            c if c.is_ascii() => return false,
            '\u{85}' | '\u{2028}' | '\u{2029}' => return false,
            c if needs_yaml_escape(c) => return false,
            _ => line_blank = false,
        }
        line_len += 1;
    }
    !(line_len > 0 && line_blank)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml_reads_back(doc: &str) -> String {
        let v: serde_norway::Value = serde_norway::from_str(doc).unwrap();
        v.get("k").unwrap().as_str().unwrap().to_string()
    }

    #[test]
    fn quote_round_trips_nasty_strings() {
        for s in [
            "",
            "plain",
            "a: b # c",
            "line1\nline2\r\n",
            "\"quoted\" 'single' \\back",
            "{{ x }} {% y %}",
            "$(reboot) `id` ${HOME}",
            "naïve — 日本語 🦀",
            "\u{85}\u{2028}\u{2029}\u{feff}\u{7f}\u{9f}\u{1}",
            "- item",
            "? key",
            "&anchor *alias !tag",
            "   leading and trailing   ",
        ] {
            let doc = format!("k: {}\n", yaml_quote(s));
            assert_eq!(yaml_reads_back(&doc), s, "{doc}");
        }
    }

    #[test]
    fn block_round_trips_or_falls_back() {
        for s in [
            "a\nb\n",
            "a\nb",
            "a\n\nb\n",
            "#!/bin/sh\nset -eu\nexec 'x' 'y: z'\n",
            " leading",
            "a\n  \nb",
            "a\n\n",
            "x\ty\n",
            "\n",
        ] {
            let doc = format!("k: {}\nnext: 1\n", yaml_block(s, 2));
            assert_eq!(yaml_reads_back(&doc), s, "{doc}");
        }
        assert!(yaml_block("a\nb\n", 2).starts_with('|'));
        assert!(yaml_block(" a", 2).starts_with('"'));
    }

    #[test]
    fn shell_quote_shape() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
