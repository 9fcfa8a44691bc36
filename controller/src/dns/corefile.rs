//! Pure text edits of a CoreDNS Corefile: the Maille server block, kept between marker lines
//! so that it can be updated in place and removed leaving the rest byte for byte as it was.

use super::version::Family;
use crate::naming::SHADOW_SEPARATOR;

/// The DNS zone every mesh name lives in.
pub const MESH_ZONE: &str = "maille.mesh";
/// First line of the managed section.
pub const BEGIN_MARKER: &str =
    "# maille:begin (written by `maille-controller prepare`, removed by `maille-controller cleanup`; do not edit)";
/// Last line of the managed section.
pub const END_MARKER: &str = "# maille:end";

/// What the server block depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockParams<'a> {
    /// Namespace the shadow services live in.
    pub mesh_namespace: &'a str,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: &'a str,
    /// Which CoreDNS syntax to write.
    pub family: Family,
}

/// A Corefile whose markers Maille cannot make sense of. Changing it could lose the user's
/// configuration, so nothing is written and the user is told what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A begin marker without an end marker after it (or the other way round).
    #[error("line {line}: {found:?} has no matching {missing:?}; restore or delete the Maille section by hand")]
    UnpairedMarker {
        /// 1-based line number of the lone marker.
        line: usize,
        /// The marker found.
        found: &'static str,
        /// The marker missing.
        missing: &'static str,
    },
    /// More than one managed section.
    #[error("line {line}: a second Maille section starts here; keep only one")]
    DuplicateSection {
        /// 1-based line number of the second begin marker.
        line: usize,
    },
    /// A `maille.mesh` server block outside the markers (hand-written, or markers lost to a
    /// tool that rewrote the Corefile): a second one would make CoreDNS refuse to start.
    #[error("line {line}: {text:?} is a {MESH_ZONE} server block that Maille does not manage; remove it (prepare adds its own)")]
    UnmanagedBlock {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// Escapes a domain for a Go regular expression (`.` is the only metacharacter a valid
/// namespace or cluster domain can contain).
fn regex_escape(domain: &str) -> String {
    domain.replace('.', r"\.")
}

/// The `maille.mesh:53` server block (without markers), ending in a newline.
///
/// The rewrite maps `<svc>.<ns>.maille.mesh.` to the shadow service
/// `<svc><SEP><ns>.<meshns>.svc.<domain>.` and the answer name back, using the strict
/// two-line block form that every CoreDNS from 1.6 to today parses the same way. Query names
/// reach the plugin lowercased and fully qualified, hence `[a-z0-9-]` and the final `\.$`.
pub fn server_block(p: &BlockParams<'_>) -> String {
    let ns = p.mesh_namespace;
    let domain = p.cluster_domain;
    let zone_re = regex_escape(MESH_ZONE);
    let ns_re = regex_escape(ns);
    let domain_re = regex_escape(domain);
    let label = "([a-z0-9-]+)";
    let question = format!(r"^{label}\.{label}\.{zone_re}\.$");
    let shadow = format!("{{1}}{SHADOW_SEPARATOR}{{2}}.{ns}.svc.{domain}");
    let answer = format!(r"^{label}{SHADOW_SEPARATOR}{label}\.{ns_re}\.svc\.{domain_re}\.$");
    let back = format!("{{1}}.{{2}}.{MESH_ZONE}");
    let kubernetes = match p.family {
        // Accepted (and ignored since 1.5.2) up to 1.6; rejected as an unknown property from
        // 1.7.0 on, which is what broke Traefik Mesh users.
        Family::V1_6 => format!("    kubernetes {domain} {{\n        upstream\n    }}\n"),
        Family::V1_7 => format!("    kubernetes {domain}\n"),
    };
    format!(
        "{MESH_ZONE}:53 {{\n    errors\n    rewrite stop {{\n        name regex {question} {shadow}\n        answer name {answer} {back}\n    }}\n{kubernetes}    template ANY ANY {MESH_ZONE} {{\n        rcode NXDOMAIN\n    }}\n    cache 30\n}}\n"
    )
}

/// The server block between its marker lines, ending in a newline.
pub fn managed_section(p: &BlockParams<'_>) -> String {
    format!("{BEGIN_MARKER}\n{}{END_MARKER}\n", server_block(p))
}

/// Byte range of the managed section: from the start of the begin line to just after the end
/// line (its newline included when it has one).
fn find_section(corefile: &str) -> Result<Option<(usize, usize)>, Error> {
    let mut begin: Option<(usize, usize)> = None; // (byte offset, line number)
    let mut found = None;
    let mut offset = 0;
    for (idx, raw) in corefile.split_inclusive('\n').enumerate() {
        let line_no = idx + 1;
        let text = raw.trim_end_matches(['\n', '\r']).trim_end();
        if text == BEGIN_MARKER {
            if found.is_some() || begin.is_some() {
                return Err(Error::DuplicateSection { line: line_no });
            }
            begin = Some((offset, line_no));
        } else if text == END_MARKER {
            match begin.take() {
                Some((start, _)) => found = Some((start, offset + raw.len())),
                None => {
                    return Err(Error::UnpairedMarker {
                        line: line_no,
                        found: "# maille:end",
                        missing: "# maille:begin",
                    })
                }
            }
        } else if begin.is_none() && is_mesh_server_key(text) {
            return Err(Error::UnmanagedBlock {
                line: line_no,
                text: text.to_string(),
            });
        }
        offset += raw.len();
    }
    if let Some((_, line)) = begin {
        return Err(Error::UnpairedMarker {
            line,
            found: "# maille:begin",
            missing: "# maille:end",
        });
    }
    Ok(found)
}

/// Whether a line opens a server block for the mesh zone (`maille.mesh:53 {`, `maille.mesh {`,
/// `dns://maille.mesh`, ...). Only unindented lines are server keys in practice.
fn is_mesh_server_key(line: &str) -> bool {
    if line.starts_with(char::is_whitespace) || line.starts_with('#') {
        return false;
    }
    line.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|t| !t.is_empty() && *t != "{")
        .any(|token| {
            let host = token.split_once("://").map_or(token, |(_, rest)| rest);
            let host = host.split(':').next().unwrap_or(host).trim_end_matches('.');
            host == MESH_ZONE
        })
}

