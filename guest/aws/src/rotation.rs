//! The rotation flow: `rotate`, `finalize` and `rollback` (docs/design.md, "One rotation").

use crate::error::PluginError;
use crate::iam::{CallError, Iam};
use crate::model::{Context, CredentialUse, Finalized, OutputField, Rotation, ValueKind};
use crate::plan::{self, KeyStatus, MakeRoom};
use crate::secret::Secret;
use crate::settings::{
    ACCESS_KEY_ID_LABELS, Credentials, OldKeyAction, SECRET_KEY_LABEL, Settings,
};
use crate::transport::{Level, Transport};

/// Checks the user, plans, makes room and creates the new key. Deletes only what
/// the plan needs to make room; the vault's key stays until `finalize`.
pub fn rotate(t: &impl Transport, ctx: &Context) -> Result<Rotation, PluginError> {
    let settings = Settings::resolve(ctx)?;
    let iam = Iam::new(t, &settings);
    let user = &settings.user_name;

    let found = iam.get_user()?;
    iam.log(Level::Info, &format!("IAM user {} exists", found.arn));
    let keys = iam.list_keys()?;
    let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    iam.log(
        Level::Info,
        &format!("'{user}' has access keys [{}]", ids.join(", ")),
    );

    let plan = plan::plan(
        &keys,
        settings.vault_key_id.as_deref(),
        &settings.credentials.key_id,
        user,
        &|id| t.held_elsewhere(id),
    )?;
    let mut notes = Vec::new();
    if let Some(v) = settings
        .vault_key_id
        .as_deref()
        .filter(|v| !ids.contains(v))
    {
        notes.push(format!(
            "the vault's key {v} no longer exists in IAM; the new key replaces it"
        ));
    }
    if ctx.dry_run {
        notes.extend(plan.describe(user, &ctx.deactivated, settings.old_key_action));
        return Ok(Rotation {
            notes,
            retire: plan.retire.into_iter().collect(),
            ..Rotation::default()
        });
    }

    refuse_to_make_room_with_a_kept_key(&plan, ctx, user)?;
    let vault_key_deleted = make_room(&iam, &plan, ctx, &settings, &mut notes)?;

    // The keys that exist now: a key beyond these after an ambiguous create is its orphan.
    let existing: Vec<String> = ids
        .iter()
        .filter(|id| plan.make_room.deletes() != Some(**id))
        .map(|id| id.to_string())
        .collect();
    let made_room = plan.make_room.deletes().is_some();
    let (key_id, secret) = create(&iam, &settings, &existing, made_room).map_err(|e| {
        if vault_key_deleted {
            e.context(format!(
                "the vault's old key {} was deleted to make room, and creating its successor failed; \
                 the config's key still works, so run again to create and store a new key",
                settings.vault_key_id.as_deref().unwrap_or_default()
            ))
        } else {
            e
        }
    })?;
    iam.log(
        Level::Info,
        &format!("created access key {key_id} for '{user}'"),
    );
    Ok(Rotation {
        fields: key_fields(&key_id, secret),
        created: Some(key_id),
        retire: plan.retire.into_iter().collect(),
        deleted: plan
            .make_room
            .deletes()
            .map(str::to_string)
            .into_iter()
            .collect(),
        notes,
    })
}

/// Deletes the key the plan makes room with, if any; true when that was the
/// vault's own key (its successor does not exist yet).
fn make_room(
    iam: &Iam<'_, impl Transport>,
    plan: &plan::Plan,
    ctx: &Context,
    settings: &Settings,
    notes: &mut Vec<String>,
) -> Result<bool, PluginError> {
    let user = &settings.user_name;
    match &plan.make_room {
        MakeRoom::Nothing => Ok(false),
        MakeRoom::Leftover(id) | MakeRoom::Inactive(id) => {
            // A key an earlier rotation deactivated: say whether its grace period was cut short.
            if let Some(note) = ctx
                .deactivated(id)
                .and_then(|_| plan.make_room_note(user, &ctx.deactivated))
            {
                iam.log(Level::Info, &note);
                notes.push(note);
            }
            iam.delete_key(id)?;
            Ok(false)
        }
        MakeRoom::VaultKey(id) => {
            let warning = format!(
                "deleting the vault's key {id} before its successor exists: '{user}' has two keys \
                 and the other one ({}) signs these requests, so there is no spare. Until the new \
                 key is stored, the vault holds a deleted key",
                settings.credentials.key_id
            );
            iam.log(Level::Warn, &warning);
            notes.push(warning);
            iam.delete_key(id)?;
            Ok(true)
        }
    }
}

