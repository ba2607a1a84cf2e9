//! The rotation lease: a claim on one record for the length of one rotation,
//! for a vault with no lock of its own (Keeper). Two gateways, or a gateway and
//! an on-demand `run`, may otherwise rotate one record at once: the second
//! lists the keys while the first's new key exists but is not stored yet, and
//! deletes it as a leftover (issue 14).
//!
//! The lease is the field `Rotation Lease` = `OWNER UNTIL` on the PAM user
//! record, written with Keeper's revision check before anything is created,
//! and removed when the rotation ends. A writer that sees a live lease of
//! another owner changes nothing. A lease expires at `UNTIL`; one whose owner
//! is a process of this host that no longer runs is stale at once.

use chrono::{DateTime, Utc};

use crate::fields::stamp;

/// The longest lease believed: four call timeouts at their maximum (a day
/// each) and a minute.
pub const MAX_LENGTH: chrono::Duration = chrono::Duration::days(4)
    .checked_add(&chrono::Duration::minutes(1))
    .expect("fits");

/// One writer's claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `HOST:PID:NONCE`: who holds it, and whether it still runs.
    pub owner: String,
    pub until: DateTime<Utc>,
}

impl Lease {
    /// A lease of this process until `until`.
    pub fn mine(until: DateTime<Utc>) -> Self {
        let nonce: [u8; 4] = {
            let mut b = [0u8; 4];
            getrandom::fill(&mut b).expect("the OS random source works");
            b
        };
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            owner: format!("{}:{}:{nonce}", hostname(), std::process::id()),
            until,
        }
    }

    /// The field's value.
    pub fn render(&self) -> String {
        format!("{} {}", self.owner, stamp(self.until))
    }

    /// Reads a field's value; `None` when it is not a lease (then it holds nothing).
    pub fn parse(text: &str) -> Option<Self> {
        let (owner, until) = text.trim().split_once(' ')?;
        let until = DateTime::parse_from_rfc3339(until.trim())
            .ok()?
            .with_timezone(&Utc);
        Some(Self {
            owner: owner.to_string(),
            until,
        })
    }

    /// Whether it still excludes other writers at `now`. A lease running
    /// longer than any this host writes is not one of ours: anyone who can
    /// edit the record could otherwise park it forever.
    pub fn live(&self, now: DateTime<Utc>) -> bool {
        now < self.until && self.until <= now + MAX_LENGTH && !self.owner_is_gone()
    }

    /// The owner was a process of this host that no longer runs.
    fn owner_is_gone(&self) -> bool {
        let mut parts = self.owner.split(':');
        let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            return false;
        };
        // SAFETY: signal 0 only checks that the process exists.
        host == hostname()
            && pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
}

/// This host's name, without spaces or colons (it is a word of the field).
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let name = if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown-host".into()
    };
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_round_trips_and_expires() {
        let now = Utc::now();
        let lease = Lease::mine(now + chrono::Duration::minutes(5));
        let read = Lease::parse(&lease.render()).unwrap();
        assert_eq!(read.owner, lease.owner);
        assert!(read.live(now));
        assert!(!read.live(now + chrono::Duration::minutes(6)));
        let parked = Lease::parse("elsewhere:1:00 2999-01-01T00:00:00Z").unwrap();
        assert!(
            !parked.live(now),
            "a lease past any this host writes is not believed"
        );
        assert_eq!(Lease::parse("garbage"), None);
    }

    #[test]
    fn a_lease_of_a_dead_process_of_this_host_is_stale() {
        let now = Utc::now();
        let mut lease = Lease::mine(now + chrono::Duration::minutes(5));
        // PID 0x7ffffffe is above pid_max on Linux: no such process.
        lease.owner = format!("{}:2147483646:00", hostname());
        assert!(!lease.live(now));
        lease.owner = "another-host:2147483646:00".into();
        assert!(lease.live(now), "another host's process cannot be checked");
    }
}
