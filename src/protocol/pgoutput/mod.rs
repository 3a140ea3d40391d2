//! pgoutput decoder (placeholder)
