//! How a command ends: the one place an outcome becomes an exit status.

use serde::{Serialize, Serializer};

/// A command's exit status, as the README documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Ok,
    /// 1: failed; nothing was changed, or it was rolled back.
    Failed,
    /// 2: bad input: a wrong command line, file or record, to fix before a retry.
    Usage,
    /// 3: the new credential is stored, but the old one is not yet retired.
    NotFinalized,
    /// 130: a second SIGTERM or SIGINT stopped the gateway at once.
    Interrupted,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> i32 {
        match self {
            Self::Ok => 0,
            Self::Failed => 1,
            Self::Usage => 2,
            Self::NotFinalized => 3,
            Self::Interrupted => 130,
        }
    }

    /// `Usage` for bad input, `Failed` otherwise.
    pub fn usage_if(bad_input: bool) -> Self {
        if bad_input { Self::Usage } else { Self::Failed }
    }

    /// At least `Failed`: what a done command becomes when something beside it
    /// (its audit line) failed.
    pub fn or_failed(self) -> Self {
        match self {
            Self::Ok => Self::Failed,
            other => other,
        }
    }
}

/// Written as its number, as in a JSON report's `exit_code`.
impl Serialize for Exit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones() {
        let all = [Exit::Ok, Exit::Failed, Exit::Usage, Exit::NotFinalized];
        assert_eq!(all.map(Exit::code), [0, 1, 2, 3]);
        assert_eq!(Exit::Ok.or_failed(), Exit::Failed);
        assert_eq!(Exit::Usage.or_failed(), Exit::Usage);
        assert_eq!(serde_json::to_string(&Exit::NotFinalized).unwrap(), "3");
    }
}
