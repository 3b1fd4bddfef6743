//! The operator's confirmation of a restore without `--yes`: the plan is shown, then the
//! cluster's name (the inventory's `[cluster] name`) must be typed on the terminal. Without a
//! terminal on stdin, or with another name, the restore is refused before anything changes.

use std::io::{BufRead, IsTerminal, Write};

/// Why a restore was not confirmed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotConfirmed {
    #[error(
        "not confirmed: stdin is not a terminal, so no one can type the cluster's name ({cluster}); nothing was changed. Re-run with --yes to restore without asking: the cluster's API is down from fence to unfence"
    )]
    NoTerminal { cluster: String },
    #[error("not confirmed: {typed:?} is not the cluster's name ({cluster}); nothing was changed")]
    WrongName { cluster: String, typed: String },
    #[error("not confirmed: could not read the answer ({0}); nothing was changed")]
    Read(String),
}

/// Asks on the terminal (stderr, stdin) for the cluster's name.
pub fn ask(cluster: &str) -> Result<(), NotConfirmed> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(NotConfirmed::NoTerminal {
            cluster: cluster.to_owned(),
        });
    }
    let mut stderr = std::io::stderr();
    let _ = write!(
        stderr,
        "This restore stops the cluster's API from fence to unfence and replaces every member's data.\nType the cluster's name ({cluster}) to restore it: "
    );
    let _ = stderr.flush();
    check(cluster, &mut stdin.lock())
}

/// Reads one line from `answer` and compares it, trimmed, with `cluster`.
pub fn check(cluster: &str, answer: &mut impl BufRead) -> Result<(), NotConfirmed> {
    let mut line = String::new();
    answer
        .read_line(&mut line)
        .map_err(|e| NotConfirmed::Read(e.to_string()))?;
    let typed = line.trim();
    if typed == cluster {
        Ok(())
    } else {
        Err(NotConfirmed::WrongName {
            cluster: cluster.to_owned(),
            typed: typed.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_name_confirms() {
        assert_eq!(check("prod-eu", &mut "prod-eu\n".as_bytes()), Ok(()));
        assert_eq!(check("prod-eu", &mut "  prod-eu  \n".as_bytes()), Ok(()));
        for wrong in ["prod\n", "PROD-EU\n", "\n", "", "yes\n"] {
            assert!(
                matches!(
                    check("prod-eu", &mut wrong.as_bytes()),
                    Err(NotConfirmed::WrongName { .. })
                ),
                "{wrong:?} must not confirm"
            );
        }
    }
}
