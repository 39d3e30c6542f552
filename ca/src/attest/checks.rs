//! Named checks and the one run that both [`super::AttestationFormat::verify`] and
//! [`super::inspect`] drive, so that the two cannot disagree.
//!
//! Each format's verification procedure is written once, as a sequence of named checks
//! ([`CheckId`]) recorded in a [`Run`]:
//! - a *verify* run ends at the first failed check with its [`AttestError`], and a check that
//!   could not run counts as failed (a check that did not run did not pass);
//! - an *inspect* run records every outcome and goes on: later checks whose inputs a failed or
//!   skipped check should have produced are recorded as skipped, saying what they need.

use super::{AttestError, Rule};

/// One check of a verification procedure: a stable name (for tests, scripts and audit) and
/// what it verifies, with the rule's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckId {
    /// e.g. `tpm.extraData`.
    pub name: &'static str,
    /// e.g. `certInfo.extraData = hash(key authorization) (WebAuthn §8.3)`.
    pub about: &'static str,
}

/// What happened to one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed; the text says what was found (may be empty).
    Passed(String),
    Failed(AttestError),
    /// Not run, for want of something.
    Skipped(Need),
}

/// What a skipped check needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The challenge, in one of these forms.
    Challenge(&'static [ChallengeForm]),
    /// The rest of the attestation statement: the input was a bare certificate chain.
    Statement,
    /// An earlier check that did not pass (its name).
    Check(&'static str),
}

/// The forms in which a caller may know the challenge (see [`super::Binding`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeForm {
    KeyAuthorization,
    Token,
    /// The value the statement should carry itself (TPM extraData, Apple freshness code).
    Expected,
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Challenge(forms) => {
                let names: Vec<&str> = forms
                    .iter()
                    .map(|form| match form {
                        ChallengeForm::KeyAuthorization => "the key authorization",
                        ChallengeForm::Token => "the challenge token",
                        ChallengeForm::Expected => "the expected value",
                    })
                    .collect();
                write!(f, "needs {}", names.join(" or "))
            }
            Self::Statement => {
                f.write_str("needs the attestation object: a certificate chain carries only x5c")
            }
            Self::Check(name) => write!(f, "needs {name} to pass"),
        }
    }
}

/// `Ok(v)`, or the check whose output `v` would have been.
pub(crate) fn need<T>(v: Option<T>, check: &'static str) -> Result<T, Need> {
    v.ok_or(Need::Check(check))
}

/// A check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub id: CheckId,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Verify,
    Inspect,
}

/// The recorder a verification procedure reports its checks to.
#[derive(Debug)]
pub(crate) struct Run {
    mode: Mode,
    /// The input is a certificate chain without the rest of the statement (inspect only):
    /// statement fields other than `x5c` are absent, which is not a failure.
    chain_only: bool,
    checks: Vec<Check>,
}

impl Run {
    /// A run for `verify`: the first failure ends it.
    pub(crate) fn verify() -> Self {
        Self {
            mode: Mode::Verify,
            chain_only: false,
            checks: Vec::new(),
        }
    }

    /// A run for `inspect`: every outcome is recorded.
    pub(crate) fn inspect(chain_only: bool) -> Self {
        Self {
            mode: Mode::Inspect,
            chain_only,
            checks: Vec::new(),
        }
    }

    /// Whether statement fields other than `x5c` are absent by construction.
    pub(crate) fn chain_only(&self) -> bool {
        self.chain_only
    }

    /// Records `result` as the outcome of `id`. Verify: a failure is returned as the error
    /// that ends the run. Inspect: a failure is recorded and the caller gets `None`.
    pub(crate) fn check<T>(
        &mut self,
        id: &CheckId,
        result: Result<T, AttestError>,
    ) -> Result<Option<T>, AttestError> {
        self.check_noted(id, result, |_| String::new())
    }

    /// [`Run::check`], with a note on success saying what was found.
    pub(crate) fn check_noted<T>(
        &mut self,
        id: &CheckId,
        result: Result<T, AttestError>,
        note: impl FnOnce(&T) -> String,
    ) -> Result<Option<T>, AttestError> {
        match result {
            Ok(v) => {
                self.record(id, Outcome::Passed(note(&v)));
                Ok(Some(v))
            }
            Err(e) => {
                if self.mode == Mode::Verify {
                    return Err(e);
                }
                self.record(id, Outcome::Failed(e));
                Ok(None)
            }
        }
    }

    /// Runs `f` on `input` as check `id` when the input is there; otherwise records the check
    /// as skipped for want of what `input` names (verify: fails with `rule`).
    pub(crate) fn check_with<I, T>(
        &mut self,
        id: &CheckId,
        input: Result<I, Need>,
        rule: Rule,
        f: impl FnOnce(I) -> Result<T, AttestError>,
    ) -> Result<Option<T>, AttestError> {
        match input {
            Ok(i) => self.check(id, f(i)),
            Err(need) => {
                self.skip(id, rule, need)?;
                Ok(None)
            }
        }
    }

    /// Records `id` as not run for want of `need`. In a verify run this is a failure with
    /// `rule`: verification never passes a check it did not make.
    pub(crate) fn skip(&mut self, id: &CheckId, rule: Rule, need: Need) -> Result<(), AttestError> {
        if self.mode == Mode::Verify {
            return Err(AttestError::new(
                rule,
                format!("{}: not checked: {need}", id.name),
            ));
        }
        self.record(id, Outcome::Skipped(need));
        Ok(())
    }

    fn record(&mut self, id: &CheckId, outcome: Outcome) {
        self.checks.push(Check { id: *id, outcome });
    }

    pub(crate) fn into_checks(self) -> Vec<Check> {
        self.checks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: CheckId = CheckId {
        name: "t.a",
        about: "a",
    };

    #[test]
    fn attest_run_verify_stops_inspect_records() {
        let bad = || Err::<(), _>(AttestError::new(Rule::TpmName, "no"));
        let mut v = Run::verify();
        assert_eq!(v.check(&A, bad()).unwrap_err().rule, Rule::TpmName);
        let e = v.skip(&A, Rule::TpmExtraData, Need::Statement).unwrap_err();
        assert_eq!(e.rule, Rule::TpmExtraData);
        assert!(e.detail.contains("t.a: not checked"), "{e}");
        assert_eq!(v.check(&A, Ok(3)).unwrap(), Some(3));

        let mut i = Run::inspect(false);
        assert_eq!(i.check(&A, bad()).unwrap(), None);
        let ka = Need::Challenge(&[ChallengeForm::KeyAuthorization, ChallengeForm::Token]);
        i.skip(&A, Rule::TpmExtraData, ka).unwrap();
        assert_eq!(
            i.check_with(&A, need(None::<u8>, "t.y"), Rule::TpmName, |_| Ok(1))
                .unwrap(),
            None
        );
        let outcomes: Vec<_> = i.into_checks().into_iter().map(|c| c.outcome).collect();
        assert!(matches!(outcomes[0], Outcome::Failed(_)));
        assert_eq!(outcomes[1], Outcome::Skipped(ka));
        assert_eq!(outcomes[2], Outcome::Skipped(Need::Check("t.y")));
        assert_eq!(
            ka.to_string(),
            "needs the key authorization or the challenge token"
        );
    }
}
