//! OpenSSH's `known_hosts`: plain and hashed (`|1|salt|hash`) host fields, `[host]:port` for
//! ports other than 22, patterns with `*`, `?` and `!`, `@revoked` lines. A host key is either
//! known, unknown, or changed (the host is listed with another key of the same type).

use std::path::{Path, PathBuf};

use base64::Engine as _;

/// The verdict on one host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Known,
    /// The host is not listed with a key of this type.
    Unknown,
    /// The host is listed with another key of this type (on `line` of the file).
    Changed {
        line: usize,
    },
    /// The key is listed as `@revoked` (on `line`).
    Revoked {
        line: usize,
    },
}

/// How the host is named in `known_hosts`: `host` on port 22, `[host]:port` otherwise.
pub fn host_field(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// A `*`/`?` glob match, as OpenSSH's `match_pattern`.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], text) || (!text.is_empty() && glob(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p.eq_ignore_ascii_case(t) => glob(&pattern[1..], &text[1..]),
        _ => false,
    }
}

/// Whether a hashed field `|1|salt|hash` is HMAC-SHA1(salt, name).
fn hashed_matches(field: &str, name: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut parts = field.trim_start_matches("|1|").splitn(2, '|');
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    ring::hmac::verify(&key, name.as_bytes(), &hash).is_ok()
}

/// Whether the hosts field of a line names `name` (`host` or `[host]:port`).
fn hosts_match(field: &str, name: &str) -> bool {
    if field.starts_with("|1|") {
        return hashed_matches(field, name);
    }
    let mut matched = false;
    for pattern in field.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if glob(negated.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if glob(pattern.as_bytes(), name.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// Checks `key_type` `key_b64` (as in a `.pub` file) of `host`:`port` against `text`.
pub fn check(text: &str, host: &str, port: u16, key_type: &str, key_b64: &str) -> Verdict {
    let name = host_field(host, port);
    let mut verdict = Verdict::Unknown;
    for (i, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let Some(mut first) = fields.next() else {
            continue;
        };
        if first.starts_with('#') {
            continue;
        }
        let marker = first.strip_prefix('@');
        if marker.is_some() {
            match fields.next() {
                Some(f) => first = f,
                None => continue,
            }
        }
        let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !hosts_match(first, &name) {
            continue;
        }
        let same_key = kind == key_type && blob == key_b64;
        match marker {
            Some("revoked") if same_key => return Verdict::Revoked { line: i + 1 },
            Some(_) => {}
            None if same_key => verdict = Verdict::Known,
            // Another key, of this type or another: a host known by one key that now offers
            // a key of another type is a change too (an attacker picks the type it offers).
            None if verdict == Verdict::Unknown => verdict = Verdict::Changed { line: i + 1 },
            None => {}
        }
    }
    verdict
}

/// The user's `~/.ssh/known_hosts`.
pub fn default_path() -> PathBuf {
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from("/root"), PathBuf::from)
        .join(".ssh/known_hosts")
}

/// Appends `host`'s key to `path` (made 0600, in a dir made 0700 when missing).
pub fn record(
    path: &Path,
    host: &str,
    port: u16,
    key_type: &str,
    key_b64: &str,
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{} {key_type} {key_b64}", host_field(host, port))?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const OTHER: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    /// `ssh-keygen -H` of `name` with this salt.
    fn hashed(name: &str, salt: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
        let tag = ring::hmac::sign(&key, name.as_bytes());
        format!("|1|{}|{}", b64.encode(salt), b64.encode(tag.as_ref()))
    }

    #[test]
    fn plain_hashed_and_bracketed_port_entries() {
        let text = format!(
            "# comment\n\n10.0.0.1 ssh-ed25519 {ED}\n[10.0.0.2]:2222 ssh-ed25519 {ED}\n{} ssh-ed25519 {ED} cp-3\n{} ssh-ed25519 {ED}\n",
            hashed("cp-3.example", b"0123456789abcdefghij"),
            hashed("[10.0.0.4]:2200", b"salt-salt-salt-salt-"),
        );
        assert_eq!(
            check(&text, "10.0.0.1", 22, "ssh-ed25519", ED),
            Verdict::Known
        );
        // A port-22 entry says nothing of port 2222, and the other way round.
        assert_eq!(
            check(&text, "10.0.0.1", 2222, "ssh-ed25519", ED),
            Verdict::Unknown
        );
        assert_eq!(
            check(&text, "10.0.0.2", 2222, "ssh-ed25519", ED),
            Verdict::Known
        );
        assert_eq!(
            check(&text, "10.0.0.2", 22, "ssh-ed25519", ED),
            Verdict::Unknown
        );
        assert_eq!(
            check(&text, "cp-3.example", 22, "ssh-ed25519", ED),
            Verdict::Known
        );
        assert_eq!(
            check(&text, "cp-4.example", 22, "ssh-ed25519", ED),
            Verdict::Unknown
        );
        assert_eq!(
            check(&text, "10.0.0.4", 2200, "ssh-ed25519", ED),
            Verdict::Known
        );
        assert_eq!(
            check(&text, "10.0.0.4", 22, "ssh-ed25519", ED),
            Verdict::Unknown
        );
    }

    #[test]
    fn another_key_of_any_type_is_a_change() {
        let text = format!(
            "10.0.0.1,cp-1 ssh-ed25519 {OTHER}\n{} ssh-ed25519 {OTHER}\n",
            hashed("[h]:2022", b"s")
        );
        assert_eq!(
            check(&text, "cp-1", 22, "ssh-ed25519", ED),
            Verdict::Changed { line: 1 }
        );
        assert_eq!(
            check(&text, "h", 2022, "ssh-ed25519", ED),
            Verdict::Changed { line: 2 }
        );
        assert_eq!(
            check(&text, "cp-1", 22, "ecdsa-sha2-nistp256", ED),
            Verdict::Changed { line: 1 }
        );
        // A second line with the right key makes it known (as OpenSSH reads every line).
        let both = format!("{text}cp-1 ssh-ed25519 {ED}\n");
        assert_eq!(check(&both, "cp-1", 22, "ssh-ed25519", ED), Verdict::Known);
    }

    #[test]
    fn patterns_markers_and_recording() {
        let text = format!(
            "*.lab,!bad.lab ssh-ed25519 {ED}\n@cert-authority *.lab ssh-ed25519 {OTHER}\n@revoked 10.9.9.9 ssh-ed25519 {ED}\n"
        );
        assert_eq!(
            check(&text, "cp-1.lab", 22, "ssh-ed25519", ED),
            Verdict::Known
        );
        assert_eq!(
            check(&text, "bad.lab", 22, "ssh-ed25519", ED),
            Verdict::Unknown
        );
        assert_eq!(
            check(&text, "10.9.9.9", 22, "ssh-ed25519", ED),
            Verdict::Revoked { line: 3 }
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ssh/known_hosts");
        record(&path, "10.0.0.7", 2222, "ssh-ed25519", ED).expect("record");
        let written = std::fs::read_to_string(&path).expect("read");
        assert_eq!(written, format!("[10.0.0.7]:2222 ssh-ed25519 {ED}\n"));
        assert_eq!(
            check(&written, "10.0.0.7", 2222, "ssh-ed25519", ED),
            Verdict::Known
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
