//! The embedded store's search index, held in memory: postings of (key, resource), rebuilt at
//! start from the keys each resource's row in `current_keys` holds (the durable copy, written
//! in the same transaction as the version).
//!
//! Why in memory: an inverted index in a copy-on-write B-tree rewrites a page for nearly every
//! key of every write, since a resource's keys sort far apart. With about 35 keys per resource,
//! that made creates three to four times slower (measured, BENCHMARKS.md); held here, a write
//! costs one row of keys and a few microseconds of postings. The price is memory, about a
//! kilobyte per resource (BENCHMARKS.md has the figure), and a rebuild at start.
//!
//! Updated only after the transaction that wrote the keys is durable, by the writer's caller
//! before it answers (so a client that has its 201 finds the resource by search), not by the
//! writer thread, which goes on with the next group meanwhile; each resource's keys carry
//! their version, so callers finishing out of order cannot bring back older keys.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One key of one type, as the postings name it: `Type ␀ key`.
fn typed(resource_type: &str, key: &str) -> String {
    format!("{resource_type}\u{0}{key}")
}

#[derive(Default)]
pub(super) struct MemoryIndex {
    /// Every key in use, sorted (ranges are scanned here), with its number.
    keys: BTreeMap<String, u32>,
    next_key: u32,
    /// `Type/id` → resource number, and back.
    resources: HashMap<String, u32>,
    names: Vec<(String, String)>,
    /// (key number, resource number).
    postings: BTreeSet<(u32, u32)>,
    /// Each resource's keys, to remove them on its next write, and the version they are of.
    of_resource: HashMap<u32, (u64, Vec<u32>)>,
}

impl MemoryIndex {
    /// Makes `keys` the keys `Type/id` is found by (none: it is not found at all), as of its
    /// version `version`; keys of an older version than the ones held are ignored, so writers
    /// may apply theirs in any order once their commits are durable (0: at start).
    pub(super) fn set(&mut self, resource_type: &str, id: &str, version: u64, keys: &[String]) {
        let name = format!("{resource_type}/{id}");
        let resource = match self.resources.get(&name) {
            Some(&n) => n,
            None => {
                let n = self.names.len() as u32;
                self.names.push((resource_type.to_owned(), id.to_owned()));
                self.resources.insert(name, n);
                n
            }
        };
        if self
            .of_resource
            .get(&resource)
            .is_some_and(|(held, _)| *held > version)
        {
            return;
        }
        let (_, old) = self.of_resource.remove(&resource).unwrap_or_default();
        for key in old {
            self.postings.remove(&(key, resource));
        }
        let mut numbers = Vec::with_capacity(keys.len());
        // One buffer for every key's typed form: a key already in use (most are) costs no
        // allocation.
        let mut text = String::with_capacity(resource_type.len() + 64);
        for key in keys {
            text.clear();
            text.push_str(resource_type);
            text.push('\u{0}');
            text.push_str(key);
            let number = match self.keys.get(text.as_str()) {
                Some(&n) => n,
                None => {
                    let n = self.next_key;
                    self.next_key += 1;
                    self.keys.insert(text.clone(), n);
                    n
                }
            };
            self.postings.insert((number, resource));
            numbers.push(number);
        }
        self.of_resource.insert(resource, (version, numbers));
    }

    /// The ids of resources of `resource_type` with a key in one of `ranges` (`[from, to)`).
    pub(super) fn ids_in(
        &self,
        resource_type: &str,
        ranges: &[(String, String)],
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (from, to) in ranges {
            let (from, to) = (typed(resource_type, from), typed(resource_type, to));
            if from >= to {
                continue;
            }
            for (_, &key) in self.keys.range(from..to) {
                for &(_, resource) in self.postings.range((key, 0)..=(key, u32::MAX)) {
                    if let Some((_, id)) = self.names.get(resource as usize) {
                        out.insert(id.clone());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_by_key_and_range_and_forgets_replaced_keys() {
        let mut index = MemoryIndex::default();
        index.set("Patient", "a", 1, &["n\u{1}smith".into(), "g\u{1}f".into()]);
        index.set("Patient", "b", 1, &["n\u{1}smythe".into()]);
        index.set("Observation", "a", 1, &["n\u{1}smith".into()]);
        let exact = [("n\u{1}smith".to_owned(), "n\u{1}smith\u{0}".to_owned())];
        assert_eq!(
            index.ids_in("Patient", &exact),
            BTreeSet::from(["a".to_owned()])
        );
        let prefix = [("n\u{1}sm".to_owned(), "n\u{1}sm\u{10ffff}".to_owned())];
        assert_eq!(index.ids_in("Patient", &prefix).len(), 2);
        index.set("Patient", "a", 2, &["n\u{1}jones".into()]);
        // An older version's keys, applied late, change nothing.
        index.set("Patient", "a", 1, &["n\u{1}smith".into()]);
        assert!(
            index.ids_in("Patient", &exact).is_empty(),
            "old keys are gone"
        );
        assert_eq!(
            index.ids_in("Observation", &exact).len(),
            1,
            "types are apart"
        );
        index.set("Patient", "b", 2, &[]);
        assert!(index.ids_in("Patient", &prefix).is_empty());
    }
}