/// The fields the host stores: the new key's id and its secret.
fn key_fields(key_id: &str, secret: Secret) -> Vec<OutputField> {
    vec![
        OutputField {
            label: ACCESS_KEY_ID_LABELS[0].into(),
            aliases: ACCESS_KEY_ID_LABELS[1..]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            kind: ValueKind::Text,
            value: Secret::new(key_id.to_string()),
        },
        OutputField {
            label: SECRET_KEY_LABEL.into(),
            aliases: vec![],
            kind: ValueKind::Secret,
            value: secret,
        },
    ]
}

/// A key kept for its consumers (`retire-when-unused`) is never deleted to
/// make room: the host retires it first, once IAM shows it unused.
fn refuse_to_make_room_with_a_kept_key(
    plan: &plan::Plan,
    ctx: &Context,
    user: &str,
) -> Result<(), PluginError> {
    match plan.make_room.deletes() {
        Some(id) if ctx.deactivated(id).is_some_and(|d| d.kept) => {
            Err(PluginError::Conflict(format!(
                "'{user}' has two access keys, and making room for a new one would delete {id}, \
                 the old key kept for consumers that may still use it ('retire-when-unused'): \
                 nothing was changed. It is retired once IAM shows it unused for 'Unused Hours'"
            )))
        }
        _ => Ok(()),
    }
}

/// `CreateAccessKey` under I5: after an ambiguous failure, list the keys again,
/// delete any key that appeared (its secret is lost), and try once more.
fn create<T: Transport>(
    iam: &Iam<'_, T>,
    settings: &Settings,
    before: &[String],
    after_making_room: bool,
) -> Result<(String, Secret), PluginError> {
    let started = iam.elapsed();
    let mut attempt = 0;
    let mut ambiguous_retry_used = false;
    loop {
        let err = match iam.create_key() {
            Ok(created) => return Ok(created),
            Err(e) => e,
        };
        if err.maybe_executed() && !ambiguous_retry_used {
            ambiguous_retry_used = true;
            iam.log(
                Level::Warn,
                &format!("CreateAccessKey may or may not have run ({err}); checking IAM before trying again"),
            );
            delete_unknown_new_keys(iam, before)?;
            continue;
        }
        if err.maybe_executed() {
            let deleted = delete_unknown_new_keys(iam, before)?;
            return Err(ambiguous_create_error(iam, err, &deleted));
        }
        // IAM is eventually consistent: right after the delete that made room, it
        // may still count two keys.
        let limit_lag = after_making_room && err.code() == Some("LimitExceeded");
        let pause = limit_lag
            .then(|| iam.next_pause(&settings.retry, attempt, started))
            .flatten();
        match pause {
            Some(p) => {
                iam.log(
                    Level::Warn,
                    &format!(
                        "IAM still counts the deleted key; retrying CreateAccessKey in {} ms",
                        p.as_millis() as u64
                    ),
                );
                iam.pause(p);
                attempt += 1;
            }
            None => return Err(iam.explain(err, "CreateAccessKey")),
        }
    }
}

/// Deletes every key that is not in `before`; returns their ids.
fn delete_unknown_new_keys<T: Transport>(
    iam: &Iam<'_, T>,
    before: &[String],
) -> Result<Vec<String>, PluginError> {
    let mut deleted = Vec::new();
    for key in iam.list_keys()? {
        // A key another record holds is spared (I6), even one that appears only now.
        if !before.contains(&key.id) && !iam.held_elsewhere(&key.id) {
            iam.log(
                Level::Warn,
                &format!("deleting access key {} created by the ambiguous attempt: its secret never arrived", key.id),
            );
            iam.delete_key(&key.id)?;
            deleted.push(key.id);
        }
    }
    Ok(deleted)
}

/// The second ambiguous `CreateAccessKey` in a row: say what happened in IAM.
fn ambiguous_create_error<T: Transport>(
    iam: &Iam<'_, T>,
    err: CallError,
    deleted: &[String],
) -> PluginError {
    let cleanup = if deleted.is_empty() {
        "IAM shows no key it created".to_string()
    } else {
        format!(
            "the key(s) it created ({}) were deleted again, since their secret never arrived",
            deleted.join(", ")
        )
    };
    let why = iam.explain(err, "CreateAccessKey");
    PluginError::Unavailable(format!(
        "CreateAccessKey gave no usable answer twice; {cleanup}. No new key was stored. {why}"
    ))
}

