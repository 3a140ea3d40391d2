//! replication CopyData envelopes (placeholder)
