//! The key plan: what must go before `CreateAccessKey` (IAM allows two keys per
//! user) and what `finalize` retires. Pure logic; see docs/design.md, "The two-key rule".

use crate::error::PluginError;
use crate::model::Deactivated;
use crate::settings::OldKeyAction;

/// IAM's limit of access keys per user.
pub const MAX_KEYS: usize = 2;

/// An access key's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    Active,
    Inactive,
}

/// One access key as `ListAccessKeys` shows it (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub status: KeyStatus,
    /// `CreateDate`, ISO 8601.
    pub created: String,
}

/// What to delete before creating the new key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MakeRoom {
    /// Below the limit: delete nothing.
    Nothing,
    /// A key neither the vault nor the signer uses, left by an earlier run.
    Leftover(String),
    /// The vault's own key: the other one signs these requests, so there is no
    /// spare. The one place where I2 cannot hold.
    VaultKey(String),
    /// The only inactive key of two that the vault does not know.
    Inactive(String),
}

impl MakeRoom {
    /// The key this deletes, if any.
    pub fn deletes(&self) -> Option<&str> {
        match self {
            Self::Nothing => None,
            Self::Leftover(id) | Self::VaultKey(id) | Self::Inactive(id) => Some(id),
        }
    }
}

/// The plan of one rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub make_room: MakeRoom,
    /// The vault's key, retired by `finalize` once the new key is stored and works.
    pub retire: Option<String>,
}

impl Plan {
    /// Plain sentences describing the plan. `deactivated` is the host's record
    /// of keys earlier rotations turned off, so the plan can say whether one it
    /// deletes is still in its grace period.
    pub fn describe(
        &self,
        user: &str,
        deactivated: &[Deactivated],
        action: OldKeyAction,
    ) -> Vec<String> {
        let mut notes: Vec<String> = self.make_room_note(user, deactivated).into_iter().collect();
        notes.push(format!(
            "create a new access key for '{user}' and store it in the vault"
        ));
        if let Some(id) = &self.retire {
            notes.push(match action {
                OldKeyAction::Delete => format!("after the new key works, delete the old key {id}"),
                OldKeyAction::Deactivate => format!(
                    "after the new key works, deactivate the old key {id}; it is deleted once \
                     'Inactive Grace Days' have passed"
                ),
                OldKeyAction::RetireWhenUnused => format!(
                    "after the new key works, keep the old key {id} active until IAM shows no \
                     use of it for 'Unused Hours'; then deactivate it, and delete it once \
                     'Inactive Grace Days' have passed"
                ),
            });
        }
        notes
    }

    /// Why the key deleted to make room goes, if one is.
    pub fn make_room_note(&self, user: &str, deactivated: &[Deactivated]) -> Option<String> {
        let id = self.make_room.deletes()?;
        if let Some(d) = deactivated.iter().find(|d| d.id == id) {
            return Some(if d.expired {
                format!(
                    "delete {id}: deactivated by the rotation of {}, and its grace period has ended",
                    d.since
                )
            } else {
                format!(
                    "delete {id} before its grace period ends: a rotation deactivated it on {}, \
                     but '{user}' can hold only two keys and the new key needs its place",
                    d.since
                )
            });
        }
        Some(match &self.make_room {
            MakeRoom::Leftover(_) => format!(
                "delete {id}: a leftover key of '{user}' that the vault does not record, to make room"
            ),
            MakeRoom::VaultKey(_) => format!(
                "delete the vault's key {id} before creating its successor: '{user}' has two keys and \
                 the other one signs these requests, so there is no spare"
            ),
            _ => format!(
                "delete {id}: an inactive key of '{user}' that the vault does not record, to make room"
            ),
        })
    }
}

/// Decides the plan for a user holding `keys`, whose vault records `vault`,
/// with requests signed by `signer`. `is_protected` says whether another record
/// of the vault holds or tracks an id (I6): such a key is never deleted or retired.
pub fn plan(
    keys: &[AccessKey],
    vault: Option<&str>,
    signer: &str,
    user: &str,
    is_protected: &dyn Fn(&str) -> bool,
) -> Result<Plan, PluginError> {
    check_vault_key(vault, signer, is_protected)?;
    let vault_in_iam = vault.filter(|v| keys.iter().any(|k| k.id == *v));
    let retire = vault_in_iam.map(str::to_string);
    if keys.len() < MAX_KEYS {
        return Ok(Plan {
            make_room: MakeRoom::Nothing,
            retire,
        });
    }
    if keys.len() > MAX_KEYS {
        return Err(PluginError::Conflict(format!(
            "IAM lists {} access keys for '{user}', more than its limit of {MAX_KEYS}: nothing was \
             changed; check the account",
            keys.len()
        )));
    }
    if let Some(vault) = vault_in_iam {
        return beside_vault_key(keys, vault, signer, user, is_protected, retire);
    }
    let inactive: Vec<&AccessKey> = keys
        .iter()
        .filter(|k| k.status == KeyStatus::Inactive && k.id != signer && !is_protected(&k.id))
        .collect();
    if let [only] = inactive.as_slice() {
        return Ok(Plan {
            make_room: MakeRoom::Inactive(only.id.clone()),
            retire: None,
        });
    }
    let list = describe_keys(keys, signer);
    let recorded = vault.map_or("no key".to_string(), |v| {
        format!("{v}, which IAM does not have")
    });
    Err(PluginError::Conflict(format!(
        "'{user}' already has two access keys, {list}, and the vault records {recorded}: refusing \
         to delete a key that may be in use. Nothing was changed. Delete or deactivate one of them \
         in IAM, or record the one in use in the PAM user record's aws_access_key_id, then run again"
    )))
}

