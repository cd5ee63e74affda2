//! Finding snapshots: references (`HOST@latest`, `HOST@daily.0`, id prefixes) and the newest
//! snapshots of a host, as every command that names a snapshot resolves them.

use crate::error::{Error, Result};
use crate::repo::Repository;
use xstore_format::snapshot::Snapshot;

impl Repository {
    /// Resolves a snapshot reference: a unique hex id prefix, `HOST@latest`,
    /// `HOST@latest-complete`, `HOST@TIER.N` (`web1@daily.0`), or `latest`.
    pub fn resolve(&self, reference: &str) -> Result<Snapshot> {
        let fail = |reason: &str| Error::SnapshotRef {
            reference: reference.to_string(),
            reason: reason.to_string(),
        };
        let all = self.snapshots()?;
        if let Some((host, which)) = reference.split_once('@') {
            let of_host: Vec<&Snapshot> = all.iter().filter(|s| s.host == host).collect();
            if of_host.is_empty() {
                return Err(fail("no snapshots of this host"));
            }
            return match which {
                "latest" => Ok(of_host[of_host.len() - 1].clone()),
                "latest-complete" => of_host
                    .iter()
                    .rev()
                    .find(|s| s.is_complete())
                    .map(|s| (*s).clone())
                    .ok_or_else(|| fail("no complete snapshot of this host")),
                tier_position => {
                    let owned: Vec<Snapshot> = of_host.iter().map(|s| (*s).clone()).collect();
                    let positions =
                        xstore_retention::positions(&super::retention::candidates(&owned));
                    let valid = tier_position.rsplit_once('.').is_some_and(|(t, n)| {
                        xstore_retention::validate_tier_name(t).is_ok()
                            && n.parse::<usize>().is_ok()
                    });
                    if !valid {
                        return Err(fail(
                            "unknown selector (use latest, latest-complete or TIER.N such as daily.0)",
                        ));
                    }
                    owned
                        .into_iter()
                        .find(|s| {
                            positions
                                .get(&s.id.to_string())
                                .is_some_and(|p| p.iter().any(|p| p == tier_position))
                        })
                        .ok_or_else(|| fail(&format!("no snapshot at {tier_position}")))
                }
            };
        }
        if reference == "latest" {
            return all
                .last()
                .cloned()
                .ok_or_else(|| fail("repository has no snapshots"));
        }
        let prefix = reference.to_ascii_lowercase();
        if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail(
                "expected an id prefix of 4+ hex digits, HOST@latest or latest",
            ));
        }
        let matches: Vec<&Snapshot> = all
            .iter()
            .filter(|s| s.id.to_string().starts_with(&prefix))
            .collect();
        match matches.len() {
            0 => Err(fail("no such snapshot")),
            1 => Ok(matches[0].clone()),
            n => Err(fail(&format!("ambiguous prefix ({n} snapshots match)"))),
        }
    }
}
