//! The syntax of systemd unit files and environment files, as systemd reads them: logical lines
//! (a trailing backslash continues a line), words (whitespace separates, `"…"` and `'…'` quote,
//! C-style escapes such as `\n`, `\x41`, `\s`), and `KEY=VALUE` environment files.

/// Joins lines ending in a backslash with the next one (the backslash becomes a space, as in
/// systemd); comment lines inside a continuation are dropped.
pub fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if current.is_some() && line.trim_start().starts_with(['#', ';']) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                let cur = current.get_or_insert_with(String::new);
                cur.push_str(head);
                cur.push(' ');
            }
            None => {
                let mut cur = current.take().unwrap_or_default();
                cur.push_str(line);
                out.push(cur);
            }
        }
    }
    if let Some(cur) = current {
        out.push(cur);
    }
    out
}

/// One word of a systemd setting could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("unterminated quote {0}")]
    Unterminated(char),
    #[error("a backslash at the end")]
    TrailingBackslash,
    #[error("unknown escape \\{0}")]
    BadEscape(String),
}

/// Splits `s` into words the way systemd does for `ExecStart=` and `Environment=`
/// (`EXTRACT_UNQUOTE | EXTRACT_CUNESCAPE`): whitespace separates, `"…"` and `'…'` quote (inside a
/// word too), and a backslash starts a C escape.
pub fn split_words(s: &str) -> Result<Vec<String>, SyntaxError> {
    let mut words = Vec::new();
    let mut rest = s;
    while let Some((word, tail)) = next_word(rest)? {
        words.push(word);
        rest = tail;
    }
    Ok(words)
}

/// The first word of `s` and what follows it; `None` when only whitespace is left.
pub fn next_word(s: &str) -> Result<Option<(String, &str)>, SyntaxError> {
    let s = s.trim_start();
    if s.is_empty() {
        return Ok(None);
    }
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.char_indices();
    while let Some((at, c)) = chars.next() {
        match (quote, c) {
            (_, '\\') => {
                let escaped = cunescape_one(&mut chars)?;
                word.push_str(&escaped);
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => quote = Some(c),
            (None, c) if c.is_whitespace() => return Ok(Some((word, &s[at..]))),
            (None, c) => word.push(c),
        }
    }
    match quote {
        Some(q) => Err(SyntaxError::Unterminated(q)),
        None => Ok(Some((word, ""))),
    }
}

/// One C escape after a backslash (systemd's `cunescape_one`).
fn cunescape_one(chars: &mut std::str::CharIndices<'_>) -> Result<String, SyntaxError> {
    let (_, c) = chars.next().ok_or(SyntaxError::TrailingBackslash)?;
    let simple = match c {
        'a' => Some('\u{7}'),
        'b' => Some('\u{8}'),
        'f' => Some('\u{c}'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\u{b}'),
        's' => Some(' '),
        '\\' | '"' | '\'' => Some(c),
        _ => None,
    };
    if let Some(s) = simple {
        return Ok(s.to_string());
    }
    let (digits, radix) = match c {
        'x' => (2, 16),
        'u' => (4, 16),
        'U' => (8, 16),
        '0'..='7' => (2, 8),
        _ => return Err(SyntaxError::BadEscape(c.to_string())),
    };
    let mut text = String::new();
    if radix == 8 {
        text.push(c);
    }
    for _ in 0..digits {
        match chars.next() {
            Some((_, d)) if d.is_digit(radix) => text.push(d),
            _ => return Err(SyntaxError::BadEscape(format!("{c}{text}"))),
        }
    }
    let code = u32::from_str_radix(&text, radix)
        .ok()
        .filter(|&n| n != 0)
        .and_then(char::from_u32)
        .ok_or_else(|| SyntaxError::BadEscape(format!("{c}{text}")))?;
    Ok(code.to_string())
}

pub fn is_var_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One assignment of an environment file: the key and where its value starts and ends in the
/// line, with the value's quote character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvLine<'a> {
    pub key: &'a str,
    /// The line up to and including `=`.
    pub head: &'a str,
    pub raw_value: &'a str,
    pub quote: Option<char>,
}

/// Parses a line `[export ]KEY=VALUE` (comments and blank lines give `None`).
pub fn env_line(line: &str) -> Option<EnvLine<'_>> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with(['#', ';']) {
        return None;
    }
    let eq = line.find('=')?;
    let key = line[..eq].trim();
    let key = key.strip_prefix("export ").map_or(key, str::trim);
    if !is_var_name(key) {
        return None;
    }
    let raw_value = line[eq + 1..].trim();
    let quote = raw_value
        .chars()
        .next()
        .filter(|c| matches!(c, '"' | '\''))
        .filter(|q| raw_value.len() >= 2 && raw_value.ends_with(*q));
    Some(EnvLine {
        key,
        head: &line[..=eq],
        raw_value,
        quote,
    })
}

/// The assignments of a systemd `EnvironmentFile=`, in order.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    logical_lines(text)
        .iter()
        .filter_map(|line| {
            let l = env_line(line)?;
            let value = match l.quote {
                Some(q) => unquote_env_value(l.raw_value, q),
                None => l.raw_value.to_owned(),
            };
            Some((l.key.to_owned(), value))
        })
        .collect()
}

/// A quoted environment-file value: inside `"…"` a backslash escapes `"`, `\`, `` ` `` and `$`;
/// inside `'…'` nothing is escaped.
fn unquote_env_value(raw: &str, quote: char) -> String {
    let inner = &raw[1..raw.len() - 1];
    if quote == '\'' {
        return inner.to_owned();
    }
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('"' | '\\' | '`' | '$')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sets `key` in `env`: replaced where it already is, else appended (systemd's
/// `strv_env_replace`).
pub fn set_env(env: &mut Vec<(String, String)>, key: String, value: String) {
    match env.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => env.push((key, value)),
    }
}
