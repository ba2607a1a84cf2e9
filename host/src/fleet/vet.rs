//! Vetting a pass's members as `select` reads them: who holds which
//! credential (I6), and which members may rotate what they name (a config
//! record that is one, in scope, no two members with one subject). A member
//! that fails here fails alone, due or not.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::fleet::select::Work;
use crate::fleet::{Entry, PassReport};
use crate::holdings::Holdings;
use crate::record::Record;
use crate::rotation::identity::GatewayIdentity;
use crate::rotation::job::Records;
use crate::rotation::vetting::{self, Subjects, VetError};
use crate::sandbox::plugin::Subject;
use crate::sandbox::plugin_set::PluginSet;

/// What vetting learnt so far in one pass, one record at a time: a vault is
/// never held in memory twice.
pub(super) struct Vetter<'a> {
    plugins: &'a PluginSet,
    id_fields: Vec<String>,
    holdings: Arc<Holdings>,
    /// One per plugin of the set, in its order.
    subjects: Vec<Subjects<'a>>,
    good: BTreeMap<String, (Subject, usize)>,
    failed: BTreeMap<String, VetError>,
}

impl<'a> Vetter<'a> {
    /// `id_fields`: the fields that name a credential, for any plugin of the set.
    pub(super) fn new(
        plugins: &'a PluginSet,
        identity: &'a GatewayIdentity,
        id_fields: Vec<String>,
    ) -> Self {
        Self {
            plugins,
            id_fields,
            holdings: Arc::new(Holdings::default()),
            subjects: plugins
                .members()
                .iter()
                .map(|m| Subjects::new(&m.plugin, identity))
                .collect(),
            good: BTreeMap::new(),
            failed: BTreeMap::new(),
        }
    }

    /// Notes the credentials any record of the vault holds.
    pub(super) fn hold(&self, record: &Record) {
        self.holdings.add_record(record, &self.id_fields);
    }

    /// Vets one fleet member: its config record, its plugin, its subject's scope.
    pub(super) async fn member(&mut self, records: &Records) {
        let uid = records.user.uid.clone();
        let checked = match vetting::check_config(&records.user, &records.config, true)
            .and_then(|()| vetting::plugin_for(self.plugins, &uid, &records.config))
        {
            Ok(i) => self.subjects[i].of(records).await.and_then(|s| {
                vetting::check_scope(&uid, &s, &records.config, true).map(|()| (s, i))
            }),
            Err(e) => Err(e),
        };
        match checked {
            Ok(s) => {
                self.good.insert(uid, s);
            }
            Err(e) => {
                self.failed.insert(uid, e);
            }
        }
    }

    /// The work that passed, each with its subject and plugin; failures go
    /// into the report. Also returns who holds what, for the rotations.
    pub(super) fn finish(
        mut self,
        work: Vec<Work>,
        report: &mut PassReport,
    ) -> (Vec<Work>, Arc<Holdings>) {
        // Per plugin: a plugin's subjects cannot fail another plugin's records.
        for i in 0..self.plugins.members().len() {
            self.failed.extend(vetting::duplicates(
                self.good
                    .iter()
                    .filter(|(_, (_, p))| *p == i)
                    .map(|(u, (s, _))| (u.as_str(), s)),
            ));
        }
        // A record already reported (a bad field, or disabled) is reported once.
        for e in report.failed.iter().chain(&report.skipped) {
            self.failed.remove(&e.user_uid);
        }
        let failed = self.failed;
        report.not_due.retain(|e| !failed.contains_key(&e.user_uid));
        let kept = work
            .into_iter()
            .filter(|w| !failed.contains_key(&w.job.user_uid))
            .map(|mut w| {
                if let Some((s, i)) = self.good.remove(&w.job.user_uid) {
                    w.subject = Some(s);
                    w.plugin = i;
                }
                w
            })
            .collect();
        report.failed.extend(failed.iter().map(|(uid, e)| {
            let mut entry = Entry::new(uid);
            entry.exit_code = Some(e.exit());
            entry.error = Some(format!("{e}; the rest of the fleet was rotated"));
            entry
        }));
        (kept, self.holdings)
    }
}
