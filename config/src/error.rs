use std::fmt;
use std::path::PathBuf;

/// One thing wrong with a config file, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, `gateway.routes[2].to`; empty for a syntax error.
    pub key: String,
    /// 1-based line of the key in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

/// Why a config file was refused. Displays one problem per line:
/// `portcullis.toml:12: gateway.routes[2].to: `htp://x` is not an http(s) URL`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
            if !p.key.is_empty() {
                write!(f, "{}: ", p.key)?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}