/// Refuses a vault key that another record holds, or that signs rotations.
fn check_vault_key(
    vault: Option<&str>,
    signer: &str,
    is_protected: &dyn Fn(&str) -> bool,
) -> Result<(), PluginError> {
    if let Some(v) = vault.filter(|v| *v != signer && is_protected(v)) {
        return Err(PluginError::Conflict(format!(
            "the PAM user record's key {v} is also held or tracked by another record of the \
             vault: retiring it would break that record. Nothing was changed. Keep each key in \
             one record only, then run again"
        )));
    }
    if vault == Some(signer) {
        return Err(PluginError::InvalidConfig(format!(
            "the PAM user record's key {signer} is also the config's Client ID: rotating it would \
             delete the key that signs rotations. Give the config record a separate key (the user \
             guide's 'one for client creation, one for key rotation')"
        )));
    }
    Ok(())
}

/// Two keys, one the vault's: room is made with the other, unless it signs
/// (then the vault's own key goes first) or another record holds it.
fn beside_vault_key(
    keys: &[AccessKey],
    vault: &str,
    signer: &str,
    user: &str,
    is_protected: &dyn Fn(&str) -> bool,
    retire: Option<String>,
) -> Result<Plan, PluginError> {
    let other = keys
        .iter()
        .find(|k| k.id != vault)
        .expect("two distinct keys");
    if other.id == signer {
        return Ok(Plan {
            make_room: MakeRoom::VaultKey(vault.to_string()),
            retire: None,
        });
    }
    if is_protected(&other.id) {
        return Err(PluginError::Conflict(format!(
            "'{user}' has two access keys: the vault's {vault} and {}, which another record \
             of the vault holds or tracks. Deleting it to make room would break that record. \
             Nothing was changed. Give each record its own IAM user, or remove the key from \
             the other record, then run again",
            other.id
        )));
    }
    Ok(Plan {
        make_room: MakeRoom::Leftover(other.id.clone()),
        retire,
    })
}

