//! What the peer told us about its tables (Relation and Type messages), and the table
//! maps built from them.
//!
//! Building a map reads the local catalog, which the assembler must not do (it is pure):
//! the stream asks [`RelationCache::unmapped`] which relation still needs one, maps it
//! against the local node and hands it back with [`RelationCache::insert_map`].

use std::collections::HashMap;
use std::sync::Arc;

use crate::apply::ApplyError;
use crate::protocol::pgoutput::{Oid, Relation, Type};
use crate::table::local::TableMap;

#[derive(Debug, Default)]
pub struct RelationCache {
    relations: HashMap<Oid, Relation>,
    /// Non-built-in types the peer named (Type messages), to compare tables by type name.
    types: HashMap<Oid, Type>,
    maps: HashMap<Oid, Arc<TableMap>>,
}

impl RelationCache {
    /// The peer (re)described a relation: a map built from an older description is stale.
    pub fn define(&mut self, relation: Relation) {
        self.maps.remove(&relation.oid);
        self.relations.insert(relation.oid, relation);
    }

    pub fn define_type(&mut self, t: Type) {
        self.types.insert(t.oid, t);
    }

    #[must_use]
    pub fn types(&self) -> &HashMap<Oid, Type> {
        &self.types
    }

    /// The relation's description when it is known but has no map yet (a miss); `None`
    /// when it is mapped (a hit) or unknown (the change then fails in [`Self::map`]).
    #[must_use]
    pub fn unmapped(&self, oid: Oid) -> Option<&Relation> {
        if self.maps.contains_key(&oid) {
            return None;
        }
        self.relations.get(&oid)
    }

    pub fn insert_map(&mut self, oid: Oid, map: Arc<TableMap>) {
        self.maps.insert(oid, map);
    }

    /// The map for a change to `oid`.
    pub fn map(&self, oid: Oid) -> Result<Arc<TableMap>, ApplyError> {
        if let Some(m) = self.maps.get(&oid) {
            return Ok(m.clone());
        }
        if self.relations.contains_key(&oid) {
            // The stream maps every relation a message names before handing it over.
            return Err(ApplyError::Protocol(format!(
                "relation {oid} was not mapped to a local table before its change"
            )));
        }
        Err(ApplyError::Protocol(format!(
            "change for relation {oid} before its Relation message"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::testing::{relation, table_map};

    #[test]
    fn a_known_relation_misses_until_mapped_then_hits() {
        let mut cache = RelationCache::default();
        cache.define(relation(7, &["id", "v"]));
        assert_eq!(cache.unmapped(7).map(|r| r.oid), Some(7));
        assert!(cache.map(7).is_err());
        let map = table_map(&["id", "v"], &[0], &[]);
        cache.insert_map(7, map.clone());
        assert!(cache.unmapped(7).is_none());
        assert!(Arc::ptr_eq(&cache.map(7).unwrap(), &map));
    }

    #[test]
    fn an_unknown_relation_is_an_error_not_a_miss() {
        let cache = RelationCache::default();
        assert!(cache.unmapped(9).is_none());
        let err = cache.map(9).unwrap_err().to_string();
        assert!(
            err.contains("relation 9 before its Relation message"),
            "{err}"
        );
    }

    #[test]
    fn a_new_description_drops_the_old_map() {
        let mut cache = RelationCache::default();
        cache.define(relation(7, &["id"]));
        cache.insert_map(7, table_map(&["id"], &[0], &[]));
        cache.define(relation(7, &["id", "added"]));
        assert_eq!(cache.unmapped(7).map(|r| r.columns.len()), Some(2));
    }
}
