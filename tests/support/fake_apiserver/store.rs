//! The fake apiserver's object store: objects by (resource, namespace,
//! name) as JSON, one global increasing resourceVersion, and the history
//! of changes that watches replay from a resourceVersion (until it is
//! compacted away, after which such a watch gets 410 Gone).

use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Where an object lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

/// One change: the object before and after (None: absent).
#[derive(Debug, Clone)]
pub struct Change {
    pub rv: u64,
    pub resource: String,
    pub namespace: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// Why a write was refused (HTTP status, reason, message).
#[derive(Debug)]
pub struct Refusal(pub u16, pub &'static str, pub String);

#[derive(Default)]
pub struct Store {
    pub rv: u64,
    pub objects: BTreeMap<Key, Value>,
    pub history: Vec<Change>,
    /// Watches from a resourceVersion below this get 410.
    pub compacted: u64,
}

/// apiVersion and kind of the resources the fake serves.
pub fn type_of(resource: &str) -> Option<(&'static str, &'static str)> {
    Some(match resource {
        "pods" => ("v1", "Pod"),
        "configmaps" => ("v1", "ConfigMap"),
        "endpoints" => ("v1", "Endpoints"),
        "services" => ("v1", "Service"),
        "endpointslices" => ("discovery.k8s.io/v1", "EndpointSlice"),
        _ => return None,
    })
}

/// RFC 7386 JSON merge patch (what Patroni's strategic merge patches of
/// labels and annotations amount to): null removes a key.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn rv_of(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

impl Store {
    /// Records `new` (None: deletion) at `key` with the next resourceVersion.
    fn commit(&mut self, key: Key, new: Option<Value>) -> Change {
        self.rv += 1;
        let rv = self.rv;
        let new = new.map(|mut object| {
            let (api_version, kind) = type_of(&key.resource).unwrap_or(("v1", "Unknown"));
            object["apiVersion"] = json!(api_version);
            object["kind"] = json!(kind);
            let meta = &mut object["metadata"];
            meta["name"] = json!(key.name);
            meta["namespace"] = json!(key.namespace);
            meta["resourceVersion"] = json!(rv.to_string());
            if meta.get("uid").is_none() {
                meta["uid"] = json!(format!("uid-{rv}"));
                meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            object
        });
        let old = match &new {
            Some(object) => self.objects.insert(key.clone(), object.clone()),
            // A deletion is reported with the last state at the new version.
            None => self.objects.remove(&key).map(|mut o| {
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
                o
            }),
        };
        let change = Change {
            rv,
            resource: key.resource,
            namespace: key.namespace,
            old,
            new,
        };
        self.history.push(change.clone());
        change
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// POST: fails with 409 when the object exists.
    pub fn create(&mut self, key: Key, object: Value) -> Result<Change, Refusal> {
        if self.objects.contains_key(&key) {
            return Err(Refusal(
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", key.resource, key.name),
            ));
        }
        Ok(self.commit(key, Some(object)))
    }

    /// PUT: replaces, or creates when absent; a resourceVersion in the
    /// body must match (409 otherwise).
    pub fn replace(&mut self, key: Key, object: Value) -> Result<Change, Refusal> {
        self.check_precondition(&key, &object)?;
        Ok(self.commit(key, Some(object)))
    }

    /// PATCH (merge): 404 when absent; a resourceVersion in the patch is a
    /// precondition (409 when stale).
    pub fn patch(&mut self, key: Key, patch: &Value) -> Result<Change, Refusal> {
        self.check_precondition(&key, patch)?;
        let Some(mut object) = self.objects.get(&key).cloned() else {
            return Err(Refusal(
                404,
                "NotFound",
                format!("{} \"{}\" not found", key.resource, key.name),
            ));
        };
        let mut patch = patch.clone();
        if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        merge(&mut object, &patch);
        Ok(self.commit(key, Some(object)))
    }

    /// DELETE: 404 when absent.
    pub fn delete(&mut self, key: Key) -> Result<Change, Refusal> {
        if !self.objects.contains_key(&key) {
            return Err(Refusal(
                404,
                "NotFound",
                format!("{} \"{}\" not found", key.resource, key.name),
            ));
        }
        Ok(self.commit(key, None))
    }

    fn check_precondition(&self, key: &Key, body: &Value) -> Result<(), Refusal> {
        let Some(wanted) = rv_of(body) else {
            return Ok(());
        };
        match self.objects.get(key).and_then(rv_of) {
            Some(current) if current == wanted => Ok(()),
            Some(_) => Err(Refusal(409, "Conflict", format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                key.resource, key.name
            ))),
            None => Err(Refusal(404, "NotFound", format!("{} \"{}\" not found", key.resource, key.name))),
        }
    }

    /// Forgets the history: watches from any earlier version get 410.
    pub fn compact(&mut self) {
        self.compacted = self.rv;
        self.history.clear();
    }
}

/// A label or field selector: comma-separated requirements, all of which
/// must hold (`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`).
#[derive(Debug, Clone, Default)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug, Clone)]
enum Requirement {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

impl Selector {
    pub fn parse(text: &str) -> Selector {
        let mut terms = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    terms.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        terms.push(&text[start..]);
        let list = |s: &str| {
            s.trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split(',')
                .map(|v| v.trim().to_string())
                .collect()
        };
        Selector(
            terms
                .into_iter()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    if let Some((k, v)) = t.split_once("!=") {
                        Requirement::Ne(k.trim().into(), v.trim().into())
                    } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                        Requirement::Eq(k.trim().into(), v.trim().into())
                    } else if let Some((k, v)) = t.split_once(" notin ") {
                        Requirement::NotIn(k.trim().into(), list(v))
                    } else if let Some((k, v)) = t.split_once(" in ") {
                        Requirement::In(k.trim().into(), list(v))
                    } else if let Some(k) = t.strip_prefix('!') {
                        Requirement::Absent(k.trim().into())
                    } else {
                        Requirement::Exists(t.into())
                    }
                })
                .collect(),
        )
    }

    /// Whether `lookup` (a key's value, if any) satisfies every requirement.
    pub fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => lookup(k).as_deref() == Some(v.as_str()),
            Requirement::Ne(k, v) => lookup(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, vs) => lookup(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => lookup(k).is_none_or(|x| !vs.contains(&x)),
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::Absent(k) => lookup(k).is_none(),
        })
    }
}