/// `ID (Status, created DATE) and ID (...)`, for a refusal.
/// The signer's id may be masked (a `secret` field): it is named by its role.
fn describe_keys(keys: &[AccessKey], signer: &str) -> String {
    keys.iter()
        .map(|k| {
            // Dates as IAM gives them: date arithmetic would not fit the component's size budget.
            let created = if k.created.is_empty() {
                "creation date unknown".to_string()
            } else {
                format!("created {}", k.created)
            };
            let status = match k.status {
                KeyStatus::Active => "Active",
                KeyStatus::Inactive => "Inactive",
            };
            let role = if k.id == signer {
                ", the config's Client ID"
            } else {
                ""
            };
            format!("{} ({status}, {created}{role})", k.id)
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, status: KeyStatus, created: &str) -> AccessKey {
        AccessKey {
            id: id.into(),
            status,
            created: created.into(),
        }
    }
    fn active(id: &str) -> AccessKey {
        key(id, KeyStatus::Active, "2024-01-01T00:00:00Z")
    }

    #[test]
    fn below_the_limit_deletes_nothing() {
        let p = plan(&[active("V")], Some("V"), "S", "u", &|_| false).unwrap();
        assert_eq!(p.make_room, MakeRoom::Nothing);
        assert_eq!(p.retire.as_deref(), Some("V"));
        let p = plan(&[], None, "S", "u", &|_| false).unwrap();
        assert_eq!(
            p,
            Plan {
                make_room: MakeRoom::Nothing,
                retire: None
            }
        );
    }

    #[test]
    fn unknown_key_below_the_limit_is_kept() {
        let p = plan(&[active("X")], Some("GONE"), "S", "u", &|_| false).unwrap();
        assert_eq!(p.make_room, MakeRoom::Nothing);
        assert_eq!(p.retire, None);
    }

    #[test]
    fn leftover_beside_the_vault_key_goes() {
        for keys in [[active("V"), active("X")], [active("X"), active("V")]] {
            let p = plan(&keys, Some("V"), "S", "u", &|_| false).unwrap();
            assert_eq!(p.make_room, MakeRoom::Leftover("X".into()));
            assert_eq!(p.retire.as_deref(), Some("V"));
        }
    }

    #[test]
    fn signer_beside_the_vault_key_forces_the_exception() {
        let p = plan(&[active("V"), active("S")], Some("V"), "S", "u", &|_| false).unwrap();
        assert_eq!(p.make_room, MakeRoom::VaultKey("V".into()));
        assert_eq!(p.retire, None);
        assert!(p.describe("u", &[], OldKeyAction::Delete)[0].contains("no spare"));
    }

    #[test]
    fn plan_says_when_a_deactivated_key_goes_before_its_grace_ends() {
        let keys = [active("V"), key("OLD", KeyStatus::Inactive, "")];
        let p = plan(&keys, Some("V"), "S", "u", &|_| false).unwrap();
        assert_eq!(p.make_room, MakeRoom::Leftover("OLD".into()));
        let mut d = Deactivated {
            id: "OLD".into(),
            since: "2026-11-20T10:00:00Z".into(),
            expired: false,
            kept: false,
        };
        let notes = p.describe("u", std::slice::from_ref(&d), OldKeyAction::Deactivate);
        assert!(
            notes[0].contains("before its grace period ends"),
            "{notes:?}"
        );
        assert!(notes[0].contains("2026-11-20T10:00:00Z"), "{notes:?}");
        assert!(notes[2].contains("deactivate the old key V"), "{notes:?}");
        d.expired = true;
        let notes = p.describe("u", &[d], OldKeyAction::Delete);
        assert!(notes[0].contains("grace period has ended"), "{notes:?}");
        assert!(notes[2].contains("delete the old key V"), "{notes:?}");
    }

    #[test]
    fn two_unknown_keys_with_one_inactive() {
        let keys = [key("A", KeyStatus::Inactive, ""), active("B")];
        let p = plan(&keys, None, "S", "u", &|_| false).unwrap();
        assert_eq!(p.make_room, MakeRoom::Inactive("A".into()));
    }

    #[test]
    fn two_unknown_active_keys_are_refused_with_ids_and_dates() {
        let keys = [
            key("AKIA1", KeyStatus::Active, "2024-03-01T10:00:00Z"),
            key("AKIA2", KeyStatus::Active, "2024-03-11T10:00:00Z"),
        ];
        let err = plan(&keys, Some("OTHER"), "S", "bob", &|_| false).unwrap_err();
        let PluginError::Conflict(m) = err else {
            panic!("{err:?}")
        };
        assert!(
            m.contains("AKIA1 (Active, created 2024-03-01T10:00:00Z)"),
            "{m}"
        );
        assert!(
            m.contains("AKIA2 (Active, created 2024-03-11T10:00:00Z)"),
            "{m}"
        );
        assert!(m.contains("Nothing was changed"));
        let both_inactive = [
            key("A", KeyStatus::Inactive, ""),
            key("B", KeyStatus::Inactive, ""),
        ];
        assert!(plan(&both_inactive, None, "S", "u", &|_| false).is_err());
    }

    #[test]
    fn the_signer_is_never_made_room_for() {
        // Two unknown keys, one of them the signer: only the inactive non-signer may go.
        let keys = [active("S"), active("B")];
        assert!(plan(&keys, None, "S", "u", &|_| false).is_err());
        let keys = [active("S"), key("B", KeyStatus::Inactive, "")];
        assert_eq!(
            plan(&keys, None, "S", "u", &|_| false).unwrap().make_room,
            MakeRoom::Inactive("B".into())
        );
    }

    #[test]
    fn vault_key_that_signs_is_refused() {
        let err = plan(&[active("K")], Some("K"), "K", "u", &|_| false).unwrap_err();
        assert!(matches!(err, PluginError::InvalidConfig(_)));
    }

    /// I6: a key another record holds is never made room with nor retired.
    #[test]
    fn another_records_key_is_never_deleted() {
        let other = |id: &str| id == "B";
        let err = plan(&[active("V"), active("B")], Some("V"), "S", "u", &other).unwrap_err();
        assert!(
            matches!(&err, PluginError::Conflict(m) if m.contains("B")),
            "{err:?}"
        );
        let err = plan(&[active("V")], Some("V"), "S", "u", &|id| id == "V").unwrap_err();
        assert!(matches!(err, PluginError::Conflict(_)));
        let keys = [active("A"), key("B", KeyStatus::Inactive, "")];
        assert!(plan(&keys, None, "S", "u", &other).is_err());
        assert_eq!(
            plan(&[active("V"), active("B")], Some("V"), "S", "u", &|_| false)
                .unwrap()
                .make_room,
            MakeRoom::Leftover("B".into())
        );
    }
}