/// Proves the stored key works (STS, with backoff, since IAM is eventually
/// consistent) and that it is the rotated user's; then deletes the old key(s).
pub fn finalize(
    t: &impl Transport,
    ctx: &Context,
    done: &Rotation,
) -> Result<Finalized, PluginError> {
    let settings = Settings::resolve(ctx)?;
    let iam = Iam::new(t, &settings);
    let (Some(key_id), Some(secret)) = (done.created.as_deref(), done.field(SECRET_KEY_LABEL))
    else {
        return Err(PluginError::Failed(
            "finalize was given a rotation without a created key: this is a host bug; nothing was deleted".into(),
        ));
    };
    let new = Credentials {
        key_id: key_id.to_string(),
        secret: secret.clone(),
        session_token: None,
    };
    let kept = if done.retire.is_empty() {
        String::new()
    } else {
        format!(" The old key {} was kept;", done.retire.join(", "))
    };
    let user = iam.get_user().map_err(|e| {
        e.context(format!(
            "the new key {key_id} is stored in the vault but was not verified.{kept} run again \
             to finish"
        ))
    })?;
    let arn = verify(&iam, &settings, &new, &user.arn).map_err(|e| {
        e.context(format!(
            "the new key {key_id} is stored in the vault but could not be verified.{kept} run \
             again to finish, and it will be removed"
        ))
    })?;
    iam.log(
        Level::Info,
        &format!("new key {key_id} authenticates as {arn}"),
    );

    let mut out = Finalized::default();
    for old in &done.retire {
        if t.held_elsewhere(old) {
            out.notes.push(format!(
                "kept the old key {old}: another record of the vault holds or tracks it"
            ));
            continue;
        }
        let (result, done) = match settings.old_key_action {
            OldKeyAction::Delete => (iam.delete_key(old).map(|_| ()), "deleted"),
            OldKeyAction::Deactivate => (iam.deactivate_key(old), "deactivated"),
            OldKeyAction::RetireWhenUnused => {
                out.kept.push(old.clone());
                continue;
            }
        };
        result.map_err(|e| {
            e.context(format!(
                "the new key {key_id} is stored and works, but the old key {old} could not be \
                 {done}; run again and it will be"
            ))
        })?;
        match settings.old_key_action {
            OldKeyAction::Delete => out.retired.push(old.clone()),
            _ => out.deactivated.push(old.clone()),
        }
    }
    Ok(out)
}

/// Deletes the keys an earlier `finalize` deactivated whose grace period has
/// ended (the host keeps the clock), while IAM still shows them `Inactive`.
/// One turned back on, or in use again by the vault or the signer, is kept and
/// no longer tracked.
pub fn purge(t: &impl Transport, ctx: &Context) -> Result<Finalized, PluginError> {
    let settings = Settings::resolve(ctx)?;
    let iam = Iam::new(t, &settings);
    let keys = iam.list_keys()?;
    let mut out = Finalized::default();
    for d in ctx.deactivated.iter().filter(|d| d.expired) {
        let id = d.id.as_str();
        let in_use = settings.vault_key_id.as_deref() == Some(id)
            || settings.credentials.key_id == id
            || t.held_elsewhere(id);
        let kept = |why: &str| {
            format!(
                "kept {id}, deactivated on {}: {why}; it is no longer tracked",
                d.since
            )
        };
        let status = keys.iter().find(|k| k.id == id).map(|k| k.status);
        if d.kept {
            // Kept for consumers, and now unused long enough: turn it off.
            match status {
                None => out.retired.push(d.id.clone()),
                Some(_) if in_use => out.notes.push(kept("a record of the vault holds it now")),
                Some(KeyStatus::Inactive) => out.deactivated.push(d.id.clone()),
                Some(KeyStatus::Active) => {
                    iam.deactivate_key(id)?;
                    out.deactivated.push(d.id.clone());
                }
            }
            continue;
        }
        match status {
            None => out.retired.push(d.id.clone()),
            Some(_) if in_use => out.notes.push(kept("a record of the vault holds it now")),
            Some(KeyStatus::Active) => out.notes.push(kept("it is Active again in IAM")),
            Some(KeyStatus::Inactive) => {
                iam.delete_key(id)?;
                out.retired.push(d.id.clone());
            }
        }
    }
    Ok(out)
}

