//! Who gets an alert: the first `[[email.routes]]` entry that matches it, else `email.to`.
//!
//! First match wins, as in Alertmanager's routing tree, so an operator reads the routes top
//! down and stops at the first that fits; narrow routes go before broad ones. (Unlike
//! `[[overrides]]`, where later entries win: those layer settings field by field, while a
//! route picks one destination.)

use globset::GlobMatcher;
use lettre::message::Mailbox;

use crate::alert::Alert;
use crate::config::{compile_glob, parse_mailbox, EmailSettings};

/// Index of a distinct set of recipients in [`Router::recipients`]. Alerts are grouped
/// by it, so two routes listing the same people (in any order) share one message.
pub type RecipientSet = usize;

struct Route {
    stages: GlobMatcher,
    metrics: GlobMatcher,
    to: RecipientSet,
}

pub struct Router {
    routes: Vec<Route>,
    default: RecipientSet,
    sets: Vec<Vec<Mailbox>>,
}

impl Router {
    /// Fails only on settings that did not pass validation.
    pub fn new(settings: &EmailSettings) -> anyhow::Result<Router> {
        let mut router = Router {
            routes: Vec::with_capacity(settings.routes.len()),
            default: 0,
            sets: Vec::new(),
        };
        router.default = router.intern("email.to", &settings.to)?;
        for (i, route) in settings.routes.iter().enumerate() {
            let key = format!("email.routes[{i}]");
            let stages = route.stages.as_deref().unwrap_or("*");
            let metrics = route.metrics.as_deref().unwrap_or("*");
            let to = router.intern(&format!("{key}.to"), &route.to)?;
            router.routes.push(Route {
                stages: compile_glob(&format!("{key}.stages"), stages)?,
                metrics: compile_glob(&format!("{key}.metrics"), metrics)?,
                to,
            });
        }
        Ok(router)
    }

    /// The recipients of `alert`.
    pub fn route(&self, alert: &Alert) -> RecipientSet {
        let stage_path = format!("{}/{}", alert.pipeline, alert.stage);
        self.routes
            .iter()
            .find(|r| r.stages.is_match(&stage_path) && r.metrics.is_match(&alert.metric))
            .map_or(self.default, |r| r.to)
    }

    pub fn recipients(&self, set: RecipientSet) -> &[Mailbox] {
        &self.sets[set]
    }

    /// Parses `addresses` and returns the index of that set of recipients, compared by
    /// address alone (case-insensitively), so order, duplicates and display names do not
    /// split one audience into two messages.
    fn intern(&mut self, key: &str, addresses: &[String]) -> anyhow::Result<RecipientSet> {
        let mut set: Vec<Mailbox> = Vec::with_capacity(addresses.len());
        for (i, address) in addresses.iter().enumerate() {
            let mailbox = parse_mailbox(&format!("{key}[{i}]"), address)?;
            if !set.iter().any(|m| same_address(m, &mailbox)) {
                set.push(mailbox);
            }
        }
        set.sort_by_key(address_key);
        let existing = self.sets.iter().position(|s| {
            s.len() == set.len() && s.iter().zip(&set).all(|(a, b)| same_address(a, b))
        });
        Ok(existing.unwrap_or_else(|| {
            self.sets.push(set);
            self.sets.len() - 1
        }))
    }
}

fn address_key(m: &Mailbox) -> String {
    m.email.to_string().to_ascii_lowercase()
}

fn same_address(a: &Mailbox, b: &Mailbox) -> bool {
    address_key(a) == address_key(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EmailRoute, Settings};
    use crate::sink::email::render::tests::alert;

    fn router(routes: &[(&str, Option<&str>, &[&str])]) -> Router {
        let mut email = Settings::defaults().email;
        email.to = vec!["oncall@example.com".into()];
        email.routes = routes
            .iter()
            .map(|(stages, metrics, to)| EmailRoute {
                stages: Some(stages.to_string()),
                metrics: metrics.map(str::to_string),
                to: to.iter().map(|s| s.to_string()).collect(),
            })
            .collect();
        Router::new(&email).unwrap()
    }

    fn to(router: &Router, pipeline: &str, stage: &str, metric: &str) -> Vec<String> {
        let mut a = alert();
        a.pipeline = pipeline.into();
        a.stage = stage.into();
        a.metric = metric.into();
        router
            .recipients(router.route(&a))
            .iter()
            .map(|m| m.email.to_string())
            .collect()
    }

    #[test]
    fn first_matching_route_wins_and_the_default_takes_the_rest() {
        let r = router(&[
            ("billing/load", None, &["loader@example.com"]),
            ("billing/*", None, &["billing@example.com"]),
            ("*", Some("quality.*"), &["dq@example.com"]),
        ]);
        assert_eq!(to(&r, "billing", "load", "records"), ["loader@example.com"]);
        assert_eq!(
            to(&r, "billing", "load", "quality.null_rate"),
            ["loader@example.com"],
            "the first match wins, not the most specific or the last"
        );
        assert_eq!(
            to(&r, "billing", "transform", "records"),
            ["billing@example.com"]
        );
        assert_eq!(
            to(&r, "orders", "load", "quality.null_rate"),
            ["dq@example.com"]
        );
        assert_eq!(to(&r, "orders", "load", "records"), ["oncall@example.com"]);
        // a glob over "pipeline/stage" cannot be fooled by a slash inside a name's text
        assert_eq!(
            to(&r, "orders", "billing/x", "records"),
            ["oncall@example.com"]
        );
    }

    #[test]
    fn equal_recipient_lists_are_one_set() {
        let r = router(&[
            ("a/*", None, &["X <x@example.com>", "y@example.com"]),
            (
                "b/*",
                None,
                &["y@example.com", "x@EXAMPLE.com", "y@example.com"],
            ),
        ]);
        let mut a = alert();
        a.pipeline = "a".into();
        let mut b = alert();
        b.pipeline = "b".into();
        assert_eq!(r.route(&a), r.route(&b));
        assert_eq!(r.recipients(r.route(&a)).len(), 2);
    }
}
