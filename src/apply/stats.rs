//! Counters of the apply path's work.

/// Counters of one chunk's work.
#[derive(Debug, Default, Clone, Copy)]
pub struct ApplyStats {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    pub skipped: u64,
    pub conflicts: u64,
    /// The chunk was written and committed in one message (`super::one_message`).
    pub one_message: bool,
}

impl ApplyStats {
    /// Adds `other`'s counts to these.
    pub(super) fn add(&mut self, other: &ApplyStats) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.deleted += other.deleted;
        self.skipped += other.skipped;
        self.conflicts += other.conflicts;
    }

    /// Counts what an insert of the rows at `idx` wrote, given the 1-based positions it
    /// hands back (`ON CONFLICT DO NOTHING ... RETURNING`), and returns the positions of
    /// `idx` it skipped because their key or another unique value was taken.
    pub(super) fn count_inserted(
        &mut self,
        written: impl IntoIterator<Item = i64>,
        idx: &[usize],
    ) -> Vec<usize> {
        let mut inserted = vec![false; idx.len()];
        for ord in written {
            if let Some(slot) = usize::try_from(ord - 1)
                .ok()
                .and_then(|o| inserted.get_mut(o))
            {
                *slot = true;
            }
        }
        self.inserted += inserted.iter().filter(|ok| **ok).count() as u64;
        idx.iter()
            .zip(inserted)
            .filter(|(_, ok)| !ok)
            .map(|(&i, _)| i)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_insert_counts_what_it_wrote_and_names_what_it_skipped() {
        let mut stats = ApplyStats::default();
        // Rows 7, 3 and 9 given; the second and a stray position out of range came back.
        assert_eq!(stats.count_inserted([2, 5, 0], &[7, 3, 9]), vec![7, 9]);
        assert_eq!(stats.inserted, 1);
    }
}