/// The last use of each kept key, as IAM reports it; the host keeps the clock.
pub fn last_used(t: &impl Transport, ctx: &Context) -> Result<Vec<CredentialUse>, PluginError> {
    let settings = Settings::resolve(ctx)?;
    let iam = Iam::new(t, &settings);
    let mut out = Vec::new();
    for d in ctx.deactivated.iter().filter(|d| d.kept) {
        let use_ = iam.last_use(&d.id)?;
        out.push(CredentialUse {
            id: d.id.clone(),
            found: use_.is_some(),
            last_used: use_.as_ref().and_then(|u| u.date.clone()),
            service: use_.as_ref().and_then(|u| u.service.clone()),
            region: use_.and_then(|u| u.region),
        });
    }
    Ok(out)
}

/// `GetCallerIdentity` with the new key until it works or the verify timeout passes.
fn verify<T: Transport>(
    iam: &Iam<'_, T>,
    settings: &Settings,
    new: &Credentials,
    user_arn: &str,
) -> Result<String, PluginError> {
    let started = iam.elapsed();
    let mut attempt = 0;
    loop {
        let err = match iam.caller_arn(new) {
            Ok(arn) => return check_arn(&arn, user_arn),
            Err(e) => e,
        };
        // A brand-new key is unknown to STS for a while.
        let propagating = matches!(
            err.code(),
            Some("InvalidClientTokenId" | "SignatureDoesNotMatch" | "AccessDenied")
        );
        let budget = crate::retry::RetryPolicy {
            deadline: settings.verify_timeout,
            ..settings.retry
        };
        let pause = (propagating || err.transient())
            .then(|| iam.next_pause(&budget, attempt, started))
            .flatten();
        let Some(pause) = pause else {
            return Err(verify_error(err, settings));
        };
        iam.log(
            Level::Info,
            &format!(
                "new key {} not usable yet ({err}); retrying in {} ms",
                new.key_id,
                pause.as_millis() as u64
            ),
        );
        iam.pause(pause);
        attempt += 1;
    }
}

fn verify_error(err: CallError, settings: &Settings) -> PluginError {
    PluginError::Unavailable(format!(
        "STS GetCallerIdentity with the new key still failed after {} s ({err}); raise 'Verify \
         Timeout Seconds' if IAM is slow to propagate",
        settings.verify_timeout.as_secs()
    ))
}

/// The new key must authenticate as exactly the user `GetUser` named: same
/// partition, account, path and name, compared case-sensitively.
fn check_arn(arn: &str, user_arn: &str) -> Result<String, PluginError> {
    if arn == user_arn {
        Ok(arn.to_string())
    } else {
        Err(PluginError::Failed(format!(
            "the new key authenticates as {arn}, not as {user_arn}, the user GetUser names; it \
             was kept unused. Check the AWS Endpoint URL: an endpoint that answers this is not IAM"
        )))
    }
}

/// Deletes the key this run created, after the host failed to store it.
pub fn rollback(t: &impl Transport, ctx: &Context, done: &Rotation) -> Result<(), PluginError> {
    let settings = Settings::resolve(ctx)?;
    let iam = Iam::new(t, &settings);
    if let Some(id) = &done.created {
        iam.delete_key(id).map_err(|e| {
            e.context(format!(
                "could not delete this run's new key {id}; the next rotation removes it as a leftover"
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_arn;

    #[test]
    fn arn_must_be_the_users_whole_arn() {
        let alice = "arn:aws:iam::123456789012:user/alice";
        assert!(check_arn(alice, alice).is_ok());
        let team = "arn:aws-cn:iam::1:user/ops/team/alice";
        assert!(check_arn(team, team).is_ok());
        for other in [
            "arn:aws:iam::999999999999:user/alice",
            "arn:aws:iam::123456789012:user/ALICE",
            "arn:aws-us-gov:iam::123456789012:user/alice",
            "arn:aws:iam::123456789012:user/other/alice",
            "arn:aws:sts::123456789012:assumed-role/alice/x",
            "garbage",
        ] {
            assert!(check_arn(other, alice).is_err(), "{other} accepted");
        }
    }
}
