//! The one place that says which member names, hosts, URLs and tokens quorate accepts: no wider
//! than what etcd, kubeadm and kubespray use, so that no value can carry shell, YAML or URL syntax
//! into a file, a command line or a log. The coordinator checks its inventory with these
//! functions and the agent checks every request with them (through the `TryFrom` checks of
//! [`super::ClusterFacts`] and [`super::StepRequest`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{ModelError, RestoreId};

/// The longest value an error message repeats; longer ones are cut (and say so).
const SHOWN: usize = 80;

/// The rule for a member name, as errors state it.
pub const NAME_RULE: &str = "a member or host name is 1-253 characters: ASCII letters, digits, \
                             '-', '.' and '_', beginning and ending with a letter or a digit (a \
                             node name, as kubeadm and kubespray use)";
/// The rule for a host, as errors state it.
pub const HOST_RULE: &str = "a host is a DNS name (labels of 1-63 ASCII letters, digits and '-', \
                             not beginning or ending with '-'; 253 characters at most), an IPv4 \
                             address or a bracketed IPv6 address";
/// The rule for a URL, as errors state it.
pub const URL_RULE: &str = "a URL is http(s)://host:port and nothing else: a DNS name, an IPv4 \
                            address or a bracketed IPv6 address, a port 1-65535, no user, no path \
                            but '/', no query, no fragment";

/// The value as an error shows it: quoted and escaped (control characters, quotes, newlines),
/// and cut after [`SHOWN`] characters.
pub fn shown(value: &str) -> String {
    let count = value.chars().count();
    if count <= SHOWN {
        format!("{value:?}")
    } else {
        let head: String = value.chars().take(SHOWN).collect();
        format!("{head:?}... ({count} characters)")
    }
}

/// A refusal naming the field, the member, the bad value and the rule.
fn refuse(field: &str, member: &str, value: &str, rule: &str) -> ModelError {
    let of = if member.is_empty() {
        String::new()
    } else {
        format!(" of {}", shown_name(member))
    };
    ModelError(format!("{field}{of} {} is refused: {rule}", shown(value)))
}

/// A member name as a context in a message: as is when it is a valid name, else escaped.
fn shown_name(member: &str) -> String {
    if is_name(member) {
        member.to_owned()
    } else {
        shown(member)
    }
}

fn is_name(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=253).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && edge(s.chars().next())
        && edge(s.chars().last())
}

/// An etcd member name (or an apiserver host's name): `field` names it in the error (e.g.
/// "member name", "[[apiserver]] name").
pub fn check_name(field: &str, value: &str) -> Result<(), ModelError> {
    if is_name(value) {
        Ok(())
    } else {
        Err(refuse(field, "", value, NAME_RULE))
    }
}

fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    let labels_ok = s.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    // A name whose last label is all digits reads as an IPv4 address: only a real one is one.
    let numeric_tail = s
        .rsplit('.')
        .next()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()));
    !s.is_empty() && s.len() <= 253 && labels_ok && !numeric_tail
}

/// A host as it appears in a URL: a DNS name, an IPv4 literal or a bracketed IPv6 literal.
fn is_url_host(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().is_ok();
    }
    s.parse::<Ipv4Addr>().is_ok() || is_dns_name(s)
}

/// A host (for a TLS server name): a DNS name, an IPv4 literal or an IPv6 literal, bracketed or
/// not.
pub fn check_host(field: &str, member: &str, value: &str) -> Result<(), ModelError> {
    if is_url_host(value) || value.parse::<Ipv6Addr>().is_ok() {
        Ok(())
    } else {
        Err(refuse(field, member, value, HOST_RULE))
    }
}

/// The parts of a checked URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlParts<'a> {
    pub https: bool,
    pub host: &'a str,
    pub port: u16,
}

fn url_parts(value: &str) -> Option<UrlParts<'_>> {
    let (https, rest) = match value.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix("http://")?),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = authority.rsplit_once(':')?;
    let port_ok = (1..=5).contains(&port.len()) && port.chars().all(|c| c.is_ascii_digit());
    let port: u16 = port.parse().ok().filter(|p| port_ok && *p > 0)?;
    is_url_host(host).then_some(UrlParts { https, host, port })
}

/// A URL `http(s)://host:port` (optionally ending in `/`), nothing else; `field` and `member`
/// name it in the error.
pub fn check_url<'a>(
    field: &str,
    member: &str,
    value: &'a str,
) -> Result<UrlParts<'a>, ModelError> {
    url_parts(value).ok_or_else(|| refuse(field, member, value, URL_RULE))
}

/// etcd's `--initial-cluster`: `name=url,...`, each name and URL checked, no URL twice. Returns
/// the entries.
pub fn check_initial_cluster(value: &str) -> Result<Vec<(&str, &str)>, ModelError> {
    let mut entries: Vec<(&str, &str)> = Vec::new();
    for entry in value.split(',') {
        let Some((name, url)) = entry.split_once('=') else {
            return Err(refuse(
                "initial cluster entry",
                "",
                entry,
                "each entry is name=peer-url",
            ));
        };
        check_name("initial cluster member name", name)?;
        check_url("initial cluster peer URL", name, url)?;
        if entries.iter().any(|(_, u)| *u == url) {
            return Err(refuse(
                "initial cluster peer URL",
                name,
                url,
                "every peer URL appears once",
            ));
        }
        entries.push((name, url));
    }
    Ok(entries)
}

/// The cluster token of restore `id`: exactly `quorate-<id>`, so that every attempt gets new
/// member and cluster IDs and no request can carry another token.
pub fn check_token(id: RestoreId, token: &str) -> Result<(), ModelError> {
    if token == id.cluster_token() {
        Ok(())
    } else {
        Err(refuse(
            "cluster token",
            "",
            token,
            &format!(
                "the token of restore {id} is exactly {}",
                id.cluster_token()
            ),
        ))
    }
}

/// A token of the form `quorate-<restore id>` for some restore id.
pub fn check_token_shape(token: &str) -> Result<(), ModelError> {
    let ok = token
        .strip_prefix("quorate-")
        .is_some_and(|id| id.parse::<RestoreId>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(refuse(
            "cluster token",
            "",
            token,
            "a cluster token is quorate-<restore id>",
        ))
    }
}

#[cfg(test)]
#[path = "names_tests.rs"]
mod tests;
