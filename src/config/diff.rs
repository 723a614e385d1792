//! What changed between two configs: a pure function with its own tests,
//! so that a reload restarts exactly what it must.
//!
//! An endpoint is *changed* when anything its polls use differs: its
//! definition (what is asked and how the answer is read, see
//! [`Endpoint::definition`]) or how it runs (schedule, limits, `when`,
//! item events, health, targets, history). A changed endpoint restarts; an
//! unchanged one keeps its place in the schedule.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Config, Endpoint, Target};
use crate::schedule::Schedule;

/// The difference between a running config and a new one.
#[derive(Debug, Default)]
pub struct ConfigDiff {
    pub endpoints: Changes<Endpoint>,
    pub targets: Changes<Target>,
    /// Top-level keys that changed but take effect only at a restart.
    pub restart_only: Vec<&'static str>,
}

/// How one kind of table changed, by name, in the new config's order.
#[derive(Debug)]
pub struct Changes<T> {
    pub added: Vec<Arc<T>>,
    pub changed: Vec<Arc<T>>,
    pub unchanged: Vec<Arc<T>>,
    /// Names of those no longer in the config.
    pub removed: Vec<String>,
}

impl<T> Default for Changes<T> {
    fn default() -> Self {
        Changes {
            added: Vec::new(),
            changed: Vec::new(),
            unchanged: Vec::new(),
            removed: Vec::new(),
        }
    }
}

impl<T> Changes<T> {
    fn new(
        old: &[Arc<T>],
        new: &[Arc<T>],
        name: impl Fn(&T) -> &str,
        same: impl Fn(&T, &T) -> bool,
    ) -> Changes<T> {
        let running: HashMap<&str, &Arc<T>> = old.iter().map(|item| (name(item), item)).collect();
        let mut changes = Changes::default();
        for item in new {
            match running.get(name(item)) {
                None => changes.added.push(item.clone()),
                Some(old) if same(old, item) => changes.unchanged.push(item.clone()),
                Some(_) => changes.changed.push(item.clone()),
            }
        }
        let wanted: std::collections::HashSet<&str> = new.iter().map(|item| name(item)).collect();
        changes.removed = old
            .iter()
            .map(|item| name(item))
            .filter(|name| !wanted.contains(name))
            .map(str::to_string)
            .collect();
        changes
    }

    /// `2 started, 1 stopped, 0 restarted`, counting added, removed, changed.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.added.len(), self.removed.len(), self.changed.len())
    }
}