/// The arguments of the top-level `import` directives (outside every server block): the files
/// whose server blocks CoreDNS adds. An `import` inside a block imports plugins, not servers.
pub fn top_level_imports(corefile: &str) -> Vec<&str> {
    let mut depth = 0usize;
    let mut out = Vec::new();
    for raw in corefile.lines() {
        let text = raw.split('#').next().unwrap_or("").trim();
        let mut tokens = text.split_whitespace();
        if depth == 0 && tokens.next() == Some("import") {
            out.extend(tokens.filter(|t| *t != "{"));
        }
        for c in text.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    out
}

/// Whether a glob (`*` any run, `?` one character; what CoreDNS's `import` takes in a file
/// name) matches `name`. Iterative, so no input makes it recurse.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// Whether the Corefile, read from `corefile_dir`, imports `file` from `dir` at the top level.
pub fn imports_file(corefile: &str, corefile_dir: &str, dir: &str, file: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    top_level_imports(corefile).into_iter().any(|arg| {
        let path = if arg.starts_with('/') {
            arg.to_string()
        } else {
            format!("{}/{arg}", corefile_dir.trim_end_matches('/'))
        };
        let (d, pattern) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        d.trim_end_matches('/') == dir && glob_matches(pattern, file)
    })
}

/// Whether the Corefile holds a managed section.
pub fn has_section(corefile: &str) -> Result<bool, Error> {
    Ok(find_section(corefile)?.is_some())
}

/// The Corefile with the managed section set to `section` (from [`managed_section`]): replaced
/// in place when present, else appended after one newline (which [`remove`] takes away again).
/// Returns the input unchanged when the section is already up to date.
pub fn apply(corefile: &str, section: &str) -> Result<String, Error> {
    match find_section(corefile)? {
        Some((start, end)) => {
            let mut out = String::with_capacity(corefile.len() + section.len());
            out.push_str(&corefile[..start]);
            out.push_str(section);
            out.push_str(&corefile[end..]);
            Ok(out)
        }
        None => Ok(format!("{corefile}\n{section}")),
    }
}

/// The Corefile without the managed section and the newline `apply` put before it, so that
/// `remove(apply(x)) == x` byte for byte. Unchanged when there is no section.
pub fn remove(corefile: &str) -> Result<String, Error> {
    match find_section(corefile)? {
        Some((mut start, end)) => {
            if start > 0 && corefile.as_bytes()[start - 1] == b'\n' {
                start -= 1;
            }
            let mut out = String::with_capacity(corefile.len());
            out.push_str(&corefile[..start]);
            out.push_str(&corefile[end..]);
            Ok(out)
        }
        None => Ok(corefile.to_string()),
    }
}

#[cfg(test)]
mod tests;