/// A list or watch request's filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: String,
    pub labels: Selector,
    pub fields: Selector,
}

impl Filter {
    pub fn matches(&self, namespace: &str, object: &Value) -> bool {
        namespace == self.namespace
            && self.labels.matches(|k| {
                object
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            && self.fields.matches(|k| match k {
                "metadata.name" => object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                "metadata.namespace" => Some(namespace.to_string()),
                _ => None,
            })
    }

    /// What a watch with this filter reports for `change`: ADDED when an
    /// object starts to match, DELETED when it stops, MODIFIED while it
    /// matches; None when it concerns no object this watch sees.
    pub fn event_for<'c>(&self, change: &'c Change) -> Option<(&'static str, &'c Value)> {
        let was = change
            .old
            .as_ref()
            .filter(|o| self.matches(&change.namespace, o));
        let is = change
            .new
            .as_ref()
            .filter(|o| self.matches(&change.namespace, o));
        match (was, is) {
            (None, Some(new)) => Some(("ADDED", new)),
            (Some(_), Some(new)) => Some(("MODIFIED", new)),
            (Some(_), None) => {
                // Stopped matching (deleted, or its labels changed): report
                // its newest state.
                Some(("DELETED", change.new.as_ref().or(change.old.as_ref())?))
            }
            (None, None) => None,
        }
    }
}