impl ConfigDiff {
    /// What `new` changes compared with `old`.
    pub fn new(old: &Config, new: &Config) -> ConfigDiff {
        let restart_only = [
            ("state_dir", old.state_dir != new.state_dir),
            ("admin", old.admin != new.admin),
            (
                "max_concurrent_polls",
                old.max_concurrent_polls != new.max_concurrent_polls,
            ),
            ("per_host", old.per_host != new.per_host),
            (
                "per_host_spacing",
                old.per_host_spacing != new.per_host_spacing,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        ConfigDiff {
            endpoints: Changes::new(
                &old.endpoints,
                &new.endpoints,
                |endpoint| &endpoint.name,
                Endpoint::runs_as,
            ),
            targets: Changes::new(
                &old.targets,
                &new.targets,
                |target| &target.name,
                |a, b| a == b,
            ),
            restart_only,
        }
    }

    /// Everything in `config` is new: what start-up applies.
    pub fn start(config: &Config) -> ConfigDiff {
        ConfigDiff {
            endpoints: Changes {
                added: config.endpoints.clone(),
                ..Changes::default()
            },
            targets: Changes {
                added: config.targets.clone(),
                ..Changes::default()
            },
            restart_only: Vec::new(),
        }
    }
}

impl Endpoint {
    /// Whether `other` polls exactly as `self` does, so that a reload may
    /// leave it running.
    pub fn runs_as(&self, other: &Endpoint) -> bool {
        let same_schedule = match (&self.schedule, &other.schedule) {
            (Schedule::Every(a), Schedule::Every(b)) => a == b,
            (Schedule::Cron(a), Schedule::Cron(b)) => a.source == b.source,
            _ => false,
        };
        let source =
            |when: &Option<crate::jq::Jq>| when.as_ref().map(|when| when.source().to_string());
        self.definition == other.definition
            && same_schedule
            && self.timeout == other.timeout
            && self.max_body == other.max_body
            && source(&self.when) == source(&other.when)
            && self.on == other.on
            && self.batch == other.batch
            && self.when_previous == other.when_previous
            && self.seen == other.seen
            && self.fail_after == other.fail_after
            && self.fail_for == other.fail_for
            && self.auth == other.auth
            && self.transport == other.transport
            && self.follow_redirects == other.follow_redirects
            && self.targets == other.targets
            && self.emit_initial == other.emit_initial
            && self.keep_history == other.keep_history
            && self.metrics == other.metrics
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(endpoints: &str) -> Config {
        let text =
            format!("[[target]]\nname = \"t\"\nurl = \"http://127.0.0.1:1/hook\"\n{endpoints}");
        Config::compile(&text, Path::new("c.toml")).unwrap()
    }

    /// An endpoint with `extra`, and a URL and a schedule unless it has its own.
    fn endpoint(name: &str, extra: &str) -> String {
        let has = |key: &str| extra.lines().any(|line| line.starts_with(key));
        let url = match has("url ") {
            true => String::new(),
            false => format!("url = \"http://127.0.0.1:1/{name}\"\n"),
        };
        let every = match has("every ") {
            true => "",
            false => "every = \"1m\"\n",
        };
        format!("[[endpoint]]\nname = \"{name}\"\n{url}{every}{extra}\n")
    }

    fn names(endpoints: &[Arc<Endpoint>]) -> Vec<&str> {
        endpoints.iter().map(|endpoint| &*endpoint.name).collect()
    }

    #[test]
    fn endpoints_are_added_removed_changed_or_left_alone() {
        let old = config(&[endpoint("a", ""), endpoint("b", ""), endpoint("c", "")].concat());
        let new = config(
            &[
                endpoint("a", ""),
                endpoint("c", "every = \"2m\""),
                endpoint("d", ""),
            ]
            .concat(),
        );
        let diff = ConfigDiff::new(&old, &new);
        assert_eq!(names(&diff.endpoints.unchanged), ["a"]);
        assert_eq!(names(&diff.endpoints.changed), ["c"]);
        assert_eq!(names(&diff.endpoints.added), ["d"]);
        assert_eq!(diff.endpoints.removed, ["b"]);
        assert_eq!(diff.endpoints.counts(), (1, 1, 1));
        assert!(diff.targets.changed.is_empty() && diff.targets.unchanged.len() == 1);
        assert!(diff.restart_only.is_empty());
    }

    /// Each key an endpoint's polls use makes it changed; the same text
    /// written differently (another key order) does not.
    #[test]
    fn every_key_that_shapes_a_poll_is_a_change() {
        let base = "timeout = \"5s\"\nheaders = { A = \"1\", B = \"2\" }";
        let changes = [
            "url = \"http://127.0.0.1:1/other\"",
            "every = \"2m\"",
            "timeout = \"6s\"",
            "headers = { A = \"1\", B = \"3\" }",
            "method = \"POST\"",
            "body = \"x\"",
            "max_body = \"1MiB\"",
            "select = \".a\"",
            "ignore = [\"/a\"]",
            "when = \".current != null\"",
            "fail_after = 5",
            "fail_for = \"1h\"",
            "auth = { bearer = \"t\" }",
            "proxy = \"http://127.0.0.1:3128\"",
            "follow_redirects = \"any\"",
            "targets = []",
            "emit_initial = true",
            "keep_history = 3",
            "format = \"text\"",
        ];
        let old = config(&endpoint("a", base));
        let same = config(&endpoint(
            "a",
            "headers = { B = \"2\", A = \"1\" }\ntimeout = \"5s\"",
        ));
        assert_eq!(ConfigDiff::new(&old, &same).endpoints.unchanged.len(), 1);
        for change in changes {
            let key = change.split(' ').next().unwrap();
            let rest: Vec<&str> = base.lines().filter(|line| !line.starts_with(key)).collect();
            let new = config(&endpoint("a", &format!("{}\n{change}", rest.join("\n"))));
            let diff = ConfigDiff::new(&old, &new);
            assert_eq!(names(&diff.endpoints.changed), ["a"], "{change}");
        }
        let items = config(&endpoint("a", "items = \".[]\"\nkey = \".id\""));
        for change in ["key = \".name\"", "on = [\"added\"]", "batch = true"] {
            let key = change.split(' ').next().unwrap();
            let text = if key == "key" {
                format!("items = \".[]\"\n{change}")
            } else {
                format!("items = \".[]\"\nkey = \".id\"\n{change}")
            };
            let diff = ConfigDiff::new(&items, &config(&endpoint("a", &text)));
            assert_eq!(names(&diff.endpoints.changed), ["a"], "{change}");
        }
    }

    #[test]
    fn targets_and_restart_only_keys() {
        let old = config(&endpoint("a", "targets = [\"t\"]"));
        let text = "per_host = 3\n[[target]]\nname = \"t\"\nurl = \"http://127.0.0.1:1/other\"\n[[target]]\nname = \"u\"\nurl = \"http://127.0.0.1:1/u\"\n";
        let new = Config::compile(
            &format!("{text}{}", endpoint("a", "targets = [\"t\"]")),
            Path::new("c.toml"),
        )
        .unwrap();
        let diff = ConfigDiff::new(&old, &new);
        assert_eq!(diff.targets.changed.len(), 1);
        assert_eq!(diff.targets.added.len(), 1);
        assert_eq!(diff.restart_only, ["per_host"]);
        assert_eq!(names(&diff.endpoints.unchanged), ["a"]);
        // An endpoint without `targets` has them all: a new target changes it.
        let all = config(&endpoint("a", ""));
        let more =
            Config::compile(&format!("{text}{}", endpoint("a", "")), Path::new("c.toml")).unwrap();
        assert_eq!(
            names(&ConfigDiff::new(&all, &more).endpoints.changed),
            ["a"]
        );
        let start = ConfigDiff::start(&new);
        assert_eq!(start.endpoints.counts(), (1, 0, 0));
        assert_eq!(start.targets.counts(), (2, 0, 0));
    }
}
